//! AWS's limits met at a small scale, end to end on the local stack with the real ASL:
//! every invocation of this process is held to a 20 s budget (Lambda's 900 s, scaled),
//! and the emulator's S3 is held to request rates and answers per-key errors as S3 does
//! under load. Teardown then deletes a staging larger than one invocation deletes in
//! passes through the state machine's wait loop, and sends again the keys a DeleteObjects
//! did not delete, without failing.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

mod common;

use drpilot_cli::Ctx;
use drpilot_shared::Phase;
use drpilot_testkit::{
    hold_invocations_to, make_backup, sh, LocalAws, TempDir, BACKUP_BUCKET, BACKUP_PREFIX,
    TARGET_BUCKET,
};
use serde_json::json;

use common::{drill_stack, finish_succeeded, history, receipt, start_run, states_entered};

/// Lambda's 900 s, scaled: teardown's work stops at 15 s of it.
const INVOCATION_SECONDS: f64 = 20.0;

/// Files in the staging: more than one DeleteObjects page (1,000 keys).
const FILES: usize = 1_200;

/// This process's turn on the local AWS, its invocations held to [`INVOCATION_SECONDS`].
async fn start() -> (LocalAws, Ctx) {
    hold_invocations_to(INVOCATION_SECONDS);
    let aws = LocalAws::start().await;
    let ctx = drill_stack(&aws).await;
    (aws, ctx)
}

/// Publishes a v1 backup of `files` small files as `name`.
async fn backup(aws: &LocalAws, tmp: &TempDir, name: &str, files: usize) -> String {
    let src = tmp.path().join("src");
    sh(&format!(
        "mkdir -p '{0}' && cd '{0}' && for i in $(seq -w 1 {files}); do mkdir -p d$((10#$i % 10)); printf 'object %s\\n' $i > d$((10#$i % 10))/$i.txt; done",
        src.display()
    ));
    let out = tmp.path().join(name);
    make_backup(&src, &out, &[]);
    aws.upload_dir(BACKUP_BUCKET, &format!("{BACKUP_PREFIX}{name}"), &out)
        .await;
    format!("s3://{BACKUP_BUCKET}/{BACKUP_PREFIX}{name}")
}

/// Asserts that teardown deleted every object restore staged, and that no invocation of
/// the run failed (none was retried by the Retry policy); returns how many.
async fn staging_deleted_in_one_go(aws: &LocalAws, ctx: &Ctx, run_id: &str) -> u64 {
    let failed = history(ctx, run_id)
        .await
        .iter()
        .filter(|e| e.lambda_function_failed_event_details().is_some())
        .count();
    assert_eq!(failed, 0);
    let staged = receipt(aws, run_id, Phase::Restore).await["objects"]
        .as_u64()
        .unwrap();
    let teardown = receipt(aws, run_id, Phase::Teardown).await;
    assert_eq!(
        teardown["staged_objects_deleted"].as_u64(),
        Some(staged),
        "{teardown}"
    );
    assert!(aws
        .keys(TARGET_BUCKET, &format!("_staging/{run_id}/"))
        .await
        .is_empty());
    staged
}

#[tokio::test]
async fn a_staging_larger_than_one_invocation_deletes_is_deleted_in_passes() {
    let (aws, ctx) = start().await;
    let tmp = TempDir::new("limits-passes");
    let backup_uri = backup(&aws, &tmp, "many-files", FILES).await;
    // 50 deletes a second: the first page of 1,000 keys leaves S3 throttling deletes for
    // 19 s, longer than an invocation's 15 s of work.
    aws.limit_s3(json!({"delete_per_second": 50}));
    let run = start_run(
        &ctx,
        json!({"mode": "drill", "run_id": "passes-1", "backup_uri": backup_uri, "stop_after": "restore"}),
    )
    .await;
    finish_succeeded(&ctx, &run).await;
    let entered = states_entered(&ctx, &run).await;
    let passes = entered.iter().filter(|s| *s == "Teardown").count();
    assert!(passes >= 2, "teardown ran {passes} time(s): {entered:?}");
    assert!(entered.iter().any(|s| s == "WaitForCleanup"), "{entered:?}");
    // Every pass's deletes are counted, not only the last one's.
    let staged = staging_deleted_in_one_go(&aws, &ctx, &run).await;
    assert!(staged >= FILES as u64, "{staged}");
    let throttled = aws.s3_throttled("delete");
    assert!(throttled > 0, "{}", aws.s3_limit_stats());
}

#[tokio::test]
async fn keys_a_delete_objects_did_not_delete_are_sent_again() {
    let (aws, ctx) = start().await;
    let tmp = TempDir::new("limits-keys");
    let backup_uri = backup(&aws, &tmp, "few-files", 40).await;
    aws.limit_s3(json!({"delete_key_errors": 7}));
    let run = start_run(
        &ctx,
        json!({"mode": "drill", "run_id": "keys-1", "backup_uri": backup_uri, "stop_after": "restore"}),
    )
    .await;
    finish_succeeded(&ctx, &run).await;
    assert_eq!(aws.s3_limit_stats()["delete_key_errors_answered"], 7);
    // Within the one invocation: teardown did not fail and was not retried.
    staging_deleted_in_one_go(&aws, &ctx, &run).await;
}
