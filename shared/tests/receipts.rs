//! Receipts and the run summary round-trip through S3 with the docs/contracts.md schema.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use chrono::Utc;
use drpilot_shared::input::Trigger;
use drpilot_shared::receipt::{PhaseClock, PhaseStatus, RunStatus};
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::summary::{PhaseOutcome, RunSummary};
use drpilot_shared::time::Objective;
use drpilot_shared::{Mode, Phase, S3Uri};
use drpilot_testkit::LocalAws;
use serde_json::json;

const BUCKET: &str = "receipts-bucket";

fn store(aws: &LocalAws) -> ReceiptStore {
    ReceiptStore::new(
        aws.s3().clone(),
        S3Uri::new(BUCKET, "drpilot/receipts").expect("valid location"),
    )
}

#[tokio::test]
async fn phase_receipts_round_trip_at_the_design_path() {
    let aws = LocalAws::start().await;
    aws.create_bucket(BUCKET).await;
    let store = store(&aws);
    let clock = PhaseClock::start("run-1", Phase::Restore, 2);
    let receipt = clock.finish(
        PhaseStatus::Success,
        None,
        json!({"objects": 3, "bytes": 42}),
    );
    let uri = store.put_phase(&receipt).await.unwrap();
    assert_eq!(
        uri.to_string(),
        "s3://receipts-bucket/drpilot/receipts/runs/run-1/phases/restore.json"
    );
    assert_eq!(
        store.get_phase("run-1", Phase::Restore).await.unwrap(),
        Some(receipt.clone())
    );
    assert_eq!(
        store.get_phase("run-1", Phase::Validate).await.unwrap(),
        None
    );

    let raw: serde_json::Value =
        serde_json::from_str(&aws.get_text(BUCKET, &uri.key).await.unwrap()).unwrap();
    let mut fields: Vec<_> = raw.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "attempt",
            "details",
            "duration_ms",
            "finished_at",
            "phase",
            "reason",
            "run_id",
            "started_at",
            "status"
        ]
    );
    assert_eq!(raw["status"], "success");
    assert_eq!(raw["phase"], "restore");
    assert_eq!(raw["attempt"], 2);

    let skipped = PhaseClock::start("run-1", Phase::ParityReport, 1).finish(
        PhaseStatus::Skipped,
        Some("stop_after=validate".into()),
        json!({}),
    );
    store.put_phase(&skipped).await.unwrap();
    let all = store.phases("run-1").await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.phase).collect::<Vec<_>>(),
        [Phase::Restore, Phase::ParityReport]
    );
}

#[tokio::test]
async fn the_summary_has_every_design_field() {
    let aws = LocalAws::start().await;
    aws.create_bucket(BUCKET).await;
    let store = store(&aws);
    let now = Utc::now();
    let summary = RunSummary {
        run_id: "run-2".into(),
        mode: Mode::Drill,
        dry_run: false,
        profile: "payments".into(),
        status: RunStatus::Succeeded,
        execution_arn: Some("arn:aws:states:us-east-1:123456789012:execution:drill:run-2".into()),
        trigger: Some(Trigger::manual()),
        backup_uri: Some("s3://b-bucket/backups/b1".parse().unwrap()),
        backup_created_at: Some(now - chrono::Duration::hours(3)),
        kickoff_at: now,
        finished_at: now,
        phases: vec![PhaseOutcome {
            phase: Phase::Bringup,
            status: PhaseStatus::Success,
            reason: None,
            started_at: Some(now),
            finished_at: Some(now),
            duration_ms: Some(12),
        }],
        rto_seconds: Some(120.0),
        rpo_seconds: Some(10800.0),
        rto: Objective::measure(Some(120.0), 3600),
        rpo: Objective::measure(Some(10800.0), 3600),
        parity_delta: Some(0),
        manual_interventions: 1,
        approver: Some("alice".into()),
        ticket: Some("CHG-1".into()),
        approver_principal: None,
        approval_sealed: false,
        promoted: true,
        torn_down: true,
        failure: None,
        executions: Vec::new(),
        components: Vec::new(),
        rto_watch: None,
    };
    let uri = store.put_summary(&summary).await.unwrap();
    assert_eq!(uri.key, "drpilot/receipts/runs/run-2/drill.summary.json");
    assert_eq!(store.get_summary("run-2").await.unwrap(), Some(summary));
    let raw: serde_json::Value =
        serde_json::from_str(&aws.get_text(BUCKET, &uri.key).await.unwrap()).unwrap();
    for field in [
        "phases",
        "rto_seconds",
        "rpo_seconds",
        "parity_delta",
        "manual_interventions",
        "approver",
        "ticket",
        "promoted",
        "torn_down",
    ] {
        assert!(raw.get(field).is_some(), "summary lacks {field}");
    }
    assert_eq!(raw["rto"]["met"], true);
    assert_eq!(raw["rpo"]["met"], false);
    assert_eq!(raw["rpo"]["target_seconds"], 3600);
}

#[tokio::test]
async fn a_run_id_cannot_escape_the_receipts_prefix() {
    let aws = LocalAws::start().await;
    let store = store(&aws);
    assert!(store.phase_uri("../other", Phase::Bringup).is_err());
}

#[tokio::test]
async fn the_run_record_is_created_once_and_replaced_only_as_it_was_read() {
    use drpilot_shared::backup::BackupRef;
    use drpilot_shared::record::{ExecutionEntry, RunRecord};
    use drpilot_shared::{ErrorKind, RunInput};
    let aws = LocalAws::start().await;
    aws.create_bucket(BUCKET).await;
    let store = store(&aws);
    let now = Utc::now();
    let entry = |name: &str| {
        ExecutionEntry::new(
            Some(name.into()),
            None,
            now,
            &RunInput::drill("payments"),
            Trigger::manual(),
        )
    };
    let mut record = RunRecord {
        run_id: "run-3".into(),
        profile: "payments".into(),
        mode: Mode::Drill,
        trigger: Trigger::manual(),
        kickoff_at: now,
        published_generation: 0,
        backup: BackupRef {
            uri: "s3://b-bucket/backups/b1/".parse().unwrap(),
            backup_id: "b1".into(),
            created_at: now,
            git_sha: None,
        },
        executions: vec![entry("run-3.1")],
    };
    assert!(store.get_record("run-3").await.unwrap().is_none());
    store.put_record(&record, None).await.unwrap();
    assert_eq!(
        store.record_uri("run-3").unwrap().key,
        "drpilot/receipts/runs/run-3/run.json"
    );
    // A second first execution loses: the record exists.
    let twice = store.put_record(&record, None).await.unwrap_err();
    assert_eq!(twice.kind, ErrorKind::Retryable);
    let (read, etag) = store.get_record("run-3").await.unwrap().unwrap();
    assert_eq!(read, record);
    record.executions.push(entry("run-3.2"));
    store.put_record(&record, Some(&etag)).await.unwrap();
    // A writer holding the old ETag is refused: the other execution's entry stands.
    let stale = store.put_record(&read, Some(&etag)).await.unwrap_err();
    assert_eq!(stale.kind, ErrorKind::Retryable, "{stale}");
    let (now_stored, _) = store.get_record("run-3").await.unwrap().unwrap();
    assert_eq!(now_stored.executions.len(), 2);
}
