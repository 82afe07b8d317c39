//! End to end: the real ASL (`statemachine/drill.asl.json`) executing the real phase
//! handlers (under `cargo lambda watch`) on the local stack, driven through the CLI's
//! own functions and binary.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

mod common;

use drpilot_cli::local::{deploy_state_machine, Machine};
use drpilot_cli::{approve, deny, parse_since, records, runs, Ctx, Out};
use drpilot_shared::receipt::{PhaseStatus, RunStatus};
use drpilot_shared::Phase;
use drpilot_testkit::{
    corrupt_state_sha256, make_backup, sh, LocalAws, TempDir, BACKUP_BUCKET, BACKUP_PREFIX,
    PROFILE, TARGET_BUCKET,
};
use serde_json::{json, Value};

use common::{finish, finish_succeeded, start_run, until_waiting, MACHINE};

/// The stack for one case: functions up, buckets and profile, topic, state machine, and
/// one published backup.
async fn stack(aws: &LocalAws, tmp: &TempDir, broken_backup: bool) -> Ctx {
    stack_with_topic(aws, tmp, broken_backup, None).await
}

/// [`stack`], notifying `topic_arn` instead of a topic it creates.
async fn stack_with_topic(
    aws: &LocalAws,
    tmp: &TempDir,
    broken_backup: bool,
    topic_arn: Option<&str>,
) -> Ctx {
    aws.with_functions();
    aws.standard_setup().await;
    let ctx = Ctx::new(
        Some(&aws.endpoint),
        Some(MACHINE.into()),
        Out { json: true },
    )
    .await;
    let topic = match topic_arn {
        Some(arn) => arn.to_owned(),
        None => {
            let created = ctx.sns.create_topic().name("drpilot").send().await.unwrap();
            created.topic_arn().unwrap().to_owned()
        }
    };
    deploy_state_machine(&ctx, Machine::Drill, MACHINE, &topic, 600)
        .await
        .unwrap();
    let src = tmp.path().join("src");
    sh(&format!(
        "mkdir -p '{0}/x/y' && for i in $(seq 1 30); do echo \"{{\\\"record\\\": $i}}\" > '{0}/x/y/'$i.json; done",
        src.display()
    ));
    let out = tmp.path().join("b1");
    make_backup(&src, &out, &[]);
    if broken_backup {
        corrupt_state_sha256(&out);
    }
    aws.upload_dir(BACKUP_BUCKET, &format!("{BACKUP_PREFIX}b1"), &out)
        .await;
    ctx
}

/// The `drpilot` binary, talking to this test's emulator.
fn drpilot(aws: &LocalAws) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_drpilot"));
    command
        .env("AWS_ENDPOINT_URL", &aws.endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1");
    command
}

/// Runs `drpilot --state-machine MACHINE ARGS` to success and returns its stdout.
fn drpilot_ok(aws: &LocalAws, args: &[&str]) -> String {
    let out = drpilot(aws)
        .args(["--state-machine", MACHINE])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn happy_path_is_promoted_after_approval() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("e2e-happy");
    let ctx = stack(&aws, &tmp, false).await;
    let run = start_run(&ctx, json!({"mode": "drill", "run_id": "happy-1"})).await;
    until_waiting(&ctx, &run).await;
    approve(&ctx, &run, "alice", "CHG-7", None).await.unwrap();
    finish_succeeded(&ctx, &run).await;
    let rec = records(&ctx, &run).await.unwrap();
    let summary = rec.summary.unwrap();
    assert_eq!(summary.status, RunStatus::Succeeded);
    assert!(summary.promoted && summary.torn_down);
    assert_eq!(summary.approver.as_deref(), Some("alice"));
    assert_eq!(summary.ticket.as_deref(), Some("CHG-7"));
    assert!(summary.rto_seconds.is_some() && summary.rpo_seconds.is_some());
    assert!(summary
        .phases
        .iter()
        .all(|p| p.status == PhaseStatus::Success));
    assert_eq!(aws.keys(TARGET_BUCKET, "root/").await.len(), 30);
    let audits = aws.keys(TARGET_BUCKET, "audit/promotions/").await;
    assert_eq!(audits.len(), 1);
    let audit: Value =
        serde_json::from_str(&aws.get_text(TARGET_BUCKET, &audits[0]).await.unwrap()).unwrap();
    assert_eq!(audit["approver"], "alice");
    assert!(audit["execution_arn"]
        .as_str()
        .unwrap()
        .ends_with(":happy-1.1"));
    assert!(aws
        .get_text(TARGET_BUCKET, "locks/drill.lock")
        .await
        .is_none());

    // The binary: status exits 0 on a succeeded run; report writes one HTML page.
    let html = tmp.path().join("report.html");
    drpilot_ok(&aws, &["report", &run, "--html", html.to_str().unwrap()]);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("happy-1") && page.contains("alice") && page.contains("RTO"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );

    // `drpilot runs --json` lists it from its summary; `--since` tomorrow lists nothing.
    let listed = drpilot_ok(&aws, &["--json", "runs", "--profile", PROFILE]);
    let lines: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(lines.as_array().map(Vec::len), Some(1), "{lines}");
    assert_eq!(lines[0]["run_id"], "happy-1");
    assert_eq!(lines[0]["status"], "succeeded");
    assert_eq!(lines[0]["trigger"], "manual");
    assert_eq!(lines[0]["promoted"], true);
    assert_eq!(lines[0]["rto"]["met"], true);
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    assert!(
        runs(&ctx, Some(PROFILE), Some(parse_since(&tomorrow).unwrap()))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_denied_approval_skips_promote_and_still_tears_down() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("e2e-deny");
    let ctx = stack(&aws, &tmp, false).await;
    let run = start_run(&ctx, json!({"mode": "drill", "run_id": "deny-1"})).await;
    until_waiting(&ctx, &run).await;
    deny(&ctx, &run, "change freeze").await.unwrap();
    let done = finish(&ctx, &run).await;
    assert_eq!(done.status, "SUCCEEDED");
    let rec = records(&ctx, &run).await.unwrap();
    let summary = rec.summary.unwrap();
    assert!(!summary.promoted && summary.torn_down);
    let promote = summary
        .phases
        .iter()
        .find(|p| p.phase == Phase::Promote)
        .unwrap();
    assert_eq!(promote.status, PhaseStatus::Skipped);
    assert!(
        promote
            .reason
            .as_deref()
            .unwrap()
            .starts_with("approval denied"),
        "{promote:?}"
    );
    assert!(aws.keys(TARGET_BUCKET, "root/").await.is_empty());
    assert!(aws.keys(TARGET_BUCKET, "_staging/deny-1/").await.is_empty());
}

#[tokio::test]
async fn a_restore_failure_is_caught_recorded_and_the_run_fails() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("e2e-fail");
    let ctx = stack(&aws, &tmp, true).await;
    let run = start_run(&ctx, json!({"mode": "drill", "run_id": "fail-1"})).await;
    let done = finish(&ctx, &run).await;
    assert_eq!(done.status, "FAILED");
    assert_eq!(done.error.as_deref(), Some("IntegrityError"));
    let rec = records(&ctx, &run).await.unwrap();
    let summary = rec.summary.unwrap();
    assert_eq!(summary.status, RunStatus::Failed);
    let restore = summary
        .phases
        .iter()
        .find(|p| p.phase == Phase::Restore)
        .unwrap();
    assert_eq!(restore.status, PhaseStatus::Failed);
    assert_eq!(summary.failure.unwrap().phase, Some(Phase::Restore));
    assert!(
        aws.get_text(TARGET_BUCKET, "locks/drill.lock")
            .await
            .is_none(),
        "lock released"
    );
    assert!(
        aws.keys(TARGET_BUCKET, "_staging/fail-1/").await.is_empty(),
        "staging removed"
    );
}

#[tokio::test]
async fn stop_after_validate_skips_the_rest() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("e2e-stop");
    let ctx = stack(&aws, &tmp, false).await;
    let run = start_run(
        &ctx,
        json!({"mode": "drill", "run_id": "stop-1", "stop_after": "validate"}),
    )
    .await;
    let done = finish(&ctx, &run).await;
    assert_eq!(done.status, "SUCCEEDED");
    assert!(
        !done.steps.iter().any(|s| s.state == "RequestApproval"),
        "no approval asked"
    );
    // The follow view shows parity-report as skipped, with its reason, not as done.
    let parity = done
        .steps
        .iter()
        .find(|s| s.state == "ParityReport")
        .unwrap();
    assert_eq!(parity.skipped.as_deref(), Some("stop_after=validate"));
    let validate = done.steps.iter().find(|s| s.state == "Validate").unwrap();
    assert_eq!(validate.skipped, None);
    let summary = records(&ctx, &run).await.unwrap().summary.unwrap();
    let status = |phase| {
        summary
            .phases
            .iter()
            .find(|p| p.phase == phase)
            .unwrap()
            .clone()
    };
    assert_eq!(status(Phase::Validate).status, PhaseStatus::Success);
    assert_eq!(status(Phase::ParityReport).status, PhaseStatus::Skipped);
    assert_eq!(
        status(Phase::ParityReport).reason.as_deref(),
        Some("stop_after=validate")
    );
    assert_eq!(
        status(Phase::Promote).reason.as_deref(),
        Some("stop_after=validate")
    );
    assert!(!summary.promoted);
}

/// The execution input the deployed AlarmRecovery rule produces for `event`
/// (`infra/rule_input.py` applies the template's own InputTransformer).
fn rule_input(event: &Value) -> Value {
    let root = drpilot_testkit::repo_root();
    let tmp = TempDir::new("rule-event");
    let path = tmp.path().join("event.json");
    std::fs::write(&path, event.to_string()).unwrap();
    let out = std::process::Command::new(root.join(".venv-infra/bin/python"))
        .arg(root.join("infra/rule_input.py"))
        .arg("alarm")
        .arg(&path)
        .args(["--profile", PROFILE])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rule_input.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn the_deployed_alarm_rule_starts_a_recovery_that_records_the_alarm() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("e2e-alarm");
    let ctx = stack(&aws, &tmp, false).await;
    let mut event: Value = serde_json::from_str(include_str!(
        "../../shared/tests/fixtures/alarm-state-change.json"
    ))
    .unwrap();
    // A reason with quotes, as CloudWatch writes them, must survive the transformer.
    event["detail"]["state"]["reason"] =
        json!("Threshold Crossed: 1 datapoint [\"p99\" 2.5] was greater than 2.0");
    let input = rule_input(&event);
    let machine = ctx.state_machine_arn().await.unwrap();
    ctx.sfn
        .start_execution()
        .state_machine_arn(&machine)
        .name("alarm-1")
        .input(input.to_string())
        .send()
        .await
        .unwrap();
    until_waiting(&ctx, "alarm-1").await;
    approve(&ctx, "alarm-1", "oncall", "INC-99", None)
        .await
        .unwrap();
    finish_succeeded(&ctx, "alarm-1").await;
    let summary = records(&ctx, "alarm-1").await.unwrap().summary.unwrap();
    assert_eq!(summary.mode, drpilot_shared::Mode::Recovery);
    assert!(summary.promoted);
    match summary.trigger {
        Some(drpilot_shared::input::Trigger::Alarm {
            alarm_name,
            alarm_reason,
            source,
            fired_at,
        }) => {
            assert_eq!(alarm_name, "ServerCpuTooHigh");
            assert!(alarm_reason.unwrap().contains("\"p99\""));
            assert!(source.unwrap().starts_with("arn:aws:cloudwatch:"));
            assert_eq!(
                fired_at.unwrap().to_rfc3339(),
                event["time"]
                    .as_str()
                    .unwrap()
                    .parse::<chrono::DateTime<chrono::Utc>>()
                    .unwrap()
                    .to_rfc3339()
            );
        }
        other => panic!("expected the alarm as the trigger, got {other:?}"),
    }
}

/// A failure to ask for approval (here: the topic does not exist) is not a denial: the
/// run fails, with the error recorded, instead of ending SUCCEEDED with nobody asked.
#[tokio::test]
async fn an_approval_request_that_cannot_be_sent_fails_the_run() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("e2e-sns");
    let ctx = stack_with_topic(
        &aws,
        &tmp,
        false,
        Some("arn:aws:sns:us-east-1:123456789012:no-such-topic"),
    )
    .await;
    let run = start_run(&ctx, json!({"mode": "drill", "run_id": "nosns-1"})).await;
    let done = finish(&ctx, &run).await;
    assert_eq!(done.status, "FAILED", "{:?} {:?}", done.error, done.cause);
    let summary = records(&ctx, &run).await.unwrap().summary.unwrap();
    assert_eq!(summary.status, RunStatus::Failed);
    assert!(!summary.promoted && summary.torn_down);
    let failure = summary.failure.unwrap();
    assert_eq!(failure.phase, Some(Phase::Promote));
    assert!(
        failure.cause.contains("approval request failed"),
        "{failure:?}"
    );
    assert!(aws.keys(TARGET_BUCKET, "root/").await.is_empty());
    assert!(aws
        .get_text(TARGET_BUCKET, "locks/drill.lock")
        .await
        .is_none());
}

#[tokio::test]
async fn a_second_concurrent_drill_is_refused_while_the_first_completes() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("e2e-lock");
    let ctx = stack(&aws, &tmp, false).await;
    let first = start_run(&ctx, json!({"mode": "drill", "run_id": "first-1"})).await;
    until_waiting(&ctx, &first).await;
    let second = start_run(&ctx, json!({"mode": "drill", "run_id": "second-1"})).await;
    let refused = finish(&ctx, &second).await;
    assert_eq!(refused.status, "FAILED");
    assert_eq!(refused.error.as_deref(), Some("LockHeld"));
    // The first run is untouched: still waiting, its lock and staging intact.
    let lock: Value = serde_json::from_str(
        &aws.get_text(TARGET_BUCKET, "locks/drill.lock")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(lock["run_id"], "first-1");
    assert_eq!(aws.keys(TARGET_BUCKET, "_staging/first-1/").await.len(), 30);
    // A second execution of the same run, started around `drpilot start`'s own check
    // (anyone with states:StartExecution can): bringup asks Step Functions whether the
    // first is still running and refuses before it touches the run.
    let first_arn = ctx.execution_arn(&first).await.unwrap();
    let again = ctx
        .sfn
        .start_execution()
        .state_machine_arn(ctx.state_machine_arn().await.unwrap())
        .name("first-1.2")
        .input(
            json!({"mode": "drill", "profile": PROFILE, "run_id": "first-1", "start_at": "validate"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    let refused = drpilot_cli::follow(&ctx, again.execution_arn(), "first-1", None)
        .await
        .unwrap();
    assert_eq!(refused.status, "FAILED");
    assert_eq!(refused.error.as_deref(), Some("LockHeld"), "{refused:?}");
    assert_eq!(aws.keys(TARGET_BUCKET, "_staging/first-1/").await.len(), 30);
    assert!(
        drpilot_cli::history::fetch(&ctx.sfn, &first_arn)
            .await
            .unwrap()
            .waiting_for_approval
    );
    approve(&ctx, &first, "alice", "CHG-8", None).await.unwrap();
    let done = finish(&ctx, &first).await;
    assert_eq!(done.status, "SUCCEEDED");
    assert!(aws
        .get_text(TARGET_BUCKET, "locks/drill.lock")
        .await
        .is_none());
}

/// `drpilot start` refuses, before anything starts, a drill that may promote without
/// `--allow-full-drill` and flags that contradict each other: exit code 2, the flags named.
#[tokio::test]
async fn start_flags_are_checked_before_anything_starts() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("e2e-flags");
    let ctx = stack(&aws, &tmp, false).await;
    let drpilot_start = |args: &[&str]| {
        drpilot(&aws)
            .args(["--state-machine", MACHINE, "start", "--profile", PROFILE])
            .args(args)
            .output()
            .unwrap()
    };
    for (args, named) in [
        (&["--no-wait"][..], &["--allow-full-drill"][..]),
        (
            &["--validate-only", "--start-at", "restore"][..],
            &["--validate-only", "--start-at"][..],
        ),
        (
            &["--mode", "recovery", "--auto-promote"][..],
            &["--auto-promote"][..],
        ),
        (&["--profile-typo"][..], &["--profile-typo"][..]),
        (
            &[
                "--no-retry",
                "--max-attempts",
                "3",
                "--stop-after",
                "validate",
            ][..],
            &["--no-retry", "--max-attempts"][..],
        ),
    ] {
        let out = drpilot_start(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for flag in named {
            assert!(stderr.contains(flag), "{args:?}: {stderr}");
        }
    }
    let machine = ctx.state_machine_arn().await.unwrap();
    let started = ctx
        .sfn
        .list_executions()
        .state_machine_arn(machine)
        .send()
        .await
        .unwrap();
    assert!(started.executions().is_empty(), "nothing was started");

    // Stopping before promotion needs no --allow-full-drill.
    let out = drpilot_start(&[
        "--stop-after",
        "validate",
        "--run-id",
        "flags-1",
        "--no-wait",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    finish_succeeded(&ctx, "flags-1").await;
    // Its run id names an existing run now: starting it again from bringup is refused
    // with the way to continue it, and nothing starts.
    let out = drpilot_start(&["--stop-after", "validate", "--run-id", "flags-1"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("drpilot resume flags-1"), "{stderr}");
    assert_eq!(ctx.run_executions("flags-1").await.unwrap().len(), 1);
}

/// A dry run of a full drill verifies the backup and writes nothing but receipts: both
/// buckets are byte-identical afterwards outside the receipts, no lock is taken, and every
/// receipt and the summary say it was a dry run.
#[tokio::test]
async fn a_dry_run_of_a_full_drill_leaves_every_bucket_as_it_was() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("e2e-dry");
    let ctx = stack(&aws, &tmp, false).await;
    aws.put_text(TARGET_BUCKET, "root/existing.txt", "production")
        .await;
    let outside_receipts = |objects: Vec<(String, String, i64)>| -> Vec<(String, String, i64)> {
        objects
            .into_iter()
            .filter(|(key, _, _)| !key.starts_with("drpilot/receipts/"))
            .collect()
    };
    let target_before = outside_receipts(aws.snapshot(TARGET_BUCKET).await);
    let backups_before = aws.snapshot(BACKUP_BUCKET).await;

    let run = start_run(
        &ctx,
        json!({"mode": "drill", "run_id": "dry-1", "dry_run": true}),
    )
    .await;
    let done = finish_succeeded(&ctx, &run).await;
    assert!(
        !done.steps.iter().any(|s| s.state == "RequestApproval"),
        "a dry run never asks to promote"
    );

    assert_eq!(
        outside_receipts(aws.snapshot(TARGET_BUCKET).await),
        target_before
    );
    assert_eq!(aws.snapshot(BACKUP_BUCKET).await, backups_before);
    let records = records(&ctx, &run).await.unwrap();
    assert_eq!(records.phases.len(), 7);
    assert!(
        records.phases.iter().all(|r| r.dry_run),
        "{:?}",
        records.phases
    );
    let status_of = |phase| {
        records
            .phases
            .iter()
            .find(|r| r.phase == phase)
            .unwrap()
            .status
    };
    assert_eq!(status_of(Phase::Restore), PhaseStatus::Success);
    assert_eq!(status_of(Phase::Components), PhaseStatus::Success);
    assert_eq!(status_of(Phase::Validate), PhaseStatus::Skipped);
    assert_eq!(status_of(Phase::ParityReport), PhaseStatus::Skipped);
    assert_eq!(status_of(Phase::Promote), PhaseStatus::Skipped);
    let summary = records.summary.unwrap();
    assert!(summary.dry_run && !summary.promoted);
    assert_eq!(summary.status, RunStatus::Succeeded);
}

/// `drpilot backup verify` checks a backup in place: a sound one exits 0 with its archives'
/// reports and its age against the profile's RPO; a corrupted one exits 1 with the error
/// name restore would give. Nothing is written either way.
#[tokio::test]
async fn backup_verify_reports_sound_and_corrupted_backups() {
    let aws = LocalAws::start().await;
    for (broken, code, error) in [(false, 0, None), (true, 1, Some("IntegrityError"))] {
        let tmp = TempDir::new("e2e-verify");
        let _ctx = stack(&aws, &tmp, broken).await;
        let target_before = aws.snapshot(TARGET_BUCKET).await;
        let uri = format!("s3://{BACKUP_BUCKET}/{BACKUP_PREFIX}b1/");
        let out = drpilot(&aws)
            .args(["--json", "backup", "verify", &uri, "--profile", PROFILE])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let check: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(check["ok"], !broken, "{check}");
        assert_eq!(check["error"].as_str(), error, "{check}");
        if !broken {
            assert_eq!(check["verified"]["state"]["files"], 30, "{check}");
            assert_eq!(check["age"]["met"], true, "{check}");
        }
        assert_eq!(aws.snapshot(TARGET_BUCKET).await, target_before);
    }
}

/// The runbook's cost-discipline sequence on one run id, one execution per step: bring up
/// and hold, restore only, validate only, final teardown. The run's receipts come from
/// all four; the staging lives from the restore to the final teardown and the lock from
/// the bringup to it.
#[tokio::test]
async fn the_cost_discipline_sequence_runs_one_run_over_four_executions() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("e2e-steps");
    let ctx = stack(&aws, &tmp, false).await;
    let lock_owner = || async {
        aws.get_text(TARGET_BUCKET, "locks/drill.lock")
            .await
            .map(|text| serde_json::from_str::<Value>(&text).unwrap()["run_id"].clone())
    };
    let step = |args: &[&str]| drpilot_ok(&aws, args);

    step(&[
        "start",
        "--profile",
        PROFILE,
        "--run-id",
        "steps-1",
        "--stop-after",
        "bringup",
        "--hold",
    ]);
    assert_eq!(
        lock_owner().await,
        Some(json!("steps-1")),
        "bringup holds the lock"
    );
    let bringup = aws
        .receipts()
        .get_phase("steps-1", Phase::Bringup)
        .await
        .unwrap()
        .unwrap();

    let restored = step(&[
        "start",
        "--profile",
        PROFILE,
        "--run-id",
        "steps-1",
        "--start-at",
        "restore",
        "--stop-after",
        "restore",
        "--hold",
    ]);
    assert!(restored.contains("execution 2"), "{restored}");
    assert_eq!(aws.keys(TARGET_BUCKET, "_staging/steps-1/").await.len(), 30);
    assert_eq!(
        lock_owner().await,
        Some(json!("steps-1")),
        "still the run's"
    );

    step(&[
        "start",
        "--profile",
        PROFILE,
        "--run-id",
        "steps-1",
        "--validate-only",
        "--hold",
    ]);
    let validate = aws
        .receipts()
        .get_phase("steps-1", Phase::Validate)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(validate.status, PhaseStatus::Success);
    // The restore receipt of the second execution stands through the third.
    let restore = aws
        .receipts()
        .get_phase("steps-1", Phase::Restore)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(restore.status, PhaseStatus::Success);
    assert!(restore.finished_at < validate.started_at);
    // `drpilot runs` (every profile, one listing) shows it held for its next step.
    let status_in_runs = || {
        let listed: Value = serde_json::from_str(&step(&["--json", "runs"])).unwrap();
        listed[0]["status"].clone()
    };
    assert_eq!(status_in_runs(), "held");

    let finished = step(&["resume", "steps-1", "--from", "teardown"]);
    assert_eq!(status_in_runs(), "succeeded");
    assert!(finished.contains("execution 4"), "{finished}");
    assert!(
        aws.keys(TARGET_BUCKET, "_staging/steps-1/")
            .await
            .is_empty(),
        "staging gone"
    );
    assert_eq!(lock_owner().await, None, "lock released");
    assert!(
        aws.keys(TARGET_BUCKET, "root/").await.is_empty(),
        "nothing promoted"
    );

    let rec = records(&ctx, "steps-1").await.unwrap();
    let again = rec
        .phases
        .iter()
        .find(|r| r.phase == Phase::Bringup)
        .unwrap();
    assert_eq!(again.started_at, bringup.started_at, "bringup ran once");
    let summary = rec.summary.unwrap();
    assert_eq!(summary.status, RunStatus::Succeeded);
    assert!(summary.torn_down && !summary.promoted);
    assert_eq!(summary.kickoff_at, rec.record.as_ref().unwrap().kickoff_at);
    let names: Vec<_> = summary
        .executions
        .iter()
        .map(|e| e.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["steps-1.1", "steps-1.2", "steps-1.3", "steps-1.4"]);
    assert!(summary.executions.iter().all(|e| e.outcome.is_some()));
    assert_eq!(summary.executions.iter().filter(|e| e.hold).count(), 3);
    let status = |phase: Phase| {
        summary
            .phases
            .iter()
            .find(|p| p.phase == phase)
            .unwrap()
            .status
    };
    for phase in [
        Phase::Bringup,
        Phase::Restore,
        Phase::Validate,
        Phase::Teardown,
    ] {
        assert_eq!(status(phase), PhaseStatus::Success, "{phase}");
    }
    assert_eq!(status(Phase::ParityReport), PhaseStatus::Skipped);
    assert!(summary.rto_seconds.is_some(), "RTO measured to validation");

    // Finished: a resume without --from has nothing to do.
    let out = drpilot(&aws)
        .args(["--state-machine", MACHINE, "resume", "steps-1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to resume"));
}

/// A restore that fails (its backup's recorded hash is wrong), is fixed, and is resumed:
/// the new execution reruns restore and what follows, not bringup, and ends where an
/// uninterrupted run ends. Validate cannot be resumed past the deleted staging.
#[tokio::test]
async fn a_failed_restore_is_fixed_and_resumed_without_rerunning_bringup() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("e2e-resume");
    let ctx = stack(&aws, &tmp, false).await;
    let metadata_key = format!("{BACKUP_PREFIX}b1/metadata.json");
    let good = aws.get_text(BACKUP_BUCKET, &metadata_key).await.unwrap();
    let mut broken: Value = serde_json::from_str(&good).unwrap();
    broken["artifacts"]["state.tar.zst"]["sha256"] = json!("0".repeat(64));
    aws.put_text(BACKUP_BUCKET, &metadata_key, &broken.to_string())
        .await;

    let run = start_run(
        &ctx,
        json!({"run_id": "resume-1", "auto_promote": true, "allow_promote_bypass": true, "max_attempts": 1}),
    )
    .await;
    let failed = finish(&ctx, &run).await;
    assert_eq!(failed.status, "FAILED");
    assert_eq!(failed.error.as_deref(), Some("IntegrityError"));
    let bringup = aws
        .receipts()
        .get_phase(&run, Phase::Bringup)
        .await
        .unwrap()
        .unwrap();

    // Validate needs the staging the failed restore never made: `resume` refuses it
    // before starting anything (exit 2), naming the phase to run first.
    let refused = drpilot(&aws)
        .args([
            "--state-machine",
            MACHINE,
            "resume",
            &run,
            "--from",
            "validate",
            "--allow-full-drill",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("resume from restore"), "{stderr}");
    assert_eq!(ctx.run_executions(&run).await.unwrap().len(), 1);
    // Started anyway (as the console could), bringup refuses it and the execution's
    // teardown leaves the run as it was.
    start_run(
        &ctx,
        json!({"run_id": "resume-1", "start_at": "validate", "stop_after": "validate"}),
    )
    .await;
    let second = finish(&ctx, &run).await;
    assert_eq!(second.error.as_deref(), Some("InputError"));
    let cause = second.cause.unwrap_or_default();
    assert!(cause.contains("start at restore"), "{cause}");
    let after_refusal = aws
        .receipts()
        .get_phase(&run, Phase::Bringup)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after_refusal, bringup,
        "a refused execution changes nothing"
    );
    let (record, _) = aws.receipts().get_record(&run).await.unwrap().unwrap();
    assert_eq!(
        record.executions.len(),
        1,
        "the refused execution is not the run's"
    );

    // Fixed; resumed from where it failed.
    aws.put_text(BACKUP_BUCKET, &metadata_key, &good).await;
    let stdout = drpilot_ok(&aws, &["resume", &run, "--allow-full-drill"]);
    assert!(
        stdout.contains("resuming run resume-1 from restore"),
        "{stdout}"
    );

    let rec = records(&ctx, &run).await.unwrap();
    let again = rec
        .phases
        .iter()
        .find(|r| r.phase == Phase::Bringup)
        .unwrap();
    assert_eq!(*again, bringup, "bringup was not rerun");
    let summary = rec.summary.unwrap();
    assert_eq!(
        summary.status,
        RunStatus::Succeeded,
        "{:?}",
        summary.failure
    );
    assert!(summary.promoted && summary.torn_down);
    assert!(summary
        .phases
        .iter()
        .all(|p| p.status == PhaseStatus::Success));
    assert_eq!(
        summary.kickoff_at,
        bringup.started_at.min(summary.kickoff_at)
    );
    let outcomes: Vec<_> = summary
        .executions
        .iter()
        .map(|e| e.outcome.as_ref().unwrap().status)
        .collect();
    assert_eq!(outcomes, [RunStatus::Failed, RunStatus::Succeeded]);
    // The end state of an uninterrupted run: root/ holds the backup, nothing else is left.
    let root = aws.keys(TARGET_BUCKET, "root/").await;
    assert_eq!(root.len(), 30);
    assert_eq!(
        aws.get_text(TARGET_BUCKET, "root/x/y/7.json")
            .await
            .as_deref(),
        Some("{\"record\": 7}\n")
    );
    assert!(aws.keys(TARGET_BUCKET, "_staging/").await.is_empty());
    assert!(aws
        .get_text(TARGET_BUCKET, "locks/drill.lock")
        .await
        .is_none());
    assert_eq!(aws.keys(TARGET_BUCKET, "audit/promotions/").await.len(), 1);
}

/// `drpilot backup make` publishes a backup that `backup verify` passes and a run
/// restores and validates (the manifests it wrote are what validate checks against).
#[tokio::test]
async fn a_backup_made_by_drpilot_verifies_restores_and_validates() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("e2e-make");
    let ctx = stack(&aws, &tmp, false).await;
    let src = tmp.path().join("made-src");
    sh(&format!(
        "mkdir -p '{0}/deep/er' '{0}/empty' && echo one > '{0}/deep/er/1.json' && : > '{0}/zero.json' && printf 'é' > '{0}/naïve ☃.json'",
        src.display()
    ));
    let out = tmp.path().join("made-1");
    let prefix = format!("s3://{BACKUP_BUCKET}/{BACKUP_PREFIX}");
    let made = drpilot_ok(
        &aws,
        &[
            "--json",
            "backup",
            "make",
            src.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--git-sha",
            "abc123",
            "--upload",
            &prefix,
        ],
    );
    let made: Value = serde_json::from_str(&made).unwrap();
    assert_eq!(made["files"], 3, "{made}");
    let uri = format!("{prefix}made-1/");
    assert_eq!(made["uri"], uri.as_str());
    let verified = drpilot_ok(&aws, &["--json", "backup", "verify", &uri]);
    let verified: Value = serde_json::from_str(&verified).unwrap();
    assert_eq!(
        verified["verified"]["coverage"]["matching"], 3,
        "{verified}"
    );
    // Made twice into the same directory: refused, nothing overwritten.
    let again = drpilot(&aws)
        .args([
            "backup",
            "make",
            src.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a backup"));

    let run = start_run(
        &ctx,
        json!({"run_id": "made-run", "backup_uri": uri, "stop_after": "validate"}),
    )
    .await;
    finish_succeeded(&ctx, &run).await;
    let rec = records(&ctx, &run).await.unwrap();
    let validate = rec
        .phases
        .iter()
        .find(|r| r.phase == Phase::Validate)
        .unwrap();
    assert_eq!(validate.status, PhaseStatus::Success);
    assert_eq!(
        validate.details["tally"]["verified"], 3,
        "{}",
        validate.details
    );
}

async fn with_components(aws: &LocalAws, components: Value) {
    let mut profile = drpilot_testkit::test_profile();
    profile["components"] = components;
    aws.put_profile(PROFILE, &profile).await;
}

#[tokio::test]
async fn components_restore_beside_the_data_and_are_measured_against_their_own_rto() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("e2e-components");
    let ctx = stack(&aws, &tmp, false).await;
    aws.seed_database("orders-prod", true).await;
    let lambda = aws_sdk_lambda::Client::new(&aws.clients.config);
    drpilot_tools::local::emulator_function(&lambda, aws.port, "sample-verifier")
        .await
        .unwrap();
    let (site, _) = drpilot_testkit::health_page(3).await;
    with_components(
        &aws,
        json!([
            {"name": "orders", "kind": "rds_snapshot", "db_instance_identifier": "orders-prod",
             "rto_target_seconds": 600, "rpo_target_seconds": 3600, "poll_seconds": 1, "timeout_seconds": 300},
            {"name": "decode-sample", "kind": "lambda", "function": "sample-verifier", "after_restore": true,
             "parameters": {"sample": 10}, "rto_target_seconds": 600, "poll_seconds": 1, "timeout_seconds": 300},
            {"name": "storefront", "kind": "http", "url": format!("http://127.0.0.1:{site}/health"),
             "body_contains": "\"status\": \"ok\"", "rto_target_seconds": 1, "poll_seconds": 1, "timeout_seconds": 300}
        ]),
    )
    .await;
    let run = start_run(
        &ctx,
        json!({"mode": "drill", "run_id": "comp-1", "auto_promote": true, "allow_promote_bypass": true}),
    )
    .await;
    let done = finish(&ctx, &run).await;
    assert!(done.succeeded(), "{done:?}");
    let summary = aws.receipts().get_summary(&run).await.unwrap().unwrap();
    assert_eq!(summary.status, RunStatus::Succeeded);
    assert!(summary.promoted);
    let by_name = |name: &str| summary.components.iter().find(|c| c.name == name).unwrap();
    assert_eq!(summary.components.len(), 3, "{:?}", summary.components);
    for c in &summary.components {
        assert_eq!(
            c.status,
            drpilot_shared::component::ComponentStatus::Verified,
            "{c:?}"
        );
    }
    // The storefront came back after its 1 s target: marked missed, the run still succeeds.
    assert_eq!(by_name("storefront").rto_met, Some(false));
    assert!(by_name("storefront").rto_seconds.unwrap() > 1.0);
    assert_eq!(by_name("orders").rto_met, Some(true));
    assert!(by_name("orders").rpo_seconds.is_some());
    // The overall RTO is the later of the promotion and the slowest required component.
    let slowest = summary
        .components
        .iter()
        .filter_map(|c| c.rto_seconds)
        .fold(0.0, f64::max);
    assert!(summary.rto_seconds.unwrap() >= slowest, "{summary:?}");
    // The verifier decoded a sample of the staged objects against the manifests.
    let verifier = aws
        .receipts()
        .get_component(&run, "decode-sample")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(verifier.details["verdict"], "passed", "{verifier:?}");
    assert_eq!(verifier.details["details"]["sampled"], 10);
    assert_eq!(verifier.details["details"]["json_decoded"], 10);
    // What the components created is gone, and the receipts prove it.
    let orders = by_name("orders");
    assert_eq!(orders.created_resources.len(), 1);
    assert_eq!(
        orders.created_resources[0].state,
        drpilot_shared::component::ResourceState::Deleted
    );
    assert_eq!(aws.db_instances().await, vec!["orders-prod".to_owned()]);
    assert!(summary
        .phases
        .iter()
        .any(|p| p.phase == Phase::Components && p.status == PhaseStatus::Success));
    // One ComponentRecoverySeconds per component.
    let metrics = ctx
        .aws
        .cloudwatch
        .list_metrics()
        .namespace("DRPilot")
        .metric_name("ComponentRecoverySeconds")
        .send()
        .await
        .unwrap();
    let mut dimensioned: Vec<String> = metrics
        .metrics()
        .iter()
        .flat_map(|m| m.dimensions().iter())
        .filter(|d| d.name() == Some("Component"))
        .filter_map(|d| d.value().map(str::to_owned))
        .collect();
    dimensioned.sort();
    assert_eq!(dimensioned, ["decode-sample", "orders", "storefront"]);
}

#[tokio::test]
async fn a_failing_component_fails_the_run_after_the_slow_one_finishes_and_everything_is_torn_down()
{
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("e2e-components-fail");
    let ctx = stack(&aws, &tmp, false).await;
    aws.seed_database("orders-prod", true).await;
    let (slow, _) = drpilot_testkit::health_page(4).await;
    let (down, _) = drpilot_testkit::health_page(u32::MAX).await;
    with_components(
        &aws,
        json!([
            {"name": "orders", "kind": "rds_snapshot", "db_instance_identifier": "orders-prod",
             "rto_target_seconds": 600, "poll_seconds": 1, "timeout_seconds": 300},
            {"name": "slow", "kind": "http", "url": format!("http://127.0.0.1:{slow}/"), "rto_target_seconds": 60, "poll_seconds": 1, "timeout_seconds": 300},
            {"name": "down", "kind": "http", "url": format!("http://127.0.0.1:{down}/"), "rto_target_seconds": 60,
             "poll_seconds": 1, "timeout_seconds": 2}
        ]),
    )
    .await;
    let run = start_run(&ctx, json!({"mode": "drill", "run_id": "comp-2"})).await;
    let done = finish(&ctx, &run).await;
    assert!(!done.succeeded());
    assert_eq!(done.error.as_deref(), Some("ServiceError"), "{done:?}");
    let summary = aws.receipts().get_summary(&run).await.unwrap().unwrap();
    assert_eq!(summary.status, RunStatus::Failed);
    let failure = summary.failure.clone().unwrap();
    assert_eq!(failure.phase, Some(Phase::Components));
    assert!(failure.cause.contains("down"), "{failure:?}");
    let status = |name: &str| {
        summary
            .components
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .status
    };
    use drpilot_shared::component::ComponentStatus;
    assert_eq!(status("slow"), ComponentStatus::Verified);
    assert_eq!(status("down"), ComponentStatus::Failed);
    assert_eq!(status("orders"), ComponentStatus::Verified);
    // Nothing after the failure ran; everything was torn down.
    assert!(summary
        .phases
        .iter()
        .any(|p| p.phase == Phase::Validate && p.status == PhaseStatus::Skipped));
    assert!(summary.torn_down);
    assert_eq!(aws.db_instances().await, vec!["orders-prod".to_owned()]);
    assert!(aws.keys(TARGET_BUCKET, "_staging/comp-2/").await.is_empty());
}

#[tokio::test]
async fn a_resource_teardown_cannot_delete_fails_it_by_name_and_a_rerun_ends_clean() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("e2e-components-delete");
    let ctx = stack(&aws, &tmp, false).await;
    aws.seed_database("orders-prod", true).await;
    with_components(
        &aws,
        json!([{"name": "orders", "kind": "rds_snapshot", "db_instance_identifier": "orders-prod",
                "rto_target_seconds": 600, "poll_seconds": 1, "timeout_seconds": 300}]),
    )
    .await;
    let run = start_run(
        &ctx,
        json!({"mode": "drill", "run_id": "del-1", "stop_after": "components", "teardown": false}),
    )
    .await;
    assert!(finish(&ctx, &run).await.succeeded());
    assert_eq!(
        aws.db_instances().await,
        vec!["orders-drpilot-del-1".to_owned(), "orders-prod".to_owned()]
    );
    let rds = aws.clients.rds();
    let protect = |on: bool| {
        rds.modify_db_instance()
            .db_instance_identifier("orders-drpilot-del-1")
            .deletion_protection(on)
            .apply_immediately(true)
            .send()
    };
    protect(true).await.unwrap();
    let out = drpilot(&aws)
        .args([
            "--state-machine",
            MACHINE,
            "resume",
            "del-1",
            "--from",
            "teardown",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let summary = aws.receipts().get_summary("del-1").await.unwrap().unwrap();
    assert_eq!(summary.status, RunStatus::Failed);
    let failure = summary.failure.unwrap();
    assert_eq!(failure.phase, Some(Phase::Teardown));
    assert!(
        failure
            .cause
            .contains("RDS DB instance orders-drpilot-del-1 of component orders"),
        "{failure:?}"
    );
    assert_eq!(aws.db_instances().await.len(), 2);
    // Fixed, and teardown run again: it deletes it, proves it gone, and the run ends clean.
    protect(false).await.unwrap();
    drpilot_ok(&aws, &["resume", "del-1", "--from", "teardown"]);
    let summary = aws.receipts().get_summary("del-1").await.unwrap().unwrap();
    assert_eq!(summary.status, RunStatus::Succeeded, "{summary:?}");
    assert_eq!(aws.db_instances().await, vec!["orders-prod".to_owned()]);
    assert_eq!(
        summary.components[0].created_resources[0].state,
        drpilot_shared::component::ResourceState::Deleted
    );
}
