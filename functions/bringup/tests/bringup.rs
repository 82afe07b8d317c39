//! bringup against real SDK calls on the local emulator.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use bringup::{Bringup, BringupRequest, Caller};
use drpilot_shared::input::TriggerDefaults;
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::run::ExecutionInfo;
use drpilot_shared::{ErrorKind, Mode};
use drpilot_testkit::{
    make_backup, sh, test_profile, LocalAws, TempDir, BACKUP_BUCKET, BACKUP_PREFIX, PROFILE,
    TARGET_BUCKET,
};
use serde_json::{json, Value};

/// `cargo lambda watch` passes this instead of an ARN; bringup then asks STS.
const LOCAL_ARN: &str = "function-arn";

fn bringup(aws: &LocalAws) -> Bringup {
    Bringup {
        clients: aws.clients.for_function("bringup"),
        sfn: aws.clients.for_function("bringup").sfn(),
        profiles: ProfileSource::Ssm(aws.clients.ssm.clone()),
        defaults: TriggerDefaults {
            profile: Some(PROFILE.into()),
        },
        approval_timeout_seconds: Some(86_400),
        sts: drpilot_shared::identity::StsEndpoint::of_config(&aws.clients.config),
    }
}

fn request(input: Value, name: &str) -> BringupRequest {
    BringupRequest {
        input,
        execution: ExecutionInfo {
            name: Some(name.into()),
            arn: Some(format!(
                "arn:aws:states:us-east-1:123456789012:execution:drill:{name}"
            )),
            start_time: None,
        },
        retry_count: 0,
    }
}

/// Publishes a small backup `id` created at `created_at`.
async fn publish_backup(aws: &LocalAws, id: &str, created_at: &str) {
    let tmp = TempDir::new("bringup");
    let src = tmp.path().join("src");
    sh(&format!(
        "mkdir -p '{0}' && echo {id} > '{0}/f.json'",
        src.display()
    ));
    let out = tmp.path().join(id);
    make_backup(&src, &out, &["--created-at", created_at]);
    aws.upload_dir(BACKUP_BUCKET, &format!("{BACKUP_PREFIX}{id}"), &out)
        .await;
}

/// Every key bringup could have written: target bucket contents.
async fn target_keys(aws: &LocalAws) -> Vec<String> {
    aws.keys(TARGET_BUCKET, "").await
}

#[test]
fn caller_from_a_function_arn() {
    assert_eq!(
        Caller::from_function_arn("arn:aws:lambda:eu-west-1:111122223333:function:drpilot-bringup"),
        Some(Caller {
            account_id: "111122223333".into(),
            region: "eu-west-1".into()
        })
    );
    assert_eq!(Caller::from_function_arn("function-arn"), None);
    assert_eq!(Caller::from_function_arn("arn:aws:s3:::bucket"), None);
}

#[tokio::test]
async fn picks_the_newest_valid_backup_and_takes_the_lock() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    publish_backup(&aws, "b-old", "2026-10-01T00:00:00Z").await;
    publish_backup(&aws, "b-new", "2026-11-01T00:00:00Z").await;
    // Newer, but broken (no manifests): skipped, not chosen.
    publish_backup(&aws, "b-broken", "2026-11-15T00:00:00Z").await;
    aws.s3()
        .delete_object()
        .bucket(BACKUP_BUCKET)
        .key(format!("{BACKUP_PREFIX}b-broken/manifests.tar.zst"))
        .send()
        .await
        .unwrap();

    let run = bringup(&aws)
        .handle(
            request(json!({"mode": "drill", "profile": PROFILE}), "exec-1"),
            LOCAL_ARN,
        )
        .await
        .unwrap();
    assert_eq!(run.run_id, "exec-1", "run id from the execution name");
    assert_eq!(run.input.mode, Mode::Drill);
    assert_eq!(run.backup.backup_id, "b-new");
    assert_eq!(
        run.backup.uri.to_string(),
        format!("s3://{BACKUP_BUCKET}/{BACKUP_PREFIX}b-new/")
    );
    let lock: Value = serde_json::from_str(
        &aws.get_text(TARGET_BUCKET, "locks/drill.lock")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(lock["run_id"], "exec-1");
    assert!(lock["execution_arn"].as_str().unwrap().ends_with(":exec-1"));
    let receipt: Value = serde_json::from_str(
        &aws.get_text(
            drpilot_testkit::EVIDENCE_BUCKET,
            "drpilot/receipts/runs/exec-1/phases/bringup.json",
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(receipt["status"], "success");
    assert_eq!(receipt["details"]["backup_id"], "b-new");
    // The output stays small (far under Step Functions' 256 KiB).
    assert!(serde_json::to_vec(&run).unwrap().len() < 4096);
}

#[tokio::test]
async fn an_explicit_backup_uri_and_run_id_are_honoured() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    publish_backup(&aws, "b-1", "2026-10-01T00:00:00Z").await;
    publish_backup(&aws, "b-2", "2026-11-01T00:00:00Z").await;
    let input = json!({
        "mode": "drill", "profile": PROFILE, "run_id": "chosen-run",
        "backup_uri": format!("s3://{BACKUP_BUCKET}/{BACKUP_PREFIX}b-1")
    });
    let run = bringup(&aws)
        .handle(request(input, "exec-2"), LOCAL_ARN)
        .await
        .unwrap();
    assert_eq!(run.run_id, "chosen-run");
    assert_eq!(run.backup.backup_id, "b-1");
}

#[tokio::test]
async fn the_aws_sample_alarm_event_starts_a_recovery() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    publish_backup(&aws, "b-1", "2026-10-01T00:00:00Z").await;
    let event: Value = serde_json::from_str(include_str!(
        "../../../shared/tests/fixtures/alarm-state-change.json"
    ))
    .unwrap();
    let run = bringup(&aws)
        .handle(request(event, "alarm-exec"), LOCAL_ARN)
        .await
        .unwrap();
    assert_eq!(run.input.mode, Mode::Recovery);
    assert!(!run.input.approval_bypassed());
}

#[tokio::test]
async fn account_mismatch_stops_before_any_write() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    publish_backup(&aws, "b-1", "2026-10-01T00:00:00Z").await;
    let mut other = test_profile();
    other["account_id"] = json!("999999999999");
    aws.put_profile("other-account", &other).await;
    let before = target_keys(&aws).await;
    let err = bringup(&aws)
        .handle(
            request(
                json!({"mode": "drill", "profile": "other-account"}),
                "exec-3",
            ),
            LOCAL_ARN,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AccountMismatch);
    assert!(
        err.message.contains("999999999999") && err.message.contains("123456789012"),
        "{err}"
    );
    assert_eq!(target_keys(&aws).await, before, "nothing written");

    // The ARN, when there is one, is what the guard trusts (here: wrong region).
    let err = bringup(&aws)
        .handle(
            request(json!({"mode": "drill", "profile": PROFILE}), "exec-4"),
            "arn:aws:lambda:eu-central-1:123456789012:function:bringup",
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AccountMismatch);
    assert!(err.message.contains("eu-central-1"), "{err}");
    assert_eq!(target_keys(&aws).await, before, "nothing written");
}

#[tokio::test]
async fn a_held_lock_stops_before_any_write() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    publish_backup(&aws, "b-1", "2026-10-01T00:00:00Z").await;
    let input = json!({"mode": "drill", "profile": PROFILE});
    bringup(&aws)
        .handle(request(input.clone(), "first"), LOCAL_ARN)
        .await
        .unwrap();
    let before = target_keys(&aws).await;
    let lock_before = aws.get_text(TARGET_BUCKET, "locks/drill.lock").await;
    let err = bringup(&aws)
        .handle(request(input.clone(), "second"), LOCAL_ARN)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::LockHeld);
    assert!(err.message.contains("first"), "{err}");
    assert_eq!(target_keys(&aws).await, before, "nothing written");
    assert_eq!(
        aws.get_text(TARGET_BUCKET, "locks/drill.lock").await,
        lock_before
    );
    // The holder re-running its bringup (a retry) is fine.
    bringup(&aws)
        .handle(request(input, "first"), LOCAL_ARN)
        .await
        .unwrap();
}

#[tokio::test]
async fn contract_problems_are_named() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    // No backups at all.
    let err = bringup(&aws)
        .handle(
            request(json!({"mode": "drill", "profile": PROFILE}), "exec-5"),
            LOCAL_ARN,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ContractError);
    assert!(err.message.contains("no valid backup"), "{err}");
    // A named backup missing an artifact.
    publish_backup(&aws, "b-1", "2026-10-01T00:00:00Z").await;
    aws.s3()
        .delete_object()
        .bucket(BACKUP_BUCKET)
        .key(format!("{BACKUP_PREFIX}b-1/state.tar.zst"))
        .send()
        .await
        .unwrap();
    let input = json!({"mode": "drill", "profile": PROFILE,
                       "backup_uri": format!("s3://{BACKUP_BUCKET}/{BACKUP_PREFIX}b-1/")});
    let err = bringup(&aws)
        .handle(request(input, "exec-6"), LOCAL_ARN)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ContractError);
    assert!(err.message.contains("state.tar.zst"), "{err}");
    // Bad input and an unknown profile are input errors.
    let err = bringup(&aws)
        .handle(
            request(json!({"mode": "drill", "profile": "nope"}), "exec-7"),
            LOCAL_ARN,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InputError);
    assert!(
        target_keys(&aws).await.iter().all(|k| !k.contains("exec-")),
        "nothing written"
    );
}

/// What only the profile's owners may allow is refused before anything is written: a
/// backup outside the profile's `backups` (a `states:StartExecution` caller could point a
/// run at any backup in the bucket), and the approval bypass without the profile's opt-in.
#[tokio::test]
async fn the_input_cannot_reach_past_the_profile() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    publish_backup(&aws, "b1", "2026-11-01T00:00:00Z").await;
    let tmp = TempDir::new("bringup-outside");
    let src = tmp.path().join("src");
    sh(&format!(
        "mkdir -p '{0}' && echo x > '{0}/f.json'",
        src.display()
    ));
    let out = tmp.path().join("elsewhere");
    make_backup(&src, &out, &[]);
    aws.upload_dir(BACKUP_BUCKET, "staging-area/b9", &out).await;
    for uri in [
        format!("s3://{BACKUP_BUCKET}/staging-area/b9/"),
        format!("s3://{BACKUP_BUCKET}/{BACKUP_PREFIX}"),
        format!("s3://{TARGET_BUCKET}/{BACKUP_PREFIX}b1/"),
    ] {
        let err = bringup(&aws)
            .handle(
                request(
                    json!({"mode": "drill", "profile": PROFILE, "backup_uri": uri}),
                    "outside-1",
                ),
                LOCAL_ARN,
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InputError, "{err}");
        assert!(err.message.starts_with("backup_uri:"), "{err}");
    }
    let mut profile = test_profile();
    profile["allow_drill_promote_bypass"] = json!(false);
    aws.put_profile(PROFILE, &profile).await;
    let err = bringup(&aws)
        .handle(
            request(
                json!({"mode": "drill", "profile": PROFILE, "auto_promote": true, "allow_promote_bypass": true}),
                "bypass-1",
            ),
            LOCAL_ARN,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InputError, "{err}");
    assert!(err.message.contains("allow_drill_promote_bypass"), "{err}");
    // A lock that would expire while the run waits for its approval (24 h here).
    let mut profile = test_profile();
    profile["lock_ttl_seconds"] = json!(3600);
    aws.put_profile(PROFILE, &profile).await;
    let err = bringup(&aws)
        .handle(
            request(json!({"mode": "drill", "profile": PROFILE}), "ttl-1"),
            LOCAL_ARN,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InputError, "{err}");
    assert!(err.message.starts_with("lock_ttl_seconds:"), "{err}");
    assert!(target_keys(&aws).await.is_empty());
    assert!(aws
        .keys(drpilot_testkit::EVIDENCE_BUCKET, "")
        .await
        .is_empty());
}

/// A bringup cut off after its N-th write (the lock, the run record, the plan, the
/// receipt) and run again — as the state machine's Retry does — hands on the same run and
/// leaves what an uncut bringup leaves.
#[tokio::test]
async fn a_bringup_cut_after_its_nth_write_and_run_again_ends_as_an_uncut_one() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    publish_backup(&aws, "b-1", "2026-10-01T00:00:00Z").await;
    let input = json!({"mode": "drill", "profile": PROFILE});
    // The run context as JSON, with its run id (the execution's name) written `{run}`
    // and without the clock's readings.
    let handed_on = |run: &drpilot_shared::run::RunContext| {
        let mut json = serde_json::to_value(run).unwrap();
        drpilot_testkit::without_clock(&mut json);
        json.to_string().replace(&run.run_id, "{run}")
    };
    let free_the_lock = || async {
        aws.s3()
            .delete_object()
            .bucket(TARGET_BUCKET)
            .key("locks/drill.lock")
            .send()
            .await
            .unwrap();
    };
    let whole = bringup(&aws)
        .handle(request(input.clone(), "exec-whole"), LOCAL_ARN)
        .await
        .unwrap();
    let whole = (handed_on(&whole), aws.left_by("exec-whole").await);
    assert!(whole.1.len() >= 3, "{:?}", whole.1);
    free_the_lock().await;

    for n in 0..4 {
        let name = format!("exec-cut-{n}");
        let mut cut = bringup(&aws);
        cut.clients.s3 = drpilot_testkit::FailAfter::s3(&cut.clients.s3, "PutObject", n);
        let err = cut
            .handle(request(input.clone(), &name), LOCAL_ARN)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("injected fault"),
            "after {n}: {err}"
        );
        let run = bringup(&aws)
            .handle(request(input.clone(), &name), LOCAL_ARN)
            .await
            .unwrap();
        assert_eq!(handed_on(&run), whole.0, "cut after write {n}");
        drpilot_testkit::assert_left_alike(
            &aws.left_by(&name).await,
            &whole.1,
            &format!("cut after write {n}"),
        );
        free_the_lock().await;
    }
}
