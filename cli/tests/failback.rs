//! Failback end to end: the real ASL (`statemachine/failback.asl.json` and the drill's)
//! executing the real handlers (under `cargo lambda watch`) on the local stack, with a
//! primary bucket and a DR bucket; driven through the CLI's own functions and binary.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use drpilot_cli::history::fetch;
use drpilot_cli::local::{deploy_state_machine, Machine};
use drpilot_cli::{
    approve, failback, follow, records, runs, Ctx, FailbackArgs, FailbackProgress, Out,
};
use drpilot_shared::failback::FailbackSummary;
use drpilot_shared::receipt::RunStatus;
use drpilot_testkit::{
    make_backup, sh, LocalAws, TempDir, BACKUP_BUCKET, BACKUP_PREFIX, PRIMARY_BUCKET, PROFILE,
    TARGET_BUCKET,
};
use serde_json::{json, Value};

use common::{start_run, MACHINE};

const FAILBACK: &str = "drpilot-failback";

/// Both state machines, a backup of 30 objects the primary's `root/` also holds (what it
/// was when the backup was taken), and the stack's drill schedule, disabled.
async fn stack(aws: &LocalAws, tmp: &TempDir) -> Ctx {
    aws.with_functions();
    aws.standard_setup().await;
    aws.drill_schedule(false).await;
    let mut ctx = Ctx::new(
        Some(&aws.endpoint),
        Some(MACHINE.into()),
        Out { json: true },
    )
    .await;
    ctx.failback_state_machine = Some(FAILBACK.into());
    let topic = ctx.sns.create_topic().name("drpilot").send().await.unwrap();
    let topic = topic.topic_arn().unwrap().to_owned();
    deploy_state_machine(&ctx, Machine::Drill, MACHINE, &topic, 600)
        .await
        .unwrap();
    deploy_state_machine(&ctx, Machine::Failback, FAILBACK, &topic, 600)
        .await
        .unwrap();
    let src = tmp.path().join("src");
    sh(&format!(
        "mkdir -p '{0}/x/y' && for i in $(seq 1 30); do echo \"{{\\\"record\\\": $i}}\" > '{0}/x/y/'$i.json; done",
        src.display()
    ));
    aws.upload_dir(PRIMARY_BUCKET, "root", &src).await;
    let out = tmp.path().join("b1");
    make_backup(&src, &out, &[]);
    aws.upload_dir(BACKUP_BUCKET, &format!("{BACKUP_PREFIX}b1"), &out)
        .await;
    ctx
}

/// A DR run that promoted the backup into the DR site's `root/`: a drill promoting
/// without approval, or a recovery approved by alice.
async fn promoted(ctx: &Ctx, run_id: &str, mode: &str) {
    let input = if mode == "drill" {
        json!({"mode": "drill", "run_id": run_id, "auto_promote": true, "allow_promote_bypass": true})
    } else {
        json!({"mode": "recovery", "run_id": run_id})
    };
    let run = start_run(ctx, input).await;
    let arn = ctx.execution_arn(&run).await.unwrap();
    if mode != "drill" {
        waiting(ctx, &arn, None).await;
        approve(ctx, &run, "alice", "INC-1", None).await.unwrap();
    }
    let done = follow(ctx, &arn, &run, None).await.unwrap();
    assert_eq!(
        done.status, "SUCCEEDED",
        "{:?} {:?}",
        done.error, done.cause
    );
}

/// Waits until the execution asks for an approval other than `previous` (or ends);
/// returns the token it waits on.
async fn waiting(ctx: &Ctx, arn: &str, previous: Option<&str>) -> Option<String> {
    for _ in 0..600 {
        let p = fetch(&ctx.sfn, arn).await.unwrap();
        if p.waiting_for_approval && p.waiting_token.as_deref() != previous {
            return p.waiting_token;
        }
        if p.finished() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{arn} never asked for an approval");
}

/// Writes on the DR site after the recovery: a changed object, a new one, a deleted one.
async fn dr_writes(aws: &LocalAws) {
    // S3 keeps last-modified times in whole seconds: these land after the promotion's.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.put_text(
        TARGET_BUCKET,
        "root/x/y/1.json",
        "{\"record\": 1, \"on\": \"dr\"}",
    )
    .await;
    aws.put_text(
        TARGET_BUCKET,
        "root/x/y/new.json",
        "{\"written\": \"on the DR site\"}",
    )
    .await;
    aws.s3()
        .delete_object()
        .bucket(TARGET_BUCKET)
        .key("root/x/y/2.json")
        .send()
        .await
        .unwrap();
}

/// The objects under `root/` of `bucket`: key → (ETag, size).
async fn root(aws: &LocalAws, bucket: &str) -> BTreeMap<String, (String, i64)> {
    aws.snapshot(bucket)
        .await
        .into_iter()
        .filter(|(k, _, _)| k.starts_with("root/"))
        .map(|(k, e, s)| (k, (e, s)))
        .collect()
}

fn args(dr_run: &str) -> FailbackArgs {
    FailbackArgs {
        dr_run: dr_run.into(),
        ..FailbackArgs::default()
    }
}

fn literal(dr_run: &str) -> FailbackArgs {
    FailbackArgs {
        confirm1: Some("FAILBACK".into()),
        confirm2: Some(format!("CONFIRM-{dr_run}")),
        ..args(dr_run)
    }
}

fn summary(p: &FailbackProgress) -> &FailbackSummary {
    p.summary.as_ref().expect("the failback wrote its summary")
}

/// The error and cause a refused failback ended with.
fn refusal(p: &FailbackProgress) -> String {
    assert_eq!(p.progress.status, "FAILED", "{:?}", p.progress.output);
    format!(
        "{} {}",
        p.progress.error.clone().unwrap_or_default(),
        p.progress.cause.clone().unwrap_or_default()
    )
}

async fn generation(aws: &LocalAws) -> u64 {
    let text = aws
        .get_text(TARGET_BUCKET, "audit/published.json")
        .await
        .unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["generation"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn a_clean_failback_brings_the_dr_writes_home_and_advances_the_generation() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("failback-clean");
    let ctx = stack(&aws, &tmp).await;
    promoted(&ctx, "dr-1", "drill").await;
    assert_eq!(generation(&aws).await, 1);
    dr_writes(&aws).await;
    // The primary lost an object in the disaster: failing back restores it.
    aws.s3()
        .delete_object()
        .bucket(PRIMARY_BUCKET)
        .key("root/x/y/9.json")
        .send()
        .await
        .unwrap();
    let primary_before = root(&aws, PRIMARY_BUCKET).await;
    assert_ne!(primary_before, root(&aws, TARGET_BUCKET).await);

    let done = failback(&ctx, &literal("dr-1")).await.unwrap();
    assert!(
        done.succeeded(),
        "{:?} {:?}",
        done.progress.error,
        done.progress.cause
    );
    let s = summary(&done);
    assert_eq!(s.status, RunStatus::Succeeded);
    let d = s.divergence.as_ref().unwrap();
    assert_eq!(
        (
            d.dr_changed,
            d.primary_changed,
            d.primary_missing,
            d.divergent,
            d.unchanged
        ),
        (3, 0, 1, 0, 27),
        "{d:?}"
    );
    assert_eq!(d.baseline_objects, 30);
    assert_eq!(s.objects_copied, 3);
    assert_eq!(s.confirmations.len(), 2);
    assert!(s.confirmations.iter().all(|c| c.kind == "literal"));

    // The primary now holds what the DR site holds: parity zero.
    assert_eq!(
        root(&aws, PRIMARY_BUCKET).await,
        root(&aws, TARGET_BUCKET).await
    );
    assert_eq!(
        aws.get_text(PRIMARY_BUCKET, "root/x/y/new.json")
            .await
            .as_deref(),
        Some("{\"written\": \"on the DR site\"}")
    );
    assert!(aws
        .get_text(PRIMARY_BUCKET, "root/x/y/2.json")
        .await
        .is_none());
    assert_eq!(generation(&aws).await, 2);
    let pointer: Value = serde_json::from_str(
        &aws.get_text(TARGET_BUCKET, "audit/published.json")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(pointer["kind"], "failback");
    assert_eq!(pointer["root"], format!("s3://{PRIMARY_BUCKET}/root/"));

    let audits = aws.keys(TARGET_BUCKET, "audit/failbacks/").await;
    assert_eq!(audits.len(), 1, "{audits:?}");
    let audit: Value =
        serde_json::from_str(&aws.get_text(TARGET_BUCKET, &audits[0]).await.unwrap()).unwrap();
    assert_eq!(audit["dr_run_id"], "dr-1");
    assert_eq!(audit["objects_copied"], 3);
    assert_eq!(audit["objects_deleted"], 1);
    assert_eq!(audit["generation"], 2);
    assert_eq!(audit["parity_after"]["delta"], 0);
    assert_eq!(audit["divergence"]["dr_changed"], 3);
    assert_eq!(audit["confirmations"].as_array().map(Vec::len), Some(2));
    assert!(audit["execution_arn"]
        .as_str()
        .unwrap()
        .contains(":drpilot-failback:"));
    assert!(aws
        .get_text(TARGET_BUCKET, "locks/drill.lock")
        .await
        .is_none());

    // `drpilot runs` lists the failback with its counts and confirmations; the report
    // has a page for it.
    let lines = runs(&ctx, Some(PROFILE), None).await.unwrap();
    let line = lines.iter().find(|l| l.run_id == done.run_id).unwrap();
    let f = line.failback.as_ref().unwrap();
    assert_eq!(f.dr_run_id, "dr-1");
    assert_eq!(f.divergence.as_ref().unwrap().dr_changed, 3);
    assert_eq!(f.confirmations, ["FAILBACK", "CONFIRM-dr-1"]);
    let html = tmp.path().join("failback.html");
    let rec = drpilot_cli::report(&ctx, &done.run_id, Some(&html))
        .await
        .unwrap();
    assert!(matches!(&rec, drpilot_cli::Report::Failback(records) if records.failback.is_some()));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains(&done.run_id) && page.contains("dr-1") && page.contains("Divergent"));

    // The evidence export carries the failback (it wrote the primary): its summary, step
    // receipts and the evidence copy of its audit record.
    let zip = tmp.path().join("evidence.zip");
    let since = chrono::Utc::now() - chrono::Duration::days(1);
    let pack = Box::pin(drpilot_cli::evidence(&ctx, PROFILE, since, None, &zip))
        .await
        .unwrap();
    assert_eq!(pack.failbacks, std::slice::from_ref(&done.run_id));
    let names = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys,zipfile; print('\\n'.join(zipfile.ZipFile(sys.argv[1]).namelist()))",
        ])
        .arg(&zip)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&names.stdout).into_owned();
    let at = format!("failbacks/{}/", done.run_id);
    assert!(
        names.contains(&format!("{at}failback.summary.json")),
        "{names}"
    );
    assert!(
        names.contains(&format!("{at}failback/copy-back.json")),
        "{names}"
    );
    assert!(names.contains(&format!("{at}audit/failback-")), "{names}");

    // A second failback of the same DR run is stale: the failback is what is live now.
    let again = failback(&ctx, &literal("dr-1")).await.unwrap();
    assert!(
        refusal(&again).contains("generation"),
        "{}",
        refusal(&again)
    );

    // A drill after it starts against generation 2 (bringup records it) and publishes 3.
    promoted(&ctx, "dr-1b", "drill").await;
    assert_eq!(generation(&aws).await, 3);
}

#[tokio::test]
async fn a_recovery_fails_back_only_with_two_different_approvers() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("failback-approvers");
    let ctx = stack(&aws, &tmp).await;
    promoted(&ctx, "rec-1", "recovery").await;
    dr_writes(&aws).await;
    let primary_before = root(&aws, PRIMARY_BUCKET).await;

    // The literal confirmations are for drills.
    let literal_refused = failback(&ctx, &literal("rec-1")).await.unwrap();
    let why = refusal(&literal_refused);
    assert!(
        why.contains("InputError") && why.contains("drills"),
        "{why}"
    );
    // Rewriting the (unlocked) audit record in the target bucket into a drill's does not
    // make the recovery a drill: the run record and the locked evidence copy disagree.
    let audit_key = aws.keys(TARGET_BUCKET, "audit/promotions/").await[0].clone();
    let mut doctored: Value =
        serde_json::from_str(&aws.get_text(TARGET_BUCKET, &audit_key).await.unwrap()).unwrap();
    doctored["mode"] = json!("drill");
    aws.put_text(TARGET_BUCKET, &audit_key, &doctored.to_string())
        .await;
    let why = refusal(&failback(&ctx, &literal("rec-1")).await.unwrap());
    assert!(
        why.contains("IntegrityError") && why.contains("disagree"),
        "{why}"
    );
    doctored["mode"] = json!("recovery");
    aws.put_text(TARGET_BUCKET, &audit_key, &doctored.to_string())
        .await;

    // Two people confirm; the approve function refuses anyone who already confirmed
    // (the same person under another name, or another person giving the same name),
    // and the failback keeps waiting for someone else.
    let bob = ctx.as_caller(aws.person("Oncall", "bob").await);
    let bob_again = ctx.as_caller(aws.person("Oncall", "bob-second-session").await);
    let carol = ctx.as_caller(aws.person("Managers", "carol").await);
    let ok = failback(
        &ctx,
        &FailbackArgs {
            no_wait: true,
            ..args("rec-1")
        },
    )
    .await
    .unwrap();
    let fb = ctx.failback();
    let arn = fb.execution_arn(&ok.run_id).await.unwrap();
    let first = waiting(&ctx, &arn, None).await.unwrap();
    approve(&bob, &ok.run_id, "bob", "CHG-1", None)
        .await
        .unwrap();
    let second = waiting(&ctx, &arn, Some(&first)).await.unwrap();
    for (who, name) in [(&bob, "Robert"), (&bob_again, "Robert"), (&carol, "Bob")] {
        let refused = approve(who, &ok.run_id, name, "CHG-2", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains("already confirmed"), "{refused}");
    }
    assert_eq!(
        waiting(&ctx, &arn, None).await.as_deref(),
        Some(second.as_str())
    );
    assert_eq!(root(&aws, PRIMARY_BUCKET).await, primary_before);
    approve(&carol, &ok.run_id, "carol", "CHG-1", None)
        .await
        .unwrap();
    let ended = follow(&fb, &arn, &ok.run_id, None).await.unwrap();
    assert_eq!(
        ended.status, "SUCCEEDED",
        "{:?} {:?}",
        ended.error, ended.cause
    );
    assert_eq!(
        root(&aws, PRIMARY_BUCKET).await,
        root(&aws, TARGET_BUCKET).await
    );
    let rec = records(&ctx, &ok.run_id).await.unwrap();
    let s = rec.failback.unwrap();
    let who: Vec<&str> = s
        .confirmations
        .iter()
        .map(|c| c.approver.as_str())
        .collect();
    assert_eq!(who, ["bob", "carol"]);
}

#[tokio::test]
async fn two_sided_divergence_is_refused_unless_discarded_by_a_named_approver() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("failback-divergence");
    let ctx = stack(&aws, &tmp).await;
    promoted(&ctx, "dr-2", "drill").await;
    dr_writes(&aws).await;
    // The primary changed 1.json too (differently), and 5.json on its own.
    aws.put_text(
        PRIMARY_BUCKET,
        "root/x/y/1.json",
        "{\"record\": 1, \"on\": \"primary\"}",
    )
    .await;
    aws.put_text(
        PRIMARY_BUCKET,
        "root/x/y/5.json",
        "{\"record\": 5, \"late\": true}",
    )
    .await;
    let primary_before = root(&aws, PRIMARY_BUCKET).await;

    let refused = failback(&ctx, &literal("dr-2")).await.unwrap();
    let why = refusal(&refused);
    assert!(
        why.contains("DivergenceError") && why.contains("x/y/1.json"),
        "{why}"
    );
    assert_eq!(
        root(&aws, PRIMARY_BUCKET).await,
        primary_before,
        "nothing copied"
    );
    let s = summary(&refused);
    let d = s.divergence.as_ref().unwrap();
    assert_eq!(
        (d.divergent, d.primary_changed, d.dr_changed),
        (1, 1, 2),
        "{d:?}"
    );
    // The report lists every key that is not unchanged, with its class.
    let report = s.divergence_report.as_ref().unwrap();
    let text = aws.get_text(&report.bucket, &report.key).await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let class_of = |key: &str| {
        lines
            .iter()
            .find(|l| l["key"] == key)
            .map(|l| l["class"].as_str().unwrap().to_owned())
    };
    assert_eq!(class_of("x/y/1.json").as_deref(), Some("divergent"));
    assert_eq!(class_of("x/y/5.json").as_deref(), Some("primary_changed"));
    assert_eq!(class_of("x/y/new.json").as_deref(), Some("dr_changed"));
    assert_eq!(generation(&aws).await, 1);

    // discard_divergent needs its approver and ticket (checked before anything starts).
    let missing = failback(
        &ctx,
        &FailbackArgs {
            discard_divergent: true,
            ..literal("dr-2")
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(missing.contains("--approver"), "{missing}");

    let discarded = failback(
        &ctx,
        &FailbackArgs {
            discard_divergent: true,
            approver: Some("dana".into()),
            ticket: Some("CHG-9".into()),
            ..literal("dr-2")
        },
    )
    .await
    .unwrap();
    assert!(discarded.succeeded(), "{:?}", discarded.progress.cause);
    // The DR site's version of the divergent key won; the primary's own change stayed.
    assert_eq!(
        aws.get_text(PRIMARY_BUCKET, "root/x/y/1.json")
            .await
            .as_deref(),
        Some("{\"record\": 1, \"on\": \"dr\"}")
    );
    assert_eq!(
        aws.get_text(PRIMARY_BUCKET, "root/x/y/5.json")
            .await
            .as_deref(),
        Some("{\"record\": 5, \"late\": true}")
    );
    let audits = aws.keys(TARGET_BUCKET, "audit/failbacks/").await;
    let audit: Value =
        serde_json::from_str(&aws.get_text(TARGET_BUCKET, &audits[0]).await.unwrap()).unwrap();
    assert_eq!(audit["discard_divergent"], true);
    assert_eq!(audit["discard_approver"], "dana");
    assert_eq!(audit["discard_ticket"], "CHG-9");
    // What is left different is the primary's own change, and only that.
    assert_eq!(audit["parity_after"]["size_differs"], 1);
    assert_eq!(audit["parity_after"]["delta"], 1);
}

#[tokio::test]
async fn each_unmet_precondition_is_refused_before_any_copy_naming_its_cause() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("failback-refusals");
    let ctx = stack(&aws, &tmp).await;
    // A run that never promoted.
    let validated = start_run(
        &ctx,
        json!({"mode": "drill", "run_id": "val-1", "stop_after": "validate"}),
    )
    .await;
    let arn = ctx.execution_arn(&validated).await.unwrap();
    follow(&ctx, &arn, &validated, None).await.unwrap();
    let never = failback(&ctx, &literal("val-1")).await.unwrap();
    let why = refusal(&never);
    assert!(
        why.contains("InputError") && why.contains("did not promote"),
        "{why}"
    );

    promoted(&ctx, "dr-3", "drill").await;
    dr_writes(&aws).await;
    let primary_before = root(&aws, PRIMARY_BUCKET).await;

    // Wrong literal confirmation.
    let wrong = failback(
        &ctx,
        &FailbackArgs {
            confirm2: Some("CONFIRM-dr-X".into()),
            ..literal("dr-3")
        },
    )
    .await
    .unwrap();
    assert!(refusal(&wrong).contains("confirm2"), "{}", refusal(&wrong));
    // A failback is what its DR run was: a drill's is not a recovery.
    let mode = failback(
        &ctx,
        &FailbackArgs {
            mode: Some("recovery".into()),
            ..literal("dr-3")
        },
    )
    .await
    .unwrap();
    assert!(
        refusal(&mode).contains("mode: the DR run dr-3 was a drill"),
        "{}",
        refusal(&mode)
    );
    // Only one of them: refused before anything starts.
    let one = failback(
        &ctx,
        &FailbackArgs {
            confirm2: None,
            ..literal("dr-3")
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(one.contains("--confirm2"), "{one}");
    // The literals only where the profile's owners allow them.
    let mut profile = drpilot_testkit::test_profile();
    profile["allow_drill_failback_literals"] = json!(false);
    aws.put_profile(PROFILE, &profile).await;
    let why = refusal(&failback(&ctx, &literal("dr-3")).await.unwrap());
    assert!(why.contains("allow_drill_failback_literals"), "{why}");
    aws.put_profile(PROFILE, &drpilot_testkit::test_profile())
        .await;

    // An enabled drill schedule: refused with the command that disables it.
    aws.drill_schedule(true).await;
    let scheduled = failback(&ctx, &literal("dr-3")).await.unwrap();
    let why = refusal(&scheduled);
    assert!(
        why.contains("ENABLED") && why.contains("EnableTriggers=false"),
        "{why}"
    );
    aws.drill_schedule(false).await;

    // A held lock.
    aws.put_text(
        TARGET_BUCKET,
        "locks/drill.lock",
        &json!({"run_id": "someone-else", "execution_arn": null,
                "acquired_at": chrono::Utc::now(), "expires_at": chrono::Utc::now() + chrono::Duration::hours(1)})
        .to_string(),
    )
    .await;
    let locked = failback(&ctx, &literal("dr-3")).await.unwrap();
    let why = refusal(&locked);
    assert!(
        why.contains("LockHeld") && why.contains("someone-else"),
        "{why}"
    );
    aws.s3()
        .delete_object()
        .bucket(TARGET_BUCKET)
        .key("locks/drill.lock")
        .send()
        .await
        .unwrap();

    // A stale generation: someone published after the DR run.
    let pointer = aws
        .get_text(TARGET_BUCKET, "audit/published.json")
        .await
        .unwrap();
    let mut later: Value = serde_json::from_str(&pointer).unwrap();
    later["generation"] = json!(7);
    later["run_id"] = json!("later-run");
    aws.put_text(TARGET_BUCKET, "audit/published.json", &later.to_string())
        .await;
    let stale = failback(&ctx, &literal("dr-3")).await.unwrap();
    let why = refusal(&stale);
    assert!(
        why.contains("generation 7") && why.contains("later-run"),
        "{why}"
    );

    // None of them copied anything, and each was receipted with every check's result.
    assert_eq!(root(&aws, PRIMARY_BUCKET).await, primary_before);
    let rec = records(&ctx, &stale.run_id).await.unwrap();
    let preflight = &rec.failback_steps[0];
    assert_eq!(preflight.error_name(), Some("ContractError"));
    let checks = preflight.details["checks"].as_array().unwrap();
    assert!(checks
        .iter()
        .any(|c| c["name"] == "schedule" && c["passed"] == true));
    assert!(checks
        .iter()
        .any(|c| c["name"] == "generation" && c["passed"] == false));
}

#[tokio::test]
async fn a_dry_run_checks_everything_writes_the_plan_and_changes_nothing() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("failback-dry");
    let ctx = stack(&aws, &tmp).await;
    promoted(&ctx, "dr-4", "drill").await;
    dr_writes(&aws).await;
    let outside_receipts = |objects: Vec<(String, String, i64)>| -> Vec<(String, String, i64)> {
        objects
            .into_iter()
            .filter(|(key, _, _)| !key.starts_with("drpilot/receipts/"))
            .collect()
    };
    let before = (
        outside_receipts(aws.snapshot(TARGET_BUCKET).await),
        aws.snapshot(PRIMARY_BUCKET).await,
        aws.snapshot(BACKUP_BUCKET).await,
    );
    let dry = failback(
        &ctx,
        &FailbackArgs {
            dry_run: true,
            ..args("dr-4")
        },
    )
    .await
    .unwrap();
    assert!(dry.succeeded(), "{:?}", dry.progress.cause);
    let after = (
        outside_receipts(aws.snapshot(TARGET_BUCKET).await),
        aws.snapshot(PRIMARY_BUCKET).await,
        aws.snapshot(BACKUP_BUCKET).await,
    );
    assert_eq!(after, before);
    let s = summary(&dry);
    assert!(s.dry_run && s.confirmations.is_empty() && s.generation.is_none());
    assert_eq!(s.divergence.as_ref().unwrap().dr_changed, 3);
    let plan = s.divergence_report.as_ref().unwrap();
    let text = aws.get_text(&plan.bucket, &plan.key).await.unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.contains("\"action\":\"copy\"") && text.contains("\"action\":\"delete\""));
    assert!(s.steps.iter().all(|r| r.dry_run));
}

#[tokio::test]
async fn a_failback_interrupted_mid_copy_and_run_again_ends_as_an_uninterrupted_one() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("failback-interrupted");
    let ctx = stack(&aws, &tmp).await;
    promoted(&ctx, "dr-5", "drill").await;
    // Many DR-side writes, so the copy is cut off in the middle.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    aws.put_many(
        TARGET_BUCKET,
        (0..40)
            .map(|i| (format!("root/new/{i:02}.json"), format!("{{\"n\": {i}}}")))
            .collect(),
    )
    .await;

    // The failback function in this process, its copies failing after the fifth.
    // (Replaced after `new`, which rebuilds its clients when the call ledger is on.)
    let mut function = failback::Failback::new(aws.clients.clone());
    function.clients.s3 = drpilot_testkit::FailAfter::s3(&function.clients.s3, "CopyObject", 5);
    function.tuning.concurrency = 1;
    let input = json!({"profile": PROFILE, "dr_run_id": "dr-5", "run_id": "failback-cut",
                       "confirm1": "FAILBACK", "confirm2": "CONFIRM-dr-5"});
    let execution = json!({"name": "failback-cut.1"});
    let call = |request: Value| {
        let function = &function;
        async move {
            let request: failback::FailbackRequest = serde_json::from_value(request).unwrap();
            function
                .handle(request)
                .await
                .map(|r| serde_json::to_value(r).unwrap())
        }
    };
    let run = call(json!({"action": "preflight", "input": input, "execution": execution}))
        .await
        .unwrap();
    call(json!({"action": "divergence", "run": run}))
        .await
        .unwrap();
    let cut = call(json!({"action": "copy-back", "run": run}))
        .await
        .unwrap_err();
    assert!(cut.to_string().contains("CopyObject"), "{cut}");
    let copied_before = aws.keys(PRIMARY_BUCKET, "root/new/").await.len();
    assert!(
        (1..40).contains(&copied_before),
        "{copied_before} copied before the cut"
    );
    // The cut copy left an exact record of what it changed on the primary.
    let journal = aws
        .receipts()
        .run_dir("failback-cut")
        .unwrap()
        .join("failback/journal")
        .unwrap()
        .as_prefix();
    let mut journaled = Vec::new();
    for file in aws.keys(&journal.bucket, &journal.key).await {
        let text = aws.get_text(&journal.bucket, &file).await.unwrap();
        for line in text.lines() {
            let entry: Value = serde_json::from_str(line).unwrap();
            assert_eq!(entry["action"], "copy", "{entry}");
            journaled.push(entry["key"].as_str().unwrap().to_owned());
        }
    }
    journaled.sort();
    assert_eq!(journaled, aws.keys(PRIMARY_BUCKET, "root/new/").await);
    let torn = call(json!({"action": "teardown", "run": run, "input": input, "execution": execution,
                           "failure": {"step": "copy-back", "error": cut.kind.name(), "cause": cut.to_string()}}))
    .await
    .unwrap();
    assert_eq!(torn["status"], "failed");
    assert!(aws
        .get_text(TARGET_BUCKET, "locks/drill.lock")
        .await
        .is_none());
    assert_eq!(
        generation(&aws).await,
        1,
        "nothing published by the cut failback"
    );

    // Failing back again (the deployed function, the real state machine) finishes the job.
    let again = failback(&ctx, &literal("dr-5")).await.unwrap();
    assert!(again.succeeded(), "{:?}", again.progress.cause);
    assert_eq!(
        root(&aws, PRIMARY_BUCKET).await,
        root(&aws, TARGET_BUCKET).await
    );
    let s = summary(&again);
    let d = s.divergence.as_ref().unwrap();
    // What the cut one copied counts as changed alike on both sites; the rest is copied.
    assert_eq!(d.both_same as usize, copied_before);
    assert_eq!(s.objects_copied as usize, 40 - copied_before);
    assert_eq!(generation(&aws).await, 2);
}

#[tokio::test]
async fn discarding_covers_only_the_divergence_people_were_shown() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("failback-discard-window");
    let ctx = stack(&aws, &tmp).await;
    promoted(&ctx, "rec-2", "recovery").await;
    dr_writes(&aws).await;
    aws.put_text(
        PRIMARY_BUCKET,
        "root/x/y/1.json",
        "{\"record\": 1, \"on\": \"primary\"}",
    )
    .await;
    // (Whole seconds: that write is wholly before the divergence step.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = failback(
        &ctx,
        &FailbackArgs {
            discard_divergent: true,
            approver: Some("dana".into()),
            ticket: Some("CHG-9".into()),
            no_wait: true,
            ..args("rec-2")
        },
    )
    .await
    .unwrap();
    let fb = ctx.failback();
    let arn = fb.execution_arn(&started.run_id).await.unwrap();
    let first = waiting(&ctx, &arn, None).await.unwrap();
    // While the confirmations wait, the primary writes the divergent key again: not what
    // dana accepted to discard.
    aws.put_text(
        PRIMARY_BUCKET,
        "root/x/y/1.json",
        "{\"record\": 1, \"on\": \"primary\", \"again\": true}",
    )
    .await;
    let bob = ctx.as_caller(aws.person("Oncall", "bob").await);
    let carol = ctx.as_caller(aws.person("Managers", "carol").await);
    approve(&bob, &started.run_id, "bob", "CHG-1", None)
        .await
        .unwrap();
    waiting(&ctx, &arn, Some(&first)).await.unwrap();
    approve(&carol, &started.run_id, "carol", "CHG-1", None)
        .await
        .unwrap();
    let ended = follow(&fb, &arn, &started.run_id, None).await.unwrap();
    assert_eq!(ended.status, "FAILED");
    assert_eq!(ended.error.as_deref(), Some("DivergenceError"));
    let cause = ended.cause.unwrap_or_default();
    assert!(
        cause.contains("after the divergence step") && cause.contains("x/y/1.json"),
        "{cause}"
    );
    assert_eq!(
        aws.get_text(PRIMARY_BUCKET, "root/x/y/1.json")
            .await
            .as_deref(),
        Some("{\"record\": 1, \"on\": \"primary\", \"again\": true}"),
        "the later write stays"
    );
    // The DR site's one-sided changes were copied; nothing was published.
    assert!(aws
        .get_text(PRIMARY_BUCKET, "root/x/y/new.json")
        .await
        .is_some());
    assert_eq!(generation(&aws).await, 1);
    assert!(aws
        .get_text(TARGET_BUCKET, "locks/drill.lock")
        .await
        .is_none());
}
