//! A range's child that cannot stage or promote its range in one invocation stops at its
//! deadline and goes on in the next, through its Distributed Map's loop, end to end on the
//! local stack with the real ASL: every invocation of this process is held to 40 s (30 s
//! of work, 10 s for what is in flight), and the emulator's S3 to 16 writes a second a
//! prefix, so the first range's 700 objects take at least 44 s to stage and as long to
//! promote, whether the emulator runs the two children one after the other or at once.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

mod common;

use drpilot_shared::Phase;
use drpilot_testkit::{
    hold_invocations_to, make_backup, sh, LocalAws, TempDir, BACKUP_BUCKET, BACKUP_PREFIX,
    EVIDENCE_BUCKET, TARGET_BUCKET,
};
use serde_json::json;

use common::{drill_stack, finish_succeeded, receipt, start_run, until_waiting};

/// Lambda's 900 s, scaled: a child's work stops at 30 s of it.
const INVOCATION_SECONDS: f64 = 40.0;

/// Files of the backup: 8 shards of 100 (1,100 bytes), a range of 700 and one of 100.
const FILES: usize = 800;

/// The range's partial result `index` of `phase`.
async fn range_result(aws: &LocalAws, run: &str, phase: &str, index: u32) -> serde_json::Value {
    let key = format!("drpilot/receipts/runs/{run}/ranges/{phase}/{index:05}.json");
    let text = aws
        .get_text(EVIDENCE_BUCKET, &key)
        .await
        .unwrap_or_else(|| panic!("{key}: missing"));
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn a_range_larger_than_one_invocation_writes_is_staged_and_promoted_in_passes() {
    hold_invocations_to(INVOCATION_SECONDS);
    let aws = LocalAws::start().await;
    let ctx = drill_stack(&aws).await;
    let tmp = TempDir::new("continuation");
    let src = tmp.path().join("src");
    sh(&format!(
        "mkdir -p '{0}' && cd '{0}' && for i in $(seq -w 1 {FILES}); do mkdir -p d$((10#$i % 10)); printf 'object %s\\n' $i > d$((10#$i % 10))/$i.txt; done",
        src.display()
    ));
    let out = tmp.path().join("ranged");
    make_backup(&src, &out, &["--shard-size", "1100"]);
    aws.upload_dir(BACKUP_BUCKET, &format!("{BACKUP_PREFIX}ranged"), &out)
        .await;
    let mut profile = drpilot_testkit::test_profile();
    profile["objects_per_range"] = json!(700);
    aws.put_profile(drpilot_testkit::PROFILE, &profile).await;
    // The two children write at once, ~10 a second each. The deletes are not limited.
    aws.limit_s3(json!({"write_per_second": 16, "delete_per_second": 1000}));
    let backup_uri = format!("s3://{BACKUP_BUCKET}/{BACKUP_PREFIX}ranged");
    let run = start_run(
        &ctx,
        json!({"mode": "drill", "run_id": "passes-1", "backup_uri": backup_uri}),
    )
    .await;
    until_waiting(&ctx, &run).await;
    drpilot_cli::approve(&ctx, &run, "alice", "CHG-26", None)
        .await
        .unwrap();
    finish_succeeded(&ctx, &run).await;
    for phase in ["restore", "promote"] {
        let mut passes = Vec::new();
        for index in 0..2 {
            let result = range_result(&aws, &run, phase, index).await;
            passes.push(result["passes"].as_u64().unwrap());
        }
        assert!(
            passes.iter().any(|p| *p >= 2),
            "{phase}: every range took one pass: {passes:?}"
        );
    }
    let restored = receipt(&aws, &run, Phase::Restore).await;
    assert_eq!(restored["objects"], FILES, "{restored}");
    assert_eq!(
        restored["shards"].as_array().unwrap().len(),
        8,
        "{restored}"
    );
    let promoted = receipt(&aws, &run, Phase::Promote).await;
    assert_eq!(promoted["objects_copied"], FILES, "{promoted}");
    // Every file is in root/ once, with what the backup holds.
    let root = aws.keys(TARGET_BUCKET, "root/").await;
    assert_eq!(root.len(), FILES, "{root:?}");
    let sample = aws.get_text(TARGET_BUCKET, "root/d7/797.txt").await;
    assert_eq!(sample.as_deref(), Some("object 797\n"));
}
