//! `aws_backup` components. The local emulator has no AWS Backup restore jobs, so the
//! Backup client answers from aws-smithy-mocks with the API's own types, while everything
//! else (receipts, the restored RDS instance it tags, teardown's deletion) is the emulator:
//! the success, failure, timeout and cleanup paths.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::sync::{Arc, Mutex};

use aws_sdk_backup::operation::describe_restore_job::DescribeRestoreJobOutput;
use aws_sdk_backup::operation::get_recovery_point_restore_metadata::GetRecoveryPointRestoreMetadataOutput;
use aws_sdk_backup::operation::list_recovery_points_by_backup_vault::ListRecoveryPointsByBackupVaultOutput;
use aws_sdk_backup::operation::put_restore_validation_result::PutRestoreValidationResultOutput;
use aws_sdk_backup::operation::start_restore_job::StartRestoreJobOutput;
use aws_sdk_backup::types::{RecoveryPointByBackupVault, RecoveryPointStatus, RestoreJobStatus};
use aws_sdk_backup::Client;
use aws_smithy_mocks::{mock, MockResponseInterceptor, Rule, RuleMode};
use chrono::Utc;
use components::{Answer, Components, ComponentsRequest, Step};
use drpilot_shared::component::{ComponentStatus, ResourceState};
use drpilot_shared::run::RunContext;
use drpilot_testkit::{run_context, test_profile, LocalAws, PROFILE};
use serde_json::json;

const SOURCE: &str = "arn:aws:rds:us-east-1:123456789012:db:orders";
const POINT: &str = "arn:aws:rds:us-east-1:123456789012:snapshot:awsbackup:job-0001";
const VAULT: &str = "drpilot-test-vault";
const ROLE: &str = "arn:aws:iam::123456789012:role/drpilot-backup-restore";

/// A Backup client answering from `rules`, its calls recorded in the call ledger as
/// `function`'s (so the permission check sees them as it sees the emulator's).
fn backup_client(rules: &[&Rule], function: &'static str) -> Client {
    let mut interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
    for rule in rules {
        interceptor = interceptor.with_rule(rule);
    }
    let config = aws_sdk_backup::Config::builder()
        .behavior_version(aws_sdk_backup::config::BehaviorVersion::latest())
        .region(aws_sdk_backup::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_backup::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .http_client(aws_smithy_mocks::create_mock_http_client())
        .interceptor(interceptor);
    let config = match drpilot_shared::ledger::CallLedger::from_env(function) {
        Some(ledger) => config.interceptor(ledger),
        None => config,
    };
    Client::from_conf(config.build())
}

/// The newest completed recovery point (an older one and a running one beside it).
fn listing() -> Rule {
    let at = |secs: i64| aws_smithy_types::DateTime::from_secs(Utc::now().timestamp() - secs);
    mock!(Client::list_recovery_points_by_backup_vault)
        .match_requests(|r| {
            r.backup_vault_name() == Some(VAULT) && r.by_resource_arn() == Some(SOURCE)
        })
        .sequence()
        .output(move || {
            ListRecoveryPointsByBackupVaultOutput::builder()
                .recovery_points(
                    RecoveryPointByBackupVault::builder()
                        .recovery_point_arn("arn:old")
                        .status(RecoveryPointStatus::Completed)
                        .creation_date(at(7200))
                        .build(),
                )
                .recovery_points(
                    RecoveryPointByBackupVault::builder()
                        .recovery_point_arn(POINT)
                        .status(RecoveryPointStatus::Completed)
                        .creation_date(at(600))
                        .build(),
                )
                .recovery_points(
                    RecoveryPointByBackupVault::builder()
                        .recovery_point_arn("arn:running")
                        .status(RecoveryPointStatus::Partial)
                        .creation_date(at(10))
                        .build(),
                )
                .build()
        })
        .repeatedly()
        .build()
}

fn metadata() -> Rule {
    mock!(Client::get_recovery_point_restore_metadata)
        .match_requests(|r| r.recovery_point_arn() == Some(POINT))
        .sequence()
        .output(|| {
            GetRecoveryPointRestoreMetadataOutput::builder()
                .restore_metadata("DBInstanceClass", "db.t4g.micro")
                .restore_metadata("DBInstanceIdentifier", "orders")
                .restore_metadata("deletionprotection", "true")
                .build()
        })
        .repeatedly()
        .build()
}

/// StartRestoreJob, keeping the metadata it was sent.
fn start(sent: Arc<Mutex<Vec<String>>>) -> Rule {
    mock!(Client::start_restore_job)
        .match_requests(move |r| {
            let id = r
                .metadata()
                .and_then(|m| m.get("DBInstanceIdentifier"))
                .cloned()
                .unwrap_or_default();
            let protection = r
                .metadata()
                .and_then(|m| m.get("DeletionProtection"))
                .cloned()
                .unwrap_or_default();
            sent.lock().unwrap().push(format!(
                "{} {} {id} DeletionProtection={protection}",
                r.recovery_point_arn().unwrap_or_default(),
                r.iam_role_arn().unwrap_or_default()
            ));
            true
        })
        .sequence()
        .output(|| {
            StartRestoreJobOutput::builder()
                .restore_job_id("restore-job-1")
                .build()
        })
        .repeatedly()
        .build()
}

fn job(statuses: &'static [(RestoreJobStatus, &'static str)], created: &'static str) -> Rule {
    let mut sequence = mock!(Client::describe_restore_job).sequence();
    for (status, message) in statuses {
        let (status, message) = (status.clone(), *message);
        sequence = sequence.output(move || {
            DescribeRestoreJobOutput::builder()
                .restore_job_id("restore-job-1")
                .status(status.clone())
                .status_message(message)
                .percent_done(if status == RestoreJobStatus::Completed {
                    "100.00%"
                } else {
                    "40.00%"
                })
                .backup_size_in_bytes(21_474_836_480)
                .expected_completion_time_minutes(12)
                .created_resource_arn(created)
                .resource_type("RDS")
                .build()
        });
    }
    sequence.repeatedly().build()
}

fn validation(reported: Arc<Mutex<Vec<String>>>) -> Rule {
    mock!(Client::put_restore_validation_result)
        .match_requests(move |r| {
            reported.lock().unwrap().push(format!(
                "{} {}",
                r.restore_job_id().unwrap_or_default(),
                r.validation_status()
                    .map(|s| s.as_str())
                    .unwrap_or_default()
            ));
            true
        })
        .sequence()
        .output(|| PutRestoreValidationResultOutput::builder().build())
        .repeatedly()
        .build()
}

async fn setup(aws: &LocalAws) {
    aws.standard_setup().await;
    let mut profile = test_profile();
    profile["components"] = json!([{"name": "orders", "kind": "aws_backup", "vault": VAULT, "resource_arn": SOURCE,
        "iam_role_arn": ROLE, "rto_target_seconds": 900, "rpo_target_seconds": 3600, "poll_seconds": 1, "timeout_seconds": 600}]);
    aws.put_profile(PROFILE, &profile).await;
}

async fn step(function: &Components, run: &RunContext, poll: bool) -> Step {
    let request = if poll {
        ComponentsRequest::Poll {
            run: run.clone(),
            component: "orders".into(),
            retry_count: 0,
        }
    } else {
        ComponentsRequest::Start {
            run: run.clone(),
            component: "orders".into(),
            retry_count: 0,
        }
    };
    match function.handle(request).await.unwrap() {
        Answer::Step(step) => step,
        other => panic!("{other:?}"),
    }
}

fn with_backup(aws: &LocalAws, backup: Client) -> Components {
    let mut function = Components::new(aws.clients.clone());
    function.kinds.backup = backup;
    function
}

#[tokio::test]
async fn a_completed_restore_job_is_verified_reported_tagged_and_cleaned_up() {
    let aws = LocalAws::start().await;
    setup(&aws).await;
    let created = "arn:aws:rds:us-east-1:123456789012:db:orders-drpilot-bk-1";
    let (sent, reported) = (Arc::default(), Arc::default());
    let rules = [
        listing(),
        metadata(),
        start(Arc::clone(&sent)),
        job(
            &[
                (RestoreJobStatus::Running, "restoring"),
                (RestoreJobStatus::Completed, "done"),
            ],
            created,
        ),
        validation(Arc::clone(&reported)),
    ];
    let function = with_backup(
        &aws,
        backup_client(&rules.iter().collect::<Vec<_>>(), "components"),
    );
    let run = run_context("bk-1", "b1");
    let plan = function
        .handle(ComponentsRequest::Plan {
            run: run.clone(),
            retry_count: 0,
        })
        .await
        .unwrap();
    assert!(
        matches!(plan, Answer::Plan(ref p) if p.items.len() == 1),
        "{plan:?}"
    );
    assert_eq!(
        step(&function, &run, false).await.status,
        ComponentStatus::Running
    );
    // The newest completed point, the run's role, and the run-named instance (never the
    // source's name the point's own metadata carries).
    assert_eq!(
        *sent.lock().unwrap(),
        vec![format!(
            "{POINT} {ROLE} orders-drpilot-bk-1 DeletionProtection=false"
        )]
    );
    // What AWS Backup restored: the run-named instance, in the emulator's RDS.
    aws.seed_database("orders-drpilot-bk-1", false).await;
    let running = step(&function, &run, true).await;
    assert_eq!(running.status, ComponentStatus::Running);
    assert!(
        running
            .reason
            .as_deref()
            .unwrap()
            .contains("RUNNING (40.00% done)"),
        "{running:?}"
    );
    let done = step(&function, &run, true).await;
    assert_eq!(done.status, ComponentStatus::Verified, "{done:?}");
    assert_eq!(
        *reported.lock().unwrap(),
        vec!["restore-job-1 SUCCESSFUL".to_owned()]
    );
    let receipt = aws
        .receipts()
        .get_component("bk-1", "orders")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.details["job"]["status"], "COMPLETED");
    assert_eq!(
        receipt.details["job"]["backup_size_in_bytes"],
        21_474_836_480_i64
    );
    assert_eq!(receipt.details["job"]["created_resource_arn"], created);
    assert_eq!(receipt.details["validation_reported"], "SUCCESSFUL");
    // RPO: kickoff minus the point's creation, ten minutes before.
    let rpo = receipt.rpo_seconds.unwrap();
    assert!((590.0..=620.0).contains(&rpo), "{rpo}");
    // Tagged for the run, so teardown deletes it; and teardown proves it gone.
    let rds = aws.clients.rds();
    let instance = drpilot_shared::restored::rds_instance(&rds, "orders-drpilot-bk-1")
        .await
        .unwrap()
        .unwrap();
    let owner = drpilot_shared::restored::Owner {
        run_id: "bk-1",
        profile: PROFILE,
    };
    assert!(owner.owns(&instance));
    let mut resource = receipt.created_resources[0].clone();
    assert_eq!(resource.restore_job.as_deref(), Some("restore-job-1"));
    // Teardown's cleanup, with teardown's clients.
    let teardown = aws.clients.for_function("teardown");
    drpilot_shared::restored::clean_up(
        &teardown.rds(),
        &backup_client(&rules.iter().collect::<Vec<_>>(), "teardown"),
        owner,
        Some("bk-1.1"),
        &mut resource,
        Utc::now(),
    )
    .await;
    assert_eq!(resource.state, ResourceState::Deleted, "{resource:?}");
    assert!(
        drpilot_shared::restored::rds_instance(&rds, "orders-drpilot-bk-1")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_failed_restore_job_fails_the_component_with_its_status_message() {
    let aws = LocalAws::start().await;
    setup(&aws).await;
    let rules = [
        listing(),
        metadata(),
        start(Arc::default()),
        job(
            &[(
                RestoreJobStatus::Failed,
                "Insufficient capacity for db.t4g.micro",
            )],
            "",
        ),
        validation(Arc::default()),
    ];
    let function = with_backup(
        &aws,
        backup_client(&rules.iter().collect::<Vec<_>>(), "components"),
    );
    let run = run_context("bk-2", "b1");
    step(&function, &run, false).await;
    let failed = step(&function, &run, true).await;
    assert_eq!(failed.status, ComponentStatus::Failed);
    let reason = failed.reason.unwrap();
    assert!(
        reason.contains("restore-job-1 FAILED") && reason.contains("Insufficient capacity"),
        "{reason}"
    );
    let receipt = aws
        .receipts()
        .get_component("bk-2", "orders")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.error.as_deref(), Some("ServiceError"));
    // What it may have created is still on record for teardown.
    assert_eq!(receipt.created_resources.len(), 1);
}

#[tokio::test]
async fn a_restore_job_past_the_components_timeout_fails_it() {
    let aws = LocalAws::start().await;
    setup(&aws).await;
    let rules = [
        listing(),
        metadata(),
        start(Arc::default()),
        job(&[(RestoreJobStatus::Running, "restoring")], ""),
        validation(Arc::default()),
    ];
    let function = with_backup(
        &aws,
        backup_client(&rules.iter().collect::<Vec<_>>(), "components"),
    );
    let run = run_context("bk-3", "b1");
    step(&function, &run, false).await;
    assert_eq!(
        step(&function, &run, true).await.status,
        ComponentStatus::Running
    );
    // Its deadline passes.
    let store = aws.receipts();
    let mut receipt = store
        .get_component("bk-3", "orders")
        .await
        .unwrap()
        .unwrap();
    receipt.deadline_at = Utc::now() - chrono::TimeDelta::seconds(1);
    store.put_component(&receipt).await.unwrap();
    let timed_out = step(&function, &run, true).await;
    assert_eq!(timed_out.status, ComponentStatus::Failed);
    let reason = timed_out.reason.unwrap();
    assert!(
        reason.contains("not verified within timeout_seconds") && reason.contains("RUNNING"),
        "{reason}"
    );
    // The job still runs (AWS Backup cannot stop it): teardown waits for it to end before
    // it looks for what it creates, rather than calling nothing there "deleted".
    let receipt = store
        .get_component("bk-3", "orders")
        .await
        .unwrap()
        .unwrap();
    let mut resource = receipt.created_resources[0].clone();
    let owner = drpilot_shared::restored::Owner {
        run_id: "bk-3",
        profile: PROFILE,
    };
    drpilot_shared::restored::clean_up(
        &aws.clients.for_function("teardown").rds(),
        &backup_client(&rules.iter().collect::<Vec<_>>(), "teardown"),
        owner,
        Some("bk-3.1"),
        &mut resource,
        Utc::now(),
    )
    .await;
    assert_eq!(resource.state, ResourceState::Present, "{resource:?}");
    let detail = resource.detail.unwrap();
    assert!(
        detail.contains("waiting for restore job restore-job-1 (RUNNING)"),
        "{detail}"
    );
}
