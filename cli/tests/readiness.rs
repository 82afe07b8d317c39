//! Readiness between drills and the RTO watch during a recovery, with the readiness
//! function in this process (its schedules never fire on the emulator) against the real
//! drill state machine, functions and receipts on the local stack.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

mod common;

use std::time::Duration;

use drpilot_cli::local::{deploy_state_machine, Machine};
use drpilot_cli::{approve, deny, follow, readiness as show_readiness, Ctx, Out};
use drpilot_shared::objects::put_json;
use drpilot_shared::S3Uri;
use drpilot_testkit::{
    make_backup, sh, test_profile, LocalAws, TempDir, BACKUP_BUCKET, BACKUP_PREFIX,
    EVIDENCE_BUCKET, PROFILE, TARGET_BUCKET,
};
use drpilot_tools::local::STATE_MACHINES;
use readiness::Readiness;
use serde_json::{json, Value};

use common::{start_run, until_waiting, MACHINE};

/// Functions, buckets, `profile`, the drill machine notifying a topic an SQS queue reads
/// (raw delivery), and one backup. Returns the context, the topic and the queue.
async fn stack(aws: &LocalAws, tmp: &TempDir, profile: Value) -> (Ctx, String, String) {
    aws.with_functions();
    aws.standard_setup().await;
    aws.put_profile(PROFILE, &profile).await;
    let ctx = Ctx::new(
        Some(&aws.endpoint),
        Some(MACHINE.into()),
        Out { json: true },
    )
    .await;
    // The template's topic name for the stack `drpilot`: the readiness role may publish
    // to that topic only.
    let topic = ctx
        .sns
        .create_topic()
        .name("drpilot-notifications")
        .send()
        .await
        .unwrap();
    let topic = topic.topic_arn().unwrap().to_owned();
    let queue = ctx
        .sqs
        .create_queue()
        .queue_name("inbox")
        .send()
        .await
        .unwrap();
    let queue = queue.queue_url().unwrap().to_owned();
    ctx.sns
        .subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint("arn:aws:sqs:us-east-1:123456789012:inbox")
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .unwrap();
    deploy_state_machine(&ctx, Machine::Drill, MACHINE, &topic, 600)
        .await
        .unwrap();
    let src = tmp.path().join("src");
    sh(&format!(
        "mkdir -p '{0}/x' && for i in $(seq 1 40); do echo \"{{\\\"n\\\": $i}}\" > '{0}/x/'$i.json; done",
        src.display()
    ));
    let out = tmp.path().join("b1");
    make_backup(&src, &out, &[]);
    aws.upload_dir(BACKUP_BUCKET, &format!("{BACKUP_PREFIX}b1"), &out)
        .await;
    (ctx, topic, queue)
}

/// The readiness function in this process, as its schedules run it on AWS.
fn function(aws: &LocalAws, topic: &str) -> Readiness {
    let mut function = Readiness::new(aws.clients.clone());
    function.state_machine = Some(STATE_MACHINES[0].to_owned());
    function.topic = Some(topic.to_owned());
    function
}

fn check<'a>(
    report: &'a drpilot_shared::readiness::ReadinessReport,
    name: &str,
) -> &'a drpilot_shared::readiness::ReadinessCheck {
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} check in {report:?}"))
}

#[tokio::test]
async fn readiness_names_what_is_missing_and_is_ready_after_a_drill() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("readiness");
    let (ctx, topic, _) = stack(&aws, &tmp, test_profile()).await;
    let function = function(&aws, &topic);

    // Before any drill: the backup is sound, but nothing was drilled or measured.
    let before = function.check(PROFILE).await.unwrap();
    assert!(!before.ready);
    assert_eq!(before.failures(), vec!["last_drill", "predicted_recovery"]);
    assert!(check(&before, "backup_contract").passed);
    assert!(check(&before, "encryption").passed);
    assert!(check(&before, "lock").passed);
    let seen = before.backup.as_ref().unwrap();
    assert_eq!(seen.backup_id, "b1");
    assert_eq!(seen.objects, 40);
    assert!(before.backup_age_seconds.unwrap() < 600.0);

    // A drill, approved and promoted: now ready, with a prediction from its rates.
    let run = start_run(&ctx, json!({"mode": "drill", "run_id": "drill-1"})).await;
    until_waiting(&ctx, &run).await;
    approve(&ctx, &run, "alice", "CHG-1", None).await.unwrap();
    let arn = ctx.execution_arn(&run).await.unwrap();
    assert_eq!(
        follow(&ctx, &arn, &run, None).await.unwrap().status,
        "SUCCEEDED"
    );
    let after = function.check(PROFILE).await.unwrap();
    assert!(after.ready, "{:?}", after.checks);
    assert_eq!(after.last_drill.as_deref(), Some("drill-1"));
    assert!(after.days_since_last_drill.unwrap() < 0.01);
    let prediction = after.prediction.as_ref().unwrap();
    assert_eq!(prediction.from_run, "drill-1");
    assert_eq!(prediction.measured_objects, 40);
    // The same backup: the prediction is the measured RTO again (to rounding).
    let predicted = after.predicted_recovery_seconds.unwrap();
    assert!(
        (predicted - prediction.measured_rto_seconds).abs() < 0.01,
        "{predicted} vs {}",
        prediction.measured_rto_seconds
    );
    // What `drpilot readiness` reads is what the function wrote, in the evidence bucket.
    let latest = show_readiness(&ctx, PROFILE, false, None).await.unwrap();
    assert_eq!(
        (latest.checked_at, &latest.checks, latest.ready),
        (after.checked_at, &after.checks, after.ready)
    );
    assert!(!aws
        .keys(EVIDENCE_BUCKET, "drpilot/receipts/readiness/history/")
        .await
        .is_empty());
    // The metrics the template's alarms compare, dimensioned by profile.
    let metrics = aws
        .clients
        .cloudwatch
        .list_metrics()
        .namespace("DRPilot")
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = metrics
        .metrics()
        .iter()
        .filter(|m| {
            m.dimensions()
                .iter()
                .any(|d| d.name() == Some("Profile") && d.value() == Some(PROFILE))
                && m.dimensions().len() == 1
        })
        .filter_map(|m| m.metric_name())
        .collect();
    for name in [
        "BackupAgeSeconds",
        "RpoTargetSeconds",
        "DaysSinceLastDrill",
        "PredictedRecoverySeconds",
        "RtoTargetSeconds",
        "ReadinessFailures",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }

    // A lock left behind by a dead run is stale, and named.
    let lock = S3Uri::new(TARGET_BUCKET, "locks/drill.lock").unwrap();
    put_json(
        aws.s3(),
        &lock,
        &json!({"run_id": "ghost-1", "execution_arn": null,
                "acquired_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-03T00:00:00Z"}),
    )
    .await
    .unwrap();
    // An RPO target the backup's age now exceeds.
    let mut strict = test_profile();
    strict["rpo_target_seconds"] = json!(1);
    aws.put_profile(PROFILE, &strict).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = function.check(PROFILE).await.unwrap();
    assert_eq!(stale.failures(), vec!["backup_age", "lock"]);
    assert!(check(&stale, "lock").detail.contains("ghost-1"));
}

#[tokio::test]
async fn an_account_without_room_for_the_fan_out_is_not_ready() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("readiness-concurrency");
    let (_ctx, topic, _) = stack(&aws, &tmp, test_profile()).await;
    let function = function(&aws, &topic);
    let roomy = function.check(PROFILE).await.unwrap();
    let concurrency = check(&roomy, "lambda_concurrency");
    assert!(concurrency.passed, "{concurrency:?}");
    assert!(concurrency.detail.contains("1000"), "{concurrency:?}");
    // A new account: 10 concurrent executions, all unreserved; a run needs 64 + 4.
    aws.lambda_account(10, 10);
    let cramped = function.check(PROFILE).await.unwrap();
    assert!(cramped.failures().contains(&"lambda_concurrency"));
    let concurrency = check(&cramped, "lambda_concurrency");
    assert!(
        concurrency.detail.contains("is 10 (of 10)") && concurrency.detail.contains("needs 68"),
        "{concurrency:?}"
    );
}

#[tokio::test]
async fn a_recovery_past_its_rto_target_is_notified_once_and_the_summary_says_so() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("rto-watch");
    let mut profile = test_profile();
    profile["rto_target_seconds"] = json!(1);
    let (ctx, topic, queue) = stack(&aws, &tmp, profile).await;
    let function = function(&aws, &topic);

    let run = start_run(&ctx, json!({"mode": "recovery", "run_id": "rec-1"})).await;
    until_waiting(&ctx, &run).await;
    let first = function.watch().await.unwrap();
    assert_eq!(first.watched, 1);
    assert_eq!(first.notified, vec!["rec-1".to_owned()]);
    let second = function.watch().await.unwrap();
    assert_eq!(second.watched, 1);
    assert!(second.notified.is_empty(), "notified twice: {second:?}");

    deny(&ctx, &run, "watch test").await.unwrap();
    let arn = ctx.execution_arn(&run).await.unwrap();
    follow(&ctx, &arn, &run, None).await.unwrap();
    let summary = aws.receipts().get_summary(&run).await.unwrap().unwrap();
    let watch = summary
        .rto_watch
        .expect("the summary records the RTO notice");
    assert_eq!(watch.rto_target_seconds, 1);
    assert!(watch.elapsed_seconds > 1.0);
    assert!(watch.message_id.is_some());

    // Exactly one RTO notice reached the topic's subscriber.
    let mut notices = 0;
    for _ in 0..5 {
        let got = ctx
            .sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        if got.messages().is_empty() {
            break;
        }
        for m in got.messages() {
            if m.body().unwrap_or_default().contains("past its RTO target") {
                notices += 1;
            }
            ctx.sqs
                .delete_message()
                .queue_url(&queue)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    assert_eq!(notices, 1);
}
