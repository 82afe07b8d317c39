//! Scale, end to end: a sharded (v2) backup's heavy phases fan out over the run's plan as
//! Distributed Maps of the real ASL, running the real handlers on the local stack; the
//! same data as v1 runs inline and ends the same; a child throttled by S3 is retried; a
//! child failing for good fails its phase with its range named, and teardown cleans up.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

mod common;

use std::path::Path;

use drpilot_cli::{approve, Ctx, Report};
use drpilot_shared::receipt::PhaseStatus;
use drpilot_shared::Phase;
use drpilot_testkit::{
    make_backup, sh, LocalAws, TempDir, BACKUP_BUCKET, BACKUP_PREFIX, EVIDENCE_BUCKET,
    TARGET_BUCKET,
};
use serde_json::{json, Value};

use common::{
    drill_stack, finish, finish_succeeded, receipt, start_run, states_entered, until_waiting,
};

/// 60 files of 100 bytes under `a/`, `m/` and `z/`: `--shard-size 2000` cuts them into
/// three shards of 20, one per directory.
fn source(dir: &Path) {
    sh(&format!(
        "for d in a m z; do mkdir -p '{0}/'$d; for i in $(seq 10 29); do printf '%0100d' $i > '{0}/'$d/$i.txt; done; done",
        dir.display()
    ));
}

/// Publishes the source as v1 (`v1`) and as three shards of v2 (`v2`).
async fn backups(aws: &LocalAws, tmp: &TempDir) {
    let src = tmp.path().join("src");
    source(&src);
    let v1 = tmp.path().join("v1");
    make_backup(&src, &v1, &[]);
    let v2 = tmp.path().join("v2");
    make_backup(&src, &v2, &["--shard-size", "2000"]);
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(v2.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(meta["shards"].as_array().unwrap().len(), 3, "{meta}");
    for (name, dir) in [("v1", &v1), ("v2", &v2)] {
        aws.upload_dir(BACKUP_BUCKET, &format!("{BACKUP_PREFIX}{name}"), dir)
            .await;
    }
}

/// Production as the drills find it: one object changed, one extra inside the second
/// range, one extra past the last shard's keys.
async fn drifted_root(aws: &LocalAws) {
    for key in aws.keys(TARGET_BUCKET, "root/").await {
        aws.s3()
            .delete_object()
            .bucket(TARGET_BUCKET)
            .key(&key)
            .send()
            .await
            .unwrap();
    }
    aws.put_text(TARGET_BUCKET, "root/a/10.txt", "changed")
        .await;
    aws.put_text(TARGET_BUCKET, "root/m/old.txt", "only in production")
        .await;
    aws.put_text(TARGET_BUCKET, "root/zz/last.txt", "past every shard")
        .await;
}

fn backup_uri(name: &str) -> String {
    format!("s3://{BACKUP_BUCKET}/{BACKUP_PREFIX}{name}")
}

/// The run's plan, as the Distributed Maps read it (`plan.json`).
async fn plan(aws: &LocalAws, run_id: &str) -> Value {
    let uri = drpilot_shared::plan::plan_uri(&aws.receipts(), run_id).unwrap();
    serde_json::from_str(&aws.get_text(&uri.bucket, &uri.key).await.unwrap()).unwrap()
}

/// Runs a full drill of backup `name`, approved, to success; returns its run id.
async fn drill(ctx: &Ctx, run_id: &str, name: &str) -> String {
    let run = start_run(
        ctx,
        json!({"mode": "drill", "run_id": run_id, "backup_uri": backup_uri(name)}),
    )
    .await;
    until_waiting(ctx, &run).await;
    approve(ctx, &run, "alice", "CHG-15", None).await.unwrap();
    finish_succeeded(ctx, &run).await;
    run
}

/// `root/` as (key, size, content).
async fn root(aws: &LocalAws) -> Vec<(String, i64, String)> {
    let mut objects = Vec::new();
    for (key, _, size) in aws.snapshot(TARGET_BUCKET).await {
        if key.starts_with("root/") {
            let body = aws.get_text(TARGET_BUCKET, &key).await.unwrap();
            objects.push((key, size, body));
        }
    }
    objects
}

#[tokio::test]
async fn a_sharded_backup_fans_out_through_distributed_map_and_ends_like_v1() {
    let aws = LocalAws::start().await;
    let ctx = drill_stack(&aws).await;
    let tmp = TempDir::new("scale-e2e");
    backups(&aws, &tmp).await;

    drifted_root(&aws).await;
    let sharded = drill(&ctx, "sharded-1", "v2").await;
    let entered = states_entered(&ctx, &sharded).await;
    for state in [
        "RestoreRanges",
        "ReduceRestore",
        "ValidateRanges",
        "ReduceValidate",
        "ParityRanges",
        "ReduceParity",
        "PromoteRanges",
        "ReducePromote",
    ] {
        assert!(
            entered.iter().any(|s| s == state),
            "{state} not entered: {entered:?}"
        );
    }
    // Three children per phase, each with its partial result, and the plan they read.
    for phase in ["restore", "validate", "parity-report", "promote"] {
        let results: Vec<String> = aws
            .keys(
                EVIDENCE_BUCKET,
                &format!("drpilot/receipts/runs/{sharded}/ranges/{phase}/"),
            )
            .await
            .into_iter()
            .filter(|k| k.ends_with(".json") && !k.ends_with("prepared.json"))
            .collect();
        assert_eq!(results.len(), 3, "{phase}: {results:?}");
    }
    let plan = plan(&aws, &sharded).await;
    assert_eq!(plan.as_array().unwrap().len(), 3);
    assert_eq!(plan[0]["range"]["after"], Value::Null);
    assert_eq!(plan[1]["range"]["after"], "a/29.txt");
    assert_eq!(plan[2]["range"]["through"], Value::Null);
    let restored = receipt(&aws, &sharded, Phase::Restore).await;
    assert_eq!(restored["shards"].as_array().unwrap().len(), 3);
    assert!(restored["shards"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["objects"] == 20));
    let after_sharded = root(&aws).await;
    // A run that succeeded raises no fence.
    assert!(fence(&aws, &sharded).await.is_none());
    // Nothing of the run's staging is left.
    assert!(aws
        .keys(TARGET_BUCKET, &format!("_staging/{sharded}/"))
        .await
        .is_empty());

    drifted_root(&aws).await;
    let plain = drill(&ctx, "plain-1", "v1").await;
    let entered = states_entered(&ctx, &plain).await;
    assert!(
        !entered.iter().any(|s| s.ends_with("Ranges")),
        "a one-range plan runs inline: {entered:?}"
    );
    assert_eq!(
        root(&aws).await,
        after_sharded,
        "the same root/ from v1 and v2"
    );

    // Equivalent receipts: the same counts in every phase.
    let (one, two) = (
        receipt(&aws, &plain, Phase::Restore).await,
        receipt(&aws, &sharded, Phase::Restore).await,
    );
    assert_eq!(
        (&one["objects"], &one["bytes"]),
        (&two["objects"], &two["bytes"])
    );
    assert_eq!(one["objects"], 60);
    let (one, two) = (
        receipt(&aws, &plain, Phase::Validate).await,
        receipt(&aws, &sharded, Phase::Validate).await,
    );
    assert_eq!(one["tally"], two["tally"]);
    assert_eq!(two["tally"]["verified"], 60);
    let (one, two) = (
        receipt(&aws, &plain, Phase::ParityReport).await,
        receipt(&aws, &sharded, Phase::ParityReport).await,
    );
    assert_eq!(one["counts"], two["counts"]);
    // 59 only staged, a/10.txt changed, m/old.txt and zz/last.txt only in production.
    assert_eq!(two["delta"], 62, "{two}");
    let (one, two) = (
        receipt(&aws, &plain, Phase::Promote).await,
        receipt(&aws, &sharded, Phase::Promote).await,
    );
    for field in [
        "objects_copied",
        "bytes_copied",
        "objects_identical",
        "drift_objects",
    ] {
        assert_eq!(one[field], two[field], "{field}");
    }
    assert_eq!(two["objects_copied"], 60);
    assert_eq!(two["drift_objects"], 2);
    assert_eq!(two["parity_after"]["only_left"], 0);
}

#[tokio::test]
async fn a_throttled_child_is_retried_and_the_run_succeeds() {
    let aws = LocalAws::start().await;
    let ctx = drill_stack(&aws).await;
    let tmp = TempDir::new("scale-retry");
    backups(&aws, &tmp).await;
    // Every attempt the SDK makes of the second shard's first read answers SlowDown, so
    // the child's first invocation fails Retryable and its retry succeeds.
    let attempts = 3;
    aws.throttle_s3("GET", "v2/state-0001.tar.zst", attempts);
    let run = start_run(
        &ctx,
        json!({"mode": "drill", "run_id": "retried-1", "backup_uri": backup_uri("v2"), "stop_after": "validate"}),
    )
    .await;
    finish_succeeded(&ctx, &run).await;
    assert_eq!(aws.s3_faults_answered(), attempts as usize);
    let result: Value = serde_json::from_str(
        &aws.get_text(
            EVIDENCE_BUCKET,
            &format!("drpilot/receipts/runs/{run}/ranges/restore/00001.json"),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(result["status"], "success");
    assert_eq!(result["attempt"], 2, "{result}");
    let restored = receipt(&aws, &run, Phase::Restore).await;
    assert_eq!(restored["objects"], 60);
    receipt(&aws, &run, Phase::Validate).await;
}

#[tokio::test]
async fn a_child_failing_for_good_fails_its_phase_by_range_and_teardown_cleans_up() {
    let aws = LocalAws::start().await;
    let ctx = drill_stack(&aws).await;
    let tmp = TempDir::new("scale-fail");
    backups(&aws, &tmp).await;
    drifted_root(&aws).await;
    let before = root(&aws).await;
    aws.throttle_s3("GET", "v2/state-0002.tar.zst", 1000);
    let run = start_run(
        &ctx,
        json!({"mode": "drill", "run_id": "failed-1", "backup_uri": backup_uri("v2")}),
    )
    .await;
    let done = finish(&ctx, &run).await;
    assert_eq!(done.status, "FAILED");
    let failed = aws
        .receipts()
        .get_phase(&run, Phase::Restore)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, PhaseStatus::Failed);
    let reason = failed.reason.unwrap_or_default();
    assert!(
        reason.contains("range 2 (\"m/29.txt\", end)") && reason.contains("SlowDown"),
        "{reason}"
    );
    // The other shards were staged, and teardown removed every one of them.
    assert!(aws
        .keys(TARGET_BUCKET, &format!("_staging/{run}/"))
        .await
        .is_empty());
    assert!(aws
        .get_text(TARGET_BUCKET, "locks/drill.lock")
        .await
        .is_none());
    assert_eq!(root(&aws).await, before, "nothing promoted");
    let records = drpilot_cli::records(&ctx, &run).await.unwrap();
    let summary = records.summary.unwrap();
    assert!(summary.torn_down && !summary.promoted);
    assert_eq!(summary.failure.and_then(|f| f.phase), Some(Phase::Restore));
    // On AWS the failed Map's other children could still be running: teardown raised
    // the run's fence against this execution before it deleted the staging.
    let fence = fence(&aws, &run).await.expect("teardown's fence");
    assert!(fence.reason.starts_with("restore failed with"), "{fence:?}");
    assert!(fence.execution_arn.is_some(), "{fence:?}");
}

/// The fence teardown raised for `run`, if any.
async fn fence(aws: &LocalAws, run: &str) -> Option<drpilot_shared::fence::Raised> {
    let uri = drpilot_shared::fence::fence_uri(&aws.receipts(), run).unwrap();
    drpilot_shared::objects::get_json(aws.s3(), &uri)
        .await
        .unwrap()
}

/// Shards in the many-shards drill: past what one state's output could list (~1,150 at
/// ~220 bytes each under Step Functions' 256 KiB), so every list that grows with them
/// must stay out of the state machine's payloads.
const MANY_SHARDS: usize = 2_000;

/// A v2 backup of 2,000 one-file shards runs a drill through the fan-out — restore,
/// validate and parity-report as Distributed Maps and their reducers, then teardown, the
/// summary and the report — inside AWS's quotas: the harness reads every execution's
/// history back and holds each payload to 256 KiB (`drpilot_testkit::quotas`). (Promote
/// fans out the same way; the copies of 2,000 objects add minutes on the emulator and
/// nothing to what this shows.)
#[tokio::test]
async fn a_backup_of_two_thousand_shards_runs_the_fan_out_within_the_quotas() {
    let started = std::time::Instant::now();
    let aws = LocalAws::start().await;
    let ctx = drill_stack(&aws).await;
    let tmp = TempDir::new("scale-many");
    let src = tmp.path().join("src");
    sh(&format!(
        "mkdir -p '{0}' && cd '{0}' && for i in $(seq -w 1 {MANY_SHARDS}); do mkdir -p d$((10#$i % 40)); printf 'object %s\\n' $i > d$((10#$i % 40))/$i.txt; done",
        src.display()
    ));
    let out = tmp.path().join("many");
    make_backup(&src, &out, &["--shard-size", "1"]);
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(meta["shards"].as_array().unwrap().len(), MANY_SHARDS);
    aws.upload_dir(BACKUP_BUCKET, &format!("{BACKUP_PREFIX}many"), &out)
        .await;
    // 64 shards a range at most (a child's input): the Maps run 32 children each.
    let mut profile = drpilot_testkit::test_profile();
    profile["objects_per_range"] = json!(20_000);
    aws.put_profile(drpilot_testkit::PROFILE, &profile).await;
    eprintln!(
        "many shards: backup made and published after {:?}",
        started.elapsed()
    );

    let run = start_run(
        &ctx,
        json!({"mode": "drill", "run_id": "many-1", "backup_uri": backup_uri("many"),
               "stop_after": "parity-report"}),
    )
    .await;
    finish_succeeded(&ctx, &run).await;
    eprintln!("many shards: run ended after {:?}", started.elapsed());
    let plan = plan(&aws, &run).await;
    assert_eq!(
        plan.as_array().unwrap().len(),
        MANY_SHARDS.div_ceil(drpilot_shared::plan::SHARDS_PER_RANGE)
    );
    let restored = receipt(&aws, &run, Phase::Restore).await;
    assert_eq!(restored["objects"], MANY_SHARDS);
    assert_eq!(restored["shards"].as_array().unwrap().len(), MANY_SHARDS);
    let validated = receipt(&aws, &run, Phase::Validate).await;
    assert_eq!(validated["tally"]["verified"], MANY_SHARDS);
    let parity = receipt(&aws, &run, Phase::ParityReport).await;
    assert_eq!(parity["counts"]["only_left"], MANY_SHARDS);
    let records = drpilot_cli::records(&ctx, &run).await.unwrap();
    let summary = records.summary.unwrap();
    assert!(summary.torn_down && !summary.promoted, "{summary:?}");
    assert!(aws
        .keys(TARGET_BUCKET, &format!("_staging/{run}/"))
        .await
        .is_empty());
    let Report::Run(report) = drpilot_cli::report(&ctx, &run, None).await.unwrap() else {
        panic!("a drill's report is a run report");
    };
    assert_eq!(report.restored.unwrap().objects, MANY_SHARDS as u64);
    for phase in &summary.phases {
        eprintln!("many shards: {} {:?} ms", phase.phase, phase.duration_ms);
    }
}
