//! promote against real SDK calls on the local emulator, after a real restore and validate.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::path::Path;

use chrono::Utc;
use drpilot_shared::objects::stored_sha256;
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::receipt::PhaseStatus;
use drpilot_shared::run::{PhaseRequest, RunContext};
use drpilot_shared::{ErrorKind, Mode, S3Uri};
use drpilot_testkit::{
    make_backup, run_context, sh, test_profile, LocalAws, TempDir, BACKUP_BUCKET, BACKUP_PREFIX,
    PROFILE, TARGET_BUCKET,
};
use promote::{Approval, CopyTuning, Promote, PromoteRequest};
use serde_json::{json, Value};

/// The approve function's sealed approval of `run`.
async fn approval(aws: &LocalAws, run: &RunContext) -> Option<Approval> {
    Some(aws.sealed_approval(&run.run_id, "alice", "CHG-1234").await)
}

fn promoter(aws: &LocalAws) -> Promote {
    Promote {
        clients: aws.clients.for_function("promote"),
        profiles: ProfileSource::Ssm(aws.clients.ssm.clone()),
        tuning: CopyTuning {
            multipart_threshold: 6 << 20,
            part_size: 5 << 20,
            concurrency: 8,
        },
        sealer: Some(aws.sealer()),
    }
}

fn request(run: &RunContext, approval: Option<Approval>) -> PromoteRequest {
    PromoteRequest {
        run: run.clone(),
        retry_count: 0,
        approval,
        range: None,
        reduce: None,
        continuation: None,
    }
}

fn source(dir: &Path) {
    sh(&format!(
        "mkdir -p '{0}/a/b' && for i in $(seq 1 20); do echo \"v $i\" > '{0}/a/b/'$i.json; done && head -c 13000000 /dev/urandom > '{0}/big.bin'",
        dir.display()
    ));
}

/// Restores, validates and reports the parity of `backup_id` (made once from `src`) as
/// `run_id`: what a run has done when it reaches promote.
/// Run `run_id` takes the target's lock, whoever held it.
async fn take_lock(aws: &LocalAws, run_id: &str) {
    aws.s3()
        .delete_object()
        .bucket(TARGET_BUCKET)
        .key("locks/drill.lock")
        .send()
        .await
        .unwrap();
    drpilot_shared::lock::RunLock::new(
        aws.clients.s3.clone(),
        S3Uri::new(TARGET_BUCKET, "locks/drill.lock").unwrap(),
    )
    .acquire(
        run_id,
        Some(&drpilot_testkit::execution_arn(run_id)),
        chrono::Duration::hours(1),
    )
    .await
    .unwrap();
}

async fn staged_and_validated(
    aws: &LocalAws,
    tmp: &TempDir,
    backup_id: &str,
    run_id: &str,
) -> RunContext {
    let src = tmp.path().join("src");
    if !src.exists() {
        source(&src);
    }
    let out = tmp.path().join(backup_id);
    if !out.exists() {
        make_backup(&src, &out, &[]);
        aws.upload_dir(BACKUP_BUCKET, &format!("{BACKUP_PREFIX}{backup_id}"), &out)
            .await;
    }
    let ctx = run_context(run_id, backup_id);
    // As bringup does: the run holds the target's lock (an earlier run's released).
    take_lock(aws, run_id).await;
    let phase = PhaseRequest::new(ctx.clone(), 0);
    restore::Restore {
        clients: aws.clients.for_function("restore"),
        profiles: ProfileSource::Ssm(aws.clients.ssm.clone()),
        tuning: Default::default(),
    }
    .handle(phase.clone())
    .await
    .unwrap();
    // The components phase (none in this profile: a success with none), beside restore.
    let components = components::Components::new(aws.clients.clone());
    for action in [
        components::ComponentsRequest::Plan {
            run: ctx.clone(),
            retry_count: 0,
        },
        components::ComponentsRequest::Finish {
            run: ctx.clone(),
            retry_count: 0,
        },
    ] {
        // Boxed: a step's future holds the SDK's and is large.
        Box::pin(components.handle(action)).await.unwrap();
    }
    validate::Validate {
        clients: aws.clients.for_function("validate"),
        profiles: ProfileSource::Ssm(aws.clients.ssm.clone()),
    }
    .handle(phase.clone())
    .await
    .unwrap();
    let parity = parity_report::ParityReporter {
        clients: aws.clients.for_function("parity-report"),
        profiles: ProfileSource::Ssm(aws.clients.ssm.clone()),
    };
    // Boxed: the comparison's future is large.
    Box::pin(parity.handle(parity_report::ParityRequest::Run(Box::new(phase))))
        .await
        .unwrap();
    ctx
}

async fn root_keys(aws: &LocalAws) -> Vec<String> {
    aws.keys(TARGET_BUCKET, "root/").await
}

async fn audit_records(aws: &LocalAws) -> Vec<String> {
    aws.keys(TARGET_BUCKET, "audit/promotions/").await
}

#[tokio::test]
async fn it_copies_and_audits_on_approval_and_a_second_run_copies_nothing() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    aws.put_text(TARGET_BUCKET, "root/legacy/drift.json", "old")
        .await;
    let tmp = TempDir::new("promote-ok");
    let first = staged_and_validated(&aws, &tmp, "b1", "run-1").await;
    // The large object (copied in parts) carries user metadata, a content type and a tag
    // whose value needs URL encoding, as a backup's objects may.
    let big = S3Uri::new(TARGET_BUCKET, "_staging/run-1/big.bin").unwrap();
    aws.s3()
        .copy_object()
        .bucket(&big.bucket)
        .key(&big.key)
        .copy_source(format!("{}/{}", big.bucket, big.key))
        .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
        .metadata("origin", "backup b1")
        .content_type("application/x-drpilot-test")
        .tagging_directive(aws_sdk_s3::types::TaggingDirective::Copy)
        .send()
        .await
        .unwrap();
    let mut tags = aws
        .s3()
        .get_object_tagging()
        .bucket(&big.bucket)
        .key(&big.key)
        .send()
        .await
        .unwrap()
        .tag_set()
        .to_vec();
    tags.push(
        aws_sdk_s3::types::Tag::builder()
            .key("owner")
            .value("team a+b=c/d")
            .build()
            .unwrap(),
    );
    aws.s3()
        .put_object_tagging()
        .bucket(&big.bucket)
        .key(&big.key)
        .tagging(
            aws_sdk_s3::types::Tagging::builder()
                .set_tag_set(Some(tags))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let out = promoter(&aws)
        .handle(request(&first, approval(&aws, &first).await))
        .await
        .unwrap();
    assert_eq!(out.status, PhaseStatus::Success);
    assert_eq!(out.details["objects_copied"], 21);
    // The journal lists every change the promotion made.
    let journal = promote::journal_dir(&aws.receipts(), "run-1").unwrap();
    let mut journaled = 0;
    for file in aws.keys(&journal.bucket, &journal.key).await {
        let text = aws.get_text(&journal.bucket, &file).await.unwrap();
        for line in text.lines() {
            let entry: Value = serde_json::from_str(line).unwrap();
            assert_eq!(entry["action"], "copy", "{entry}");
            assert!(entry["key"].as_str().unwrap().starts_with("root/"));
            journaled += 1;
        }
    }
    assert_eq!(journaled, 21);
    let copied = aws
        .s3()
        .head_object()
        .bucket(TARGET_BUCKET)
        .key("root/big.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(copied.content_type(), Some("application/x-drpilot-test"));
    assert_eq!(
        copied
            .metadata()
            .and_then(|m| m.get("origin"))
            .map(String::as_str),
        Some("backup b1")
    );
    let root_tags = aws
        .s3()
        .get_object_tagging()
        .bucket(TARGET_BUCKET)
        .key("root/big.bin")
        .send()
        .await
        .unwrap();
    assert!(
        root_tags
            .tag_set()
            .iter()
            .any(|t| t.key() == "owner" && t.value() == "team a+b=c/d"),
        "tags kept exactly: {:?}",
        root_tags.tag_set()
    );
    assert_eq!(out.details["drift_objects"], 1);
    assert_eq!(out.details["parity_after"]["only_left"], 0);
    assert_eq!(out.details["approver"], "alice");
    let mut expected: Vec<String> = (1..=20).map(|i| format!("root/a/b/{i}.json")).collect();
    expected.push("root/big.bin".into());
    expected.push("root/legacy/drift.json".into()); // drift is left alone
    expected.sort();
    assert_eq!(root_keys(&aws).await, expected);
    // The multipart-copied object kept its whole-file hash.
    let big_root = stored_sha256(
        aws.s3(),
        &S3Uri::new(TARGET_BUCKET, "root/big.bin").unwrap(),
    )
    .await
    .unwrap();
    let big_stage = stored_sha256(
        aws.s3(),
        &S3Uri::new(TARGET_BUCKET, "_staging/run-1/big.bin").unwrap(),
    )
    .await
    .unwrap();
    assert!(big_root.is_some());
    assert_eq!(big_root, big_stage);

    let records = audit_records(&aws).await;
    assert_eq!(records.len(), 1);
    assert!(records[0].starts_with("audit/promotions/promotion-") && records[0].ends_with(".json"));
    let record: Value =
        serde_json::from_str(&aws.get_text(TARGET_BUCKET, &records[0]).await.unwrap()).unwrap();
    assert_eq!(record["run_id"], "run-1");
    assert_eq!(record["approver"], "alice");
    assert_eq!(record["ticket"], "CHG-1234");
    assert_eq!(record["bypass"], false);
    assert_eq!(record["objects_copied"], 21);
    assert_eq!(record["parity_before"]["only_left"], 21);
    assert_eq!(record["parity_after"]["delta"], 1, "only the drift remains");
    assert!(record["execution_arn"]
        .as_str()
        .unwrap()
        .ends_with(":run-1"));
    let pointer: Value = serde_json::from_str(
        &aws.get_text(TARGET_BUCKET, "audit/published.json")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(pointer["run_id"], "run-1");
    assert_eq!(
        pointer["audit_record"],
        format!("s3://{TARGET_BUCKET}/{}", records[0])
    );

    // Invoked again for the same run: already promoted, nothing new.
    promoter(&aws)
        .handle(request(&first, approval(&aws, &first).await))
        .await
        .unwrap();
    assert_eq!(audit_records(&aws).await.len(), 1);

    // A later run of the same backup finds root identical and copies nothing.
    // (Started after run-1 published: bringup would have recorded generation 1.)
    let mut second = staged_and_validated(&aws, &tmp, "b1", "run-2").await;
    second.published_generation = 1;
    let out = promoter(&aws)
        .handle(request(&second, approval(&aws, &second).await))
        .await
        .unwrap();
    assert_eq!(out.details["objects_copied"], 0);
    assert_eq!(out.details["objects_identical"], 21);
}

#[tokio::test]
async fn it_refuses_without_an_approval() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("promote-noapproval");
    let ctx = staged_and_validated(&aws, &tmp, "b1", "run-1").await;
    let err = promoter(&aws)
        .handle(request(&ctx, None))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ApprovalMissing);
    let blank = Approval {
        approver: "alice".into(),
        ticket: " ".into(),
        approved_at: None,
        comment: None,
        principal: None,
        verified: false,
        seal: None,
    };
    let err = promoter(&aws)
        .handle(request(&ctx, Some(blank)))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ApprovalMissing);
    assert!(root_keys(&aws).await.is_empty());
    assert!(audit_records(&aws).await.is_empty());

    // The drill-only bypass: both flags, drill mode, and only where the profile allows it
    // (the input is anyone's who may start an execution).
    let mut bypass = ctx.clone();
    bypass.input.auto_promote = true;
    bypass.input.allow_promote_bypass = true;
    let mut profile = test_profile();
    profile["allow_drill_promote_bypass"] = json!(false);
    aws.put_profile(PROFILE, &profile).await;
    let err = promoter(&aws)
        .handle(request(&bypass, None))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ApprovalMissing, "{err}");
    assert!(err.message.contains("allow_drill_promote_bypass"), "{err}");
    assert!(root_keys(&aws).await.is_empty());
    aws.put_profile(PROFILE, &test_profile()).await;
    let out = promoter(&aws).handle(request(&bypass, None)).await.unwrap();
    assert_eq!(out.details["bypass"], true);
}

/// Only the approve function's seal lets an approval through: an unsealed one (what a raw
/// SendTaskSuccess sends), one altered after sealing, and one sealed for another run are
/// all `ApprovalMissing`, and nothing is copied or audited.
#[tokio::test]
async fn it_refuses_an_unsealed_altered_or_foreign_approval() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("promote-seal");
    let ctx = staged_and_validated(&aws, &tmp, "b1", "run-1").await;
    let refused = |approval: Approval| {
        let (aws, ctx) = (&aws, &ctx);
        async move {
            let err = promoter(aws)
                .handle(request(ctx, Some(approval)))
                .await
                .unwrap_err();
            assert_eq!(err.kind, ErrorKind::ApprovalMissing, "{err}");
            err.message
        }
    };
    let mut raw = aws.sealed_approval("run-1", "alice", "CHG-1").await;
    raw.seal = None;
    assert!(refused(raw).await.contains("not sealed"));
    let mut altered = aws.sealed_approval("run-1", "alice", "CHG-1").await;
    altered.ticket = "CHG-2".into();
    assert!(refused(altered).await.contains("does not match"));
    let mut principal = aws.sealed_approval("run-1", "alice", "CHG-1").await;
    principal.principal = Some("arn:aws:iam::123456789012:user/mallory".into());
    assert!(refused(principal).await.contains("does not match"));
    let foreign = aws.sealed_approval("run-2", "alice", "CHG-1").await;
    assert!(refused(foreign).await.contains("sealed for execution"));
    // Replays: the approval of this run's first execution does not open a later one's
    // promote (after a resume its staging was never approved), and an answer to another
    // wait (a failback confirmation) is no approval to promote.
    let first = aws.sealed_approval("run-1", "alice", "CHG-1").await;
    let mut resumed = ctx.clone();
    resumed.execution_arn = Some(format!("{}.2", ctx.execution_arn.clone().unwrap()));
    let err = promoter(&aws)
        .handle(request(&resumed, Some(first)))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ApprovalMissing, "{err}");
    assert!(err.message.contains("sealed for execution"), "{err}");
    let mut confirmation = aws.sealed_approval("run-1", "alice", "CHG-1").await;
    let scope = drpilot_shared::approval::SealScope {
        execution_arn: ctx.execution_arn.clone().unwrap(),
        state: drpilot_shared::approval::FAILBACK_CONFIRMATION_STATES[0].into(),
        task_token_sha256: "0".repeat(64),
    };
    confirmation.seal = None;
    confirmation.seal = Some(
        aws.sealer()
            .seal(
                "run-1",
                &scope,
                drpilot_shared::approval::Decision::Approve,
                &confirmation,
            )
            .await
            .unwrap(),
    );
    assert!(refused(confirmation).await.contains("Confirm1"));
    assert!(root_keys(&aws).await.is_empty());
    assert!(audit_records(&aws).await.is_empty());

    // The sealed original promotes, and the audit record (and its evidence copy) keep
    // the seal and the (absent, local) principal.
    let out = promoter(&aws)
        .handle(request(&ctx, approval(&aws, &ctx).await))
        .await
        .unwrap();
    assert_eq!(out.status, PhaseStatus::Success);
    let key = &audit_records(&aws).await[0];
    let record: Value =
        serde_json::from_str(&aws.get_text(TARGET_BUCKET, key).await.unwrap()).unwrap();
    assert_eq!(record["seal"]["algorithm"], "HMAC_SHA_256");
    assert_eq!(record["principal"], Value::Null);
    assert_eq!(record["principal_verified"], false);
    let name = key.rsplit('/').next().unwrap();
    let copy = aws
        .get_text(
            drpilot_testkit::EVIDENCE_BUCKET,
            &format!("drpilot/receipts/runs/run-1/audit/{name}"),
        )
        .await
        .expect("the audit record's evidence copy");
    assert_eq!(serde_json::from_str::<Value>(&copy).unwrap(), record);
}

/// A run that outlived its lock (another run took it over after its TTL) copies nothing.
#[tokio::test]
async fn it_refuses_once_another_run_took_its_lock() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("promote-lock");
    let ctx = staged_and_validated(&aws, &tmp, "b1", "run-1").await;
    take_lock(&aws, "run-9").await;
    let err = promoter(&aws)
        .handle(request(&ctx, approval(&aws, &ctx).await))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::LockHeld, "{err}");
    assert!(err.message.contains("run-9"), "{err}");
    assert!(root_keys(&aws).await.is_empty());
    assert!(audit_records(&aws).await.is_empty());
}

#[tokio::test]
async fn the_bypass_does_not_apply_in_recovery_mode() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("promote-recovery");
    let mut ctx = staged_and_validated(&aws, &tmp, "b1", "run-1").await;
    ctx.input.mode = Mode::Recovery;
    ctx.input.auto_promote = true;
    ctx.input.allow_promote_bypass = true;
    let err = promoter(&aws)
        .handle(request(&ctx, None))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ApprovalMissing);
    assert!(root_keys(&aws).await.is_empty());
}

#[tokio::test]
async fn it_refuses_after_a_failed_validate() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("promote-badvalidate");
    let ctx = staged_and_validated(&aws, &tmp, "b1", "run-1").await;
    // Damage the staging and validate again: it fails, and promote must refuse.
    aws.put_text(TARGET_BUCKET, "_staging/run-1/a/b/1.json", "tampered")
        .await;
    validate::Validate {
        clients: aws.clients.for_function("validate"),
        profiles: ProfileSource::Ssm(aws.clients.ssm.clone()),
    }
    .handle(PhaseRequest::new(ctx.clone(), 0))
    .await
    .unwrap_err();
    let err = promoter(&aws)
        .handle(request(&ctx, approval(&aws, &ctx).await))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InputError);
    assert!(
        err.message
            .contains("validate has not succeeded (it failed with IntegrityError)"),
        "{err}"
    );
    assert!(root_keys(&aws).await.is_empty());
}

#[tokio::test]
async fn a_rerun_after_an_interruption_resumes_with_one_audit_record() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("promote-resume");
    let ctx = staged_and_validated(&aws, &tmp, "b1", "run-1").await;
    // The interruption: some objects already in root (as a crashed copy leaves them),
    // and an audit key already chosen.
    for i in 1..=7 {
        aws.s3()
            .copy_object()
            .bucket(TARGET_BUCKET)
            .key(format!("root/a/b/{i}.json"))
            .copy_source(format!("{TARGET_BUCKET}/_staging/run-1/a/b/{i}.json"))
            .send()
            .await
            .unwrap();
    }
    let pending = json!({"audit_record": format!("s3://{TARGET_BUCKET}/audit/promotions/promotion-20261122T000000.000Z.json")});
    aws.put_text(
        drpilot_testkit::EVIDENCE_BUCKET,
        "drpilot/receipts/runs/run-1/promote.pending.json",
        &pending.to_string(),
    )
    .await;

    let out = promoter(&aws)
        .handle(request(&ctx, approval(&aws, &ctx).await))
        .await
        .unwrap();
    assert_eq!(out.details["objects_copied"], 14);
    assert_eq!(out.details["objects_identical"], 7);
    assert_eq!(
        audit_records(&aws).await,
        ["audit/promotions/promotion-20261122T000000.000Z.json"]
    );
}

#[tokio::test]
async fn drift_is_pruned_when_the_profile_says_so() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let mut profile = test_profile();
    profile["prune_drift"] = json!(true);
    aws.put_profile(PROFILE, &profile).await;
    aws.put_text(TARGET_BUCKET, "root/legacy/drift.json", "old")
        .await;
    // Keys no archive could hold but S3 does (a console's folder marker, a double
    // slash): pruned like any drift, not a failure on every retry.
    aws.put_text(TARGET_BUCKET, "root/legacy/", "").await;
    aws.put_text(TARGET_BUCKET, "root/a//b.json", "odd").await;
    let tmp = TempDir::new("promote-prune");

    // A staging emptied after validation would make all of root/ drift: refused before
    // anything is written.
    let emptied = staged_and_validated(&aws, &tmp, "b1", "run-1").await;
    for key in aws.keys(TARGET_BUCKET, "_staging/run-1/").await {
        aws.s3()
            .delete_object()
            .bucket(TARGET_BUCKET)
            .key(key)
            .send()
            .await
            .unwrap();
    }
    let root_before = root_keys(&aws).await;
    let err = promoter(&aws)
        .handle(request(&emptied, approval(&aws, &emptied).await))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::IntegrityError, "{err}");
    assert!(err.message.contains("validate counted 21"), "{err}");
    assert_eq!(root_keys(&aws).await, root_before);

    // More drift than the profile's share (3 of 24 objects, over the default 10%).
    let ctx = staged_and_validated(&aws, &tmp, "b1", "run-2").await;
    let err = promoter(&aws)
        .handle(request(&ctx, approval(&aws, &ctx).await))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::IntegrityError, "{err}");
    assert!(err.message.contains("prune_drift_max_percent"), "{err}");
    assert_eq!(root_keys(&aws).await, root_before);
    assert!(audit_records(&aws).await.is_empty());

    profile["prune_drift_max_percent"] = json!(50);
    aws.put_profile(PROFILE, &profile).await;
    let out = promoter(&aws)
        .handle(request(&ctx, approval(&aws, &ctx).await))
        .await
        .unwrap();
    assert_eq!(out.details["drift_deleted"], 3);
    assert_eq!(out.details["parity_after"]["delta"], 0);
    let root = root_keys(&aws).await;
    for drift in ["root/legacy/drift.json", "root/legacy/", "root/a//b.json"] {
        assert!(
            !root.contains(&drift.to_owned()),
            "{drift} left in {root:?}"
        );
    }
}

#[tokio::test]
async fn a_promotion_started_against_a_stale_generation_is_refused_before_any_copy() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("promote-generation");
    // run-1 started when nothing was published (generation 0) …
    let ctx = staged_and_validated(&aws, &tmp, "b1", "run-1").await;
    assert_eq!(ctx.published_generation, 0);
    // … and someone published since (a failback, say).
    let later = json!({
        "run_id": "failback-x", "backup_uri": format!("s3://{BACKUP_BUCKET}/{BACKUP_PREFIX}b1/"),
        "backup_id": "b1", "backup_created_at": Utc::now(), "git_sha": null,
        "root": "s3://primary-data/root/", "promoted_at": Utc::now(),
        "audit_record": format!("s3://{TARGET_BUCKET}/audit/failbacks/f.json"),
        "generation": 3, "kind": "failback"
    });
    aws.put_text(TARGET_BUCKET, "audit/published.json", &later.to_string())
        .await;
    let err = promoter(&aws)
        .handle(request(&ctx, approval(&aws, &ctx).await))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ContractError, "{err}");
    assert!(
        err.to_string().contains("generation 3") && err.to_string().contains("failback-x"),
        "{err}"
    );
    assert!(root_keys(&aws).await.is_empty(), "nothing copied");
    assert!(audit_records(&aws).await.is_empty());

    // Started against the live generation, it promotes and publishes the next one.
    let mut current = ctx.clone();
    current.published_generation = 3;
    let out = promoter(&aws)
        .handle(request(&current, approval(&aws, &current).await))
        .await
        .unwrap();
    assert_eq!(out.details["generation"], 4);
    let pointer: Value = serde_json::from_str(
        &aws.get_text(TARGET_BUCKET, "audit/published.json")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(pointer["generation"], 4);
    assert_eq!(pointer["kind"], "promotion");
}

/// `root/` as (key, content), and emptied.
async fn take_root(aws: &LocalAws) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for key in aws.keys(TARGET_BUCKET, "root/").await {
        let body = aws.get_text(TARGET_BUCKET, &key).await.unwrap();
        aws.s3()
            .delete_object()
            .bucket(TARGET_BUCKET)
            .key(&key)
            .send()
            .await
            .unwrap();
        out.push((key, body));
    }
    out
}

/// A promotion cut off after its N-th copy (a timeout, a crash, a lost answer) and run
/// again — as the state machine's Retry does — ends with `root/` exactly as an uncut
/// promotion leaves it, and one audit record for the run.
#[tokio::test]
async fn a_promotion_cut_after_its_nth_copy_and_run_again_ends_as_an_uncut_one() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("promote-cut");
    take_root(&aws).await;
    let uncut = staged_and_validated(&aws, &tmp, "b1", "run-uncut").await;
    promoter(&aws)
        .handle(request(&uncut, approval(&aws, &uncut).await))
        .await
        .unwrap();
    let whole = take_root(&aws).await;
    assert!(whole.len() > 9, "{whole:?}");
    for (generation, n) in [(1_u64, 1_u32), (2, 9)] {
        let run_id = format!("run-cut-{n}");
        let mut ctx = staged_and_validated(&aws, &tmp, "b1", &run_id).await;
        ctx.published_generation = generation;
        let records = audit_records(&aws).await.len();
        let mut cut = promoter(&aws);
        cut.clients.s3 = drpilot_testkit::FailAfter::s3(&cut.clients.s3, "CopyObject", n);
        let err = cut
            .handle(request(&ctx, approval(&aws, &ctx).await))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("injected fault"), "{err}");
        // The first n copies landed (a multipart copy of the large file may have too).
        let partial = root_keys(&aws).await.len();
        assert!(
            (n as usize..whole.len()).contains(&partial),
            "cut after copy {n}: {partial}"
        );
        // The state machine's retry: the same request again.
        let out = promoter(&aws)
            .handle(request(&ctx, approval(&aws, &ctx).await))
            .await
            .unwrap();
        assert_eq!(out.status, PhaseStatus::Success, "{out:?}");
        assert_eq!(take_root(&aws).await, whole, "cut after copy {n}");
        assert_eq!(audit_records(&aws).await.len(), records + 1);
    }
}
