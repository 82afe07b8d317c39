//! teardown against real SDK calls on the local emulator, after runs made by the real
//! bringup and restore.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use bringup::{Bringup, BringupRequest};
use chrono::{Duration, Utc};
use drpilot_shared::details::{ParityDetails, PromoteDetails};
use drpilot_shared::input::TriggerDefaults;
use drpilot_shared::lock::RunLock;
use drpilot_shared::parity::ParityCounts;
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::receipt::{PhaseClock, PhaseReceipt, PhaseStatus, RunStatus};
use drpilot_shared::run::{ExecutionInfo, PhaseRequest, RunContext};
use drpilot_shared::{Phase, S3Uri};
use drpilot_testkit::{
    corrupt_state_sha256, make_backup, sh, LocalAws, TempDir, BACKUP_BUCKET, BACKUP_PREFIX,
    PROFILE, TARGET_BUCKET,
};
use restore::Restore;
use serde_json::{json, Value};
use teardown::{ApprovalOutcome, CaughtFailure, Teardown, TeardownRequest};

fn teardown(aws: &LocalAws) -> Teardown {
    Teardown {
        rds: aws.clients.for_function("teardown").rds(),
        backup: aws.clients.for_function("teardown").backup(),
        clients: aws.clients.for_function("teardown"),
        profiles: ProfileSource::Ssm(aws.clients.ssm.clone()),
        defaults: TriggerDefaults::default(),
    }
}

/// A backup taken two hours ago; with `broken`, its state archive fails its hash check.
async fn publish_backup(aws: &LocalAws, id: &str, broken: bool) {
    let tmp = TempDir::new("teardown");
    let src = tmp.path().join("src");
    sh(&format!(
        "mkdir -p '{0}/a' && for i in 1 2 3; do echo $i > '{0}/a/'$i.json; done",
        src.display()
    ));
    let out = tmp.path().join(id);
    let created = (Utc::now() - Duration::hours(2)).to_rfc3339();
    make_backup(&src, &out, &["--created-at", &created]);
    if broken {
        corrupt_state_sha256(&out);
    }
    aws.upload_dir(BACKUP_BUCKET, &format!("{BACKUP_PREFIX}{id}"), &out)
        .await;
}

/// Runs the real bringup for a drill on the newest backup.
async fn start_run(aws: &LocalAws, run_id: &str, extra: Value) -> RunContext {
    let mut input = json!({"mode": "drill", "profile": PROFILE, "run_id": run_id});
    input
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    Bringup {
        clients: aws.clients.for_function("bringup"),
        sfn: aws.clients.for_function("bringup").sfn(),
        profiles: ProfileSource::Ssm(aws.clients.ssm.clone()),
        defaults: TriggerDefaults::default(),
        approval_timeout_seconds: None,
        sts: drpilot_shared::identity::StsEndpoint::of_config(&aws.clients.config),
    }
    .handle(
        BringupRequest {
            input,
            execution: ExecutionInfo {
                name: Some(run_id.into()),
                arn: Some(format!(
                    "arn:aws:states:us-east-1:123456789012:execution:drill:{run_id}"
                )),
                start_time: Some(Utc::now()),
            },
            retry_count: 0,
        },
        "function-arn",
    )
    .await
    .unwrap()
}

async fn run_restore(aws: &LocalAws, run: &RunContext) -> drpilot_shared::Result<()> {
    Restore {
        clients: aws.clients.for_function("restore"),
        profiles: ProfileSource::Ssm(aws.clients.ssm.clone()),
        tuning: Default::default(),
    }
    .handle(PhaseRequest::new(run.clone(), 0))
    .await
    .map(drop)
}

/// Receipts for the phases whose Lambdas are not part of this crate's dependencies.
async fn succeed(aws: &LocalAws, run_id: &str, phase: Phase, details: Value) {
    let receipt = PhaseClock::start(run_id, phase, 1).finish(PhaseStatus::Success, None, details);
    aws.receipts().put_phase(&receipt).await.unwrap();
}

fn uri(text: &str) -> S3Uri {
    text.parse().unwrap()
}

/// parity-report's details with `delta` differences.
fn parity_details(delta: u64) -> Value {
    let counts = ParityCounts {
        delta,
        ..Default::default()
    };
    serde_json::to_value(ParityDetails {
        delta,
        counts,
        report: uri("s3://target-data/drpilot/receipts/parity/report.json"),
        differences: uri("s3://target-data/drpilot/receipts/parity/differences.jsonl"),
    })
    .unwrap()
}

/// promote's details for a promotion `approver` approved under `ticket`.
fn promote_details(approver: &str, ticket: &str) -> Value {
    serde_json::to_value(PromoteDetails {
        promoted: true,
        approver: Some(approver.into()),
        ticket: Some(ticket.into()),
        principal: None,
        principal_verified: false,
        sealed: true,
        bypass: false,
        objects_copied: 0,
        bytes_copied: 0,
        objects_identical: 0,
        drift_objects: 0,
        drift_deleted: 0,
        parity_before: ParityCounts::default(),
        parity_after: ParityCounts::default(),
        audit_record: uri("s3://target-data/audit/promotions/promotion.json"),
        pointer: uri("s3://target-data/audit/published.json"),
        generation: 1,
        copy_seconds: 0.0,
        time_to_promotion_seconds: 0.0,
    })
    .unwrap()
}

/// The receipt `phase` of `run_id` left (it must exist).
async fn phase_receipt(aws: &LocalAws, run_id: &str, phase: Phase) -> PhaseReceipt {
    aws.receipts()
        .get_phase(run_id, phase)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no {phase} receipt for {run_id}"))
}

async fn staging_keys(aws: &LocalAws, run_id: &str) -> Vec<String> {
    aws.keys(TARGET_BUCKET, &format!("_staging/{run_id}/"))
        .await
}

async fn metric_samples(aws: &LocalAws, metric: &str) -> f64 {
    let out = aws
        .clients
        .cloudwatch
        .get_metric_statistics()
        .namespace("DRPilot")
        .metric_name(metric)
        .dimensions(Dimension::builder().name("Profile").value(PROFILE).build())
        .dimensions(Dimension::builder().name("Mode").value("drill").build())
        .start_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
            (Utc::now() - Duration::hours(1)).timestamp(),
        ))
        .end_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
            (Utc::now() + Duration::hours(1)).timestamp(),
        ))
        .period(7200)
        .statistics(Statistic::SampleCount)
        .send()
        .await
        .unwrap();
    out.datapoints()
        .iter()
        .filter_map(|d| d.sample_count())
        .sum()
}

#[tokio::test]
async fn after_a_promoted_run_it_cleans_up_and_measures() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    publish_backup(&aws, "b-1", false).await;
    let run = start_run(&aws, "run-ok", json!({})).await;
    run_restore(&aws, &run).await.unwrap();
    assert_eq!(staging_keys(&aws, "run-ok").await.len(), 3);
    succeed(
        &aws,
        "run-ok",
        Phase::Components,
        json!({"components": [], "verified": 0, "failed": 0}),
    )
    .await;
    succeed(&aws, "run-ok", Phase::Validate, json!({})).await;
    succeed(&aws, "run-ok", Phase::ParityReport, parity_details(0)).await;
    succeed(
        &aws,
        "run-ok",
        Phase::Promote,
        promote_details("alice", "CHG-42"),
    )
    .await;

    let request = TeardownRequest {
        run: Some(run.clone()),
        approval: Some(ApprovalOutcome {
            approved: true,
            approver: Some("alice".into()),
            ticket: Some("CHG-42".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let out = teardown(&aws).handle(request).await.unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);
    assert!(out.promoted && out.torn_down);
    assert_eq!(out.lock, "released");
    assert!(staging_keys(&aws, "run-ok").await.is_empty());
    assert!(aws
        .get_text(TARGET_BUCKET, "locks/drill.lock")
        .await
        .is_none());

    let summary = aws.receipts().get_summary("run-ok").await.unwrap().unwrap();
    assert_eq!(summary.phases.len(), 7);
    assert!(summary
        .phases
        .iter()
        .all(|p| p.status == PhaseStatus::Success));
    let rpo = summary.rpo_seconds.unwrap();
    assert!((7190.0..7300.0).contains(&rpo), "rpo {rpo}");
    assert_eq!(summary.rpo.met, Some(true));
    let rto = summary.rto_seconds.unwrap();
    assert!((0.0..600.0).contains(&rto), "rto {rto}");
    assert_eq!(summary.rto.met, Some(true));
    assert_eq!(summary.parity_delta, Some(0));
    assert_eq!(summary.approver.as_deref(), Some("alice"));
    assert_eq!(summary.ticket.as_deref(), Some("CHG-42"));
    assert_eq!(summary.manual_interventions, 1);
    assert_eq!(metric_samples(&aws, "DrillDurationSeconds").await, 1.0);
    assert_eq!(metric_samples(&aws, "RecoveryPointAgeSeconds").await, 1.0);
}

#[tokio::test]
async fn after_a_failed_restore_it_records_the_failure_and_releases_the_lock() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    publish_backup(&aws, "b-bad", true).await;
    let run = start_run(&aws, "run-fail", json!({})).await;
    let err = run_restore(&aws, &run).await.unwrap_err();
    let request = TeardownRequest {
        run: Some(run),
        failure: Some(CaughtFailure {
            phase: Phase::Restore,
            error: err.kind.name().into(),
            cause: err.message.clone(),
        }),
        ..Default::default()
    };
    let out = teardown(&aws).handle(request.clone()).await.unwrap();
    assert_eq!(out.status, RunStatus::Failed);
    assert!(!out.promoted);
    assert_eq!(out.lock, "released");
    assert!(
        staging_keys(&aws, "run-fail").await.is_empty(),
        "partial staging removed"
    );
    let summary = aws
        .receipts()
        .get_summary("run-fail")
        .await
        .unwrap()
        .unwrap();
    let status = |phase| summary.phases.iter().find(|p| p.phase == phase).unwrap();
    assert_eq!(status(Phase::Restore).status, PhaseStatus::Failed);
    assert_eq!(status(Phase::Validate).status, PhaseStatus::Skipped);
    assert_eq!(
        status(Phase::Validate).reason.as_deref(),
        Some("not reached: restore failed")
    );
    assert_eq!(summary.failure.as_ref().unwrap().error, "IntegrityError");
    assert_eq!(
        summary.rto_seconds, None,
        "no RTO without a validated restore"
    );
    assert_eq!(metric_samples(&aws, "PhaseFailures").await, 1.0);

    // Twice in a row: same end state, metrics not published again.
    let again = teardown(&aws).handle(request).await.unwrap();
    assert_eq!(again.status, out.status);
    // The journal remembers the first attempt released the run's lock.
    assert_eq!(again.lock, "released");
    let summary2 = aws
        .receipts()
        .get_summary("run-fail")
        .await
        .unwrap()
        .unwrap();
    let statuses = |s: &drpilot_shared::summary::RunSummary| {
        s.phases
            .iter()
            .map(|p| (p.phase, p.status, p.reason.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(statuses(&summary2), statuses(&summary));
    assert_eq!(summary2.failure, summary.failure);
    assert_eq!(metric_samples(&aws, "PhaseFailures").await, 1.0);
}

#[tokio::test]
async fn a_phase_that_died_without_a_receipt_is_recorded_as_failed() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    publish_backup(&aws, "b-1", false).await;
    let run = start_run(&aws, "run-timeout", json!({})).await;
    let request = TeardownRequest {
        run: Some(run),
        failure: Some(CaughtFailure {
            phase: Phase::Restore,
            error: "States.Timeout".into(),
            cause: "task timed out".into(),
        }),
        ..Default::default()
    };
    teardown(&aws).handle(request).await.unwrap();
    let receipt = phase_receipt(&aws, "run-timeout", Phase::Restore).await;
    assert_eq!(receipt.status, PhaseStatus::Failed);
    assert!(receipt.reason.unwrap().contains("States.Timeout"));
    assert_eq!(receipt.details["recorded_by"], "teardown");
}

#[tokio::test]
async fn a_denied_approval_and_a_held_staging_are_recorded() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    publish_backup(&aws, "b-1", false).await;
    let run = start_run(&aws, "run-held", json!({"teardown": false})).await;
    run_restore(&aws, &run).await.unwrap();
    succeed(&aws, "run-held", Phase::Validate, json!({})).await;
    succeed(&aws, "run-held", Phase::ParityReport, parity_details(3)).await;
    let request = TeardownRequest {
        run: Some(run),
        approval: Some(ApprovalOutcome {
            approved: false,
            approver: Some("bob".into()),
            reason: Some("parity delta too high".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let out = teardown(&aws).handle(request).await.unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);
    assert!(!out.promoted && !out.torn_down);
    assert_eq!(
        staging_keys(&aws, "run-held").await.len(),
        3,
        "staging held"
    );
    // Held for the run's next execution: the lock stays the run's, and the run has not
    // ended, so no metrics yet.
    assert_eq!(out.lock, "kept for the run (held)");
    let lock = RunLock::new(
        aws.s3().clone(),
        S3Uri::new(TARGET_BUCKET, "locks/drill.lock").unwrap(),
    );
    assert_eq!(lock.read().await.unwrap().unwrap().0.run_id, "run-held");
    assert!(
        out.notice.contains("drpilot resume run-held"),
        "{}",
        out.notice
    );
    let receipt = phase_receipt(&aws, "run-held", Phase::Teardown).await;
    assert_eq!(receipt.details["held"], true);
    assert_eq!(receipt.details["metrics_published"], false);
    let summary = aws
        .receipts()
        .get_summary("run-held")
        .await
        .unwrap()
        .unwrap();
    let promote = summary
        .phases
        .iter()
        .find(|p| p.phase == Phase::Promote)
        .unwrap();
    assert_eq!(promote.status, PhaseStatus::Skipped);
    assert_eq!(
        promote.reason.as_deref(),
        Some("approval denied: parity delta too high")
    );
    assert_eq!(summary.parity_delta, Some(3));
    assert!(
        summary.rto_seconds.is_some(),
        "RTO runs to validation when not promoted"
    );
    assert_eq!(summary.manual_interventions, 1);
}

#[tokio::test]
async fn a_lock_held_by_another_run_is_left_alone() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    publish_backup(&aws, "b-1", false).await;
    start_run(&aws, "holder", json!({})).await;
    // A second run whose bringup failed with LockHeld: teardown gets only the raw input.
    let request = TeardownRequest {
        input: Some(json!({"mode": "drill", "profile": PROFILE})),
        execution: ExecutionInfo {
            name: Some("second".into()),
            arn: Some("arn:aws:states:us-east-1:123456789012:execution:drill:second".into()),
            ..Default::default()
        },
        failure: Some(CaughtFailure {
            phase: Phase::Bringup,
            error: "LockHeld".into(),
            cause: "held by holder".into(),
        }),
        ..Default::default()
    };
    let out = teardown(&aws).handle(request).await.unwrap();
    assert_eq!(out.status, RunStatus::Failed);
    assert_eq!(out.lock, "owned by run holder, left alone");
    let lock = RunLock::new(
        aws.s3().clone(),
        S3Uri::new(TARGET_BUCKET, "locks/drill.lock").unwrap(),
    );
    assert_eq!(lock.read().await.unwrap().unwrap().0.run_id, "holder");
    let summary = aws.receipts().get_summary("second").await.unwrap().unwrap();
    assert_eq!(summary.failure.unwrap().error, "LockHeld");
}

#[tokio::test]
async fn an_account_mismatch_writes_nothing() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let before = aws.keys(TARGET_BUCKET, "").await;
    let request = TeardownRequest {
        input: Some(json!({"mode": "drill", "profile": PROFILE})),
        execution: ExecutionInfo {
            name: Some("wrong-account".into()),
            ..Default::default()
        },
        failure: Some(CaughtFailure {
            phase: Phase::Bringup,
            error: "AccountMismatch".into(),
            cause: "running in another account".into(),
        }),
        ..Default::default()
    };
    let out = teardown(&aws).handle(request).await.unwrap();
    assert_eq!(out.status, RunStatus::Failed);
    assert!(out.summary.is_none());
    assert_eq!(aws.keys(TARGET_BUCKET, "").await, before);
}

/// CloudWatch unreachable (a closed port, no retries): PutMetricData fails.
fn teardown_without_cloudwatch(aws: &LocalAws) -> Teardown {
    let mut clients = aws.clients.for_function("teardown");
    let unreachable = aws_sdk_cloudwatch::config::Builder::from(&clients.config)
        .endpoint_url("http://127.0.0.1:9")
        .retry_config(aws_sdk_cloudwatch::config::retry::RetryConfig::disabled())
        .build();
    clients.cloudwatch = aws_sdk_cloudwatch::Client::from_conf(unreachable);
    Teardown {
        clients,
        ..teardown(aws)
    }
}

#[tokio::test]
async fn metrics_that_fail_to_publish_are_recorded_as_such_and_published_on_the_rerun() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    publish_backup(&aws, "b-1", false).await;
    let run = start_run(&aws, "run-m", json!({"stop_after": "validate"})).await;
    run_restore(&aws, &run).await.unwrap();
    succeed(&aws, "run-m", Phase::Validate, json!({})).await;
    let request = TeardownRequest {
        run: Some(run.clone()),
        ..Default::default()
    };

    let err = teardown_without_cloudwatch(&aws)
        .handle(request.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind, drpilot_shared::ErrorKind::Retryable, "{err}");
    // Cleaned up all the same, and the summary says teardown did not finish.
    assert!(staging_keys(&aws, "run-m").await.is_empty());
    let summary = aws.receipts().get_summary("run-m").await.unwrap().unwrap();
    let last = summary.phases.last().unwrap();
    assert_eq!(last.phase, Phase::Teardown);
    assert_eq!(last.status, PhaseStatus::Failed);
    assert!(last
        .reason
        .as_deref()
        .unwrap()
        .contains("metrics not published"));
    let receipt = phase_receipt(&aws, "run-m", Phase::Teardown).await;
    assert_eq!(receipt.status, PhaseStatus::Failed);
    assert_eq!(receipt.details["metrics_published"], false);
    assert_eq!(metric_samples(&aws, "DrillDurationSeconds").await, 0.0);

    // The retry publishes them once and ends clean.
    let out = teardown(&aws).handle(request.clone()).await.unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);
    let summary = aws.receipts().get_summary("run-m").await.unwrap().unwrap();
    assert_eq!(summary.phases.last().unwrap().status, PhaseStatus::Success);
    let receipt = phase_receipt(&aws, "run-m", Phase::Teardown).await;
    assert_eq!(receipt.details["metrics_published"], true);
    teardown(&aws).handle(request).await.unwrap();
    assert_eq!(metric_samples(&aws, "DrillDurationSeconds").await, 1.0);
}

#[tokio::test]
async fn a_staging_past_the_last_pass_the_history_holds_fails_naming_it() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    publish_backup(&aws, "b-cap", false).await;
    let run = start_run(&aws, "run-cap", json!({})).await;
    for i in 0..5 {
        aws.put_text(
            TARGET_BUCKET,
            &format!("_staging/run-cap/{i}.txt"),
            "staged",
        )
        .await;
    }
    // S3 deletes none of the keys: the pass ends at its deadline with the staging left.
    aws.limit_s3(json!({"delete_key_errors": 1000}));
    let request = TeardownRequest {
        run: Some(run),
        cleanup: Some(drpilot_shared::run::CleanupProgress {
            passes: teardown::MAX_STAGING_PASSES - 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    // Boxed: teardown's future is large.
    let pass = drpilot_shared::deadline::scope(
        std::time::Duration::from_millis(200),
        Box::pin(teardown(&aws).handle(request)),
    )
    .await;
    let err = pass.unwrap_err();
    assert_eq!(err.kind, drpilot_shared::ErrorKind::ServiceError, "{err}");
    assert!(
        err.message.contains("_staging/run-cap/") && err.message.contains("at most 400"),
        "{err}"
    );
    assert_eq!(staging_keys(&aws, "run-cap").await.len(), 5);
}

/// A teardown cut off after its N-th write of each kind (a receipt or summary, the
/// staging's deletes, the lock's release) and run again — as the state machine's Retry
/// does — leaves the run exactly as an uncut teardown does.
#[tokio::test]
async fn a_teardown_cut_after_its_nth_write_and_run_again_ends_as_an_uncut_one() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    publish_backup(&aws, "b-1", false).await;
    // A validated drill that stopped before promotion: teardown cleans up after it.
    let validated = |run_id: &'static str| {
        let aws = &aws;
        async move {
            let run = start_run(aws, run_id, json!({"stop_after": "validate"})).await;
            run_restore(aws, &run).await.unwrap();
            succeed(aws, run_id, Phase::Validate, json!({})).await;
            TeardownRequest {
                run: Some(run),
                ..Default::default()
            }
        }
    };
    let request = validated("run-whole").await;
    let out = teardown(&aws).handle(request).await.unwrap();
    assert_eq!(out.status, RunStatus::Succeeded, "{out:?}");
    let whole = aws.left_by("run-whole").await;
    assert!(
        whole.keys().any(|k| k.ends_with(".summary.json")),
        "{whole:?}"
    );

    let cuts = [
        ("run-cut-a", "PutObject", 0),
        ("run-cut-b", "PutObject", 1),
        ("run-cut-c", "PutObject", 2),
        ("run-cut-d", "DeleteObjects", 0),
        ("run-cut-e", "DeleteObject", 0),
    ];
    for (run_id, operation, n) in cuts {
        let request = validated(run_id).await;
        let mut cut = teardown(&aws);
        cut.clients.s3 = drpilot_testkit::FailAfter::s3(&cut.clients.s3, operation, n);
        let err = cut.handle(request.clone()).await.unwrap_err();
        assert!(
            err.to_string().contains("injected fault"),
            "{operation} after {n}: {err}"
        );
        let out = teardown(&aws).handle(request).await.unwrap();
        assert_eq!(
            out.status,
            RunStatus::Succeeded,
            "{operation} after {n}: {out:?}"
        );
        assert!(staging_keys(&aws, run_id).await.is_empty());
        drpilot_testkit::assert_left_alike(
            &aws.left_by(run_id).await,
            &whole,
            &format!("cut after {operation} number {n}"),
        );
    }
}
