//! The components phase against the local emulator (RDS snapshot restores, SSM Run
//! Command, Lambda and HTTP), and with aws-smithy-mocks where the emulator has nothing
//! (AWS Backup restore jobs): every step through the real handler and the real SDK clients.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::sync::atomic::Ordering;

use chrono::Utc;
use components::{Answer, Components, ComponentsRequest, Plan, Step};
use drpilot_shared::component::{
    ComponentStatus, CreatedResource, ResourceState, RestoredResource,
};
use drpilot_shared::details::ComponentsDetails;
use drpilot_shared::profile::Profile;
use drpilot_shared::receipt::PhaseStatus;
use drpilot_shared::run::RunContext;
use drpilot_shared::{ErrorKind, Phase};
use drpilot_testkit::{run_context, test_profile, LocalAws, PROFILE};
use serde_json::{json, Value};

const SOURCE_DB: &str = "orders-prod";

fn profile_with(components: Value) -> Value {
    let mut profile = test_profile();
    profile["components"] = components;
    profile
}

async fn with_profile(aws: &LocalAws, components: Value) {
    aws.standard_setup().await;
    aws.put_profile(PROFILE, &profile_with(components)).await;
}

fn run(id: &str) -> RunContext {
    run_context(id, "b1")
}

async fn plan(function: &Components, run: &RunContext) -> drpilot_shared::Result<Plan> {
    match function
        .handle(ComponentsRequest::Plan {
            run: run.clone(),
            retry_count: 0,
        })
        .await?
    {
        Answer::Plan(plan) => Ok(plan),
        other => panic!("plan answered {other:?}"),
    }
}

async fn step(function: &Components, run: &RunContext, name: &str, poll: bool) -> Step {
    let request = if poll {
        ComponentsRequest::Poll {
            run: run.clone(),
            component: name.into(),
            retry_count: 0,
        }
    } else {
        ComponentsRequest::Start {
            run: run.clone(),
            component: name.into(),
            retry_count: 0,
        }
    };
    match function.handle(request).await.unwrap() {
        Answer::Step(step) => step,
        other => panic!("step answered {other:?}"),
    }
}

/// Starts and polls `name` until it has a verdict (at most `polls` polls).
async fn drive(function: &Components, run: &RunContext, name: &str, polls: u32) -> Step {
    let mut current = step(function, run, name, false).await;
    for _ in 0..polls {
        if current.status != ComponentStatus::Running {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        current = step(function, run, name, true).await;
    }
    current
}

async fn finish(
    function: &Components,
    run: &RunContext,
) -> drpilot_shared::Result<drpilot_shared::run::PhaseOutput> {
    match function
        .handle(ComponentsRequest::Finish {
            run: run.clone(),
            retry_count: 0,
        })
        .await?
    {
        Answer::Finished(output) => Ok(output),
        other => panic!("finish answered {other:?}"),
    }
}

fn profile_error(components: Value) -> String {
    let text = profile_with(components).to_string();
    let err = Profile::from_json("test", &text).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InputError, "{err}");
    err.message
}

#[test]
fn bad_components_are_input_errors_naming_the_component_and_field() {
    let rds = |name: &str| json!({"name": name, "kind": "rds_snapshot", "db_instance_identifier": SOURCE_DB, "rto_target_seconds": 60});
    // Unknown kind.
    let message =
        profile_error(json!([{"name": "pg", "kind": "postgres", "rto_target_seconds": 60}]));
    assert!(
        message.contains("components[0]")
            && message.contains("\"pg\"")
            && message.contains("kind: expected one of rds_snapshot"),
        "{message}"
    );
    // A missing field.
    let message =
        profile_error(json!([{"name": "pg", "kind": "rds_snapshot", "rto_target_seconds": 60}]));
    assert!(
        message.contains("\"pg\"") && message.contains("db_instance_identifier"),
        "{message}"
    );
    // An ill-typed field.
    let message = profile_error(
        json!([{"name": "api", "kind": "http", "url": "http://x/", "expected_status": "ok", "rto_target_seconds": 60}]),
    );
    assert!(
        message.contains("\"api\"") && message.contains("expected_status"),
        "{message}"
    );
    // A field the kind does not have.
    let message = profile_error(
        json!([{"name": "api", "kind": "http", "url": "http://x/", "rto_target_seconds": 60, "retries": 3}]),
    );
    assert!(
        message.contains("\"api\"") && message.contains("retries"),
        "{message}"
    );
    // Duplicate names, and names that would restore under one identifier.
    let message = profile_error(json!([rds("pg"), rds("pg")]));
    assert!(
        message.contains("components[1].name") && message.contains("unique"),
        "{message}"
    );
    let message = profile_error(json!([rds("pg"), rds("PG")]));
    assert!(
        message.contains("components[1].name") && message.contains("same identifier"),
        "{message}"
    );
    // Field checks serde cannot make.
    let message = profile_error(
        json!([{"name": "api", "kind": "http", "url": "ftp://x/", "rto_target_seconds": 60}]),
    );
    assert!(message.contains("components[0] (\"api\").url"), "{message}");
    let message = profile_error(
        json!([{"name": "t", "kind": "ssm_command", "parameters": {"commands": ["x"]}, "rto_target_seconds": 60}]),
    );
    assert!(message.contains("(\"t\").instance_ids"), "{message}");
    let message = profile_error(
        json!([{"name": "b", "kind": "aws_backup", "vault": "v", "resource_arn": "arn:aws:dynamodb:us-east-1:123456789012:table/t", "iam_role_arn": "arn:aws:iam::123456789012:role/r", "rto_target_seconds": 60}]),
    );
    assert!(
        message.contains("(\"b\").resource_arn") && message.contains("dynamodb"),
        "{message}"
    );
    let message = profile_error(
        json!([{"name": "b", "kind": "aws_backup", "vault": "v", "resource_arn": "arn:aws:rds:us-east-1:123456789012:db:orders", "iam_role_arn": "arn:aws:iam::123456789012:role/r", "restore_metadata": {"DBInstanceIdentifier": "orders"}, "rto_target_seconds": 60}]),
    );
    assert!(
        message.contains("restore_metadata.DBInstanceIdentifier")
            && message.contains("reuse the source"),
        "{message}"
    );
    // Polls a single execution's history could not hold.
    let message = profile_error(json!([{"name": "api", "kind": "http", "url": "http://x/",
        "rto_target_seconds": 60, "poll_seconds": 1, "timeout_seconds": 86400}]));
    assert!(
        message.contains("86400 polls") && message.contains("poll less often"),
        "{message}"
    );
    let message = profile_error(
        json!([{"name": "api", "kind": "http", "url": "http://x/", "rto_target_seconds": 60, "rpo_target_seconds": 60}]),
    );
    assert!(
        message.contains("(\"api\").rpo_target_seconds"),
        "{message}"
    );
}

#[tokio::test]
async fn a_restore_target_reusing_the_source_or_an_unreachable_verifier_stops_the_run_before_anything_is_created(
) {
    let aws = LocalAws::start().await;
    // The run-named target of component "orders" in run "prod" is orders-drpilot-prod:
    // the source itself here.
    aws.seed_database("orders-drpilot-prod", true).await;
    with_profile(
        &aws,
        json!([
            {"name": "api", "kind": "http", "url": "http://127.0.0.1:9/", "rto_target_seconds": 60},
            {"name": "orders", "kind": "rds_snapshot", "db_instance_identifier": "orders-drpilot-prod", "rto_target_seconds": 60}
        ]),
    )
    .await;
    let function = Components::new(aws.clients.clone());
    let before = aws.db_instances().await;
    let err = plan(&function, &run("prod")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InputError, "{err}");
    assert!(
        err.message.contains("component \"orders\"")
            && err.message.contains("db_instance_identifier")
            && err.message.contains("reuse the source"),
        "{err}"
    );
    assert_eq!(aws.db_instances().await, before);
    assert!(aws
        .keys(
            drpilot_testkit::EVIDENCE_BUCKET,
            "drpilot/receipts/runs/prod/components/"
        )
        .await
        .is_empty());
    let receipt = aws
        .receipts()
        .get_phase("prod", Phase::Components)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.status, PhaseStatus::Failed);
    assert_eq!(receipt.error_name(), Some("InputError"));

    with_profile(
        &aws,
        json!([{"name": "check", "kind": "lambda", "function": "arn:aws:lambda:us-east-1:123456789012:function:team-verifier", "rto_target_seconds": 60}]),
    )
    .await;
    let err = plan(&function, &run("verifier-1")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InputError, "{err}");
    assert!(
        err.message.contains("component \"check\"")
            && err.message.contains("function: the verifier")
            && err.message.contains("cannot be reached"),
        "{err}"
    );
}

#[tokio::test]
async fn an_rds_snapshot_restores_once_to_a_run_named_instance_with_rto_and_rpo() {
    let aws = LocalAws::start().await;
    aws.seed_database(SOURCE_DB, true).await;
    with_profile(
        &aws,
        json!([{"name": "orders", "kind": "rds_snapshot", "db_instance_identifier": SOURCE_DB, "rto_target_seconds": 600, "rpo_target_seconds": 3600, "poll_seconds": 1}]),
    )
    .await;
    let function = Components::new(aws.clients.clone());
    let run = run("rds-1");
    let planned = plan(&function, &run).await.unwrap();
    assert_eq!(planned.items.len(), 1);
    assert_eq!(planned.max_concurrency, 4);
    let done = drive(&function, &run, "orders", 5).await;
    assert_eq!(done.status, ComponentStatus::Verified, "{done:?}");
    let receipt = aws
        .receipts()
        .get_component("rds-1", "orders")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.kind, "rds_snapshot");
    assert!(
        receipt.rto.seconds.is_some() && receipt.rto.met == Some(true),
        "{receipt:?}"
    );
    // The snapshot was taken just now, after the test's kickoff: a small RPO either way.
    assert!(receipt.rpo_seconds.unwrap().abs() < 120.0, "{receipt:?}");
    assert!(
        receipt.details["snapshot"]
            .as_str()
            .unwrap()
            .contains(SOURCE_DB),
        "{receipt:?}"
    );
    assert_eq!(
        receipt.created_resources,
        vec![CreatedResource {
            resource: RestoredResource::RdsDbInstance {
                identifier: "orders-drpilot-rds-1".into()
            },
            state: ResourceState::Present,
            detail: None,
            checked_at: None,
            restore_job: None,
            delete_requested_at: None,
            checked_by: None,
        }]
    );
    assert_eq!(
        aws.db_instances().await,
        vec!["orders-drpilot-rds-1".to_owned(), SOURCE_DB.to_owned()]
    );
    // A retried start finds the verdict, and restores nothing twice.
    let again = step(&function, &run, "orders", false).await;
    assert_eq!(again.status, ComponentStatus::Verified);
    assert_eq!(aws.db_instances().await.len(), 2);
    let output = finish(&function, &run).await.unwrap();
    assert_eq!(output.status, PhaseStatus::Success);
    let details: ComponentsDetails = serde_json::from_value(output.details).unwrap();
    assert_eq!((details.verified, details.failed), (1, 0));
}

#[tokio::test]
async fn teardowns_cleanup_deletes_proves_gone_and_retries_what_an_earlier_execution_could_not() {
    let aws = LocalAws::start().await;
    aws.seed_database(SOURCE_DB, true).await;
    with_profile(
        &aws,
        json!([{"name": "orders", "kind": "rds_snapshot", "db_instance_identifier": SOURCE_DB, "rto_target_seconds": 600, "poll_seconds": 1}]),
    )
    .await;
    let function = Components::new(aws.clients.clone());
    let run = run("clean-1");
    plan(&function, &run).await.unwrap();
    assert_eq!(
        drive(&function, &run, "orders", 3).await.status,
        ComponentStatus::Verified
    );
    let rds = aws.clients.rds();
    let backup = aws.clients.backup();
    let owner = drpilot_shared::restored::Owner {
        run_id: "clean-1",
        profile: PROFILE,
    };
    let target = "orders-drpilot-clean-1";
    // Someone protects the drill's copy: teardown cannot delete it, and says which and why.
    rds.modify_db_instance()
        .db_instance_identifier(target)
        .deletion_protection(true)
        .apply_immediately(true)
        .send()
        .await
        .unwrap();
    let mut receipt = aws
        .receipts()
        .get_component("clean-1", "orders")
        .await
        .unwrap()
        .unwrap();
    let resource = &mut receipt.created_resources[0];
    drpilot_shared::restored::clean_up(
        &rds,
        &backup,
        owner,
        Some("clean-1.1"),
        resource,
        Utc::now(),
    )
    .await;
    assert_eq!(resource.state, ResourceState::DeleteFailed, "{resource:?}");
    assert!(
        resource
            .detail
            .as_deref()
            .unwrap()
            .contains("DeleteDBInstance orders-drpilot-clean-1"),
        "{resource:?}"
    );
    // The same execution's teardown does not try again: it is settled, and fails the run.
    drpilot_shared::restored::clean_up(
        &rds,
        &backup,
        owner,
        Some("clean-1.1"),
        resource,
        Utc::now(),
    )
    .await;
    assert_eq!(resource.state, ResourceState::DeleteFailed);
    // Fixed; the next execution's teardown deletes it and proves it gone.
    rds.modify_db_instance()
        .db_instance_identifier(target)
        .deletion_protection(false)
        .apply_immediately(true)
        .send()
        .await
        .unwrap();
    drpilot_shared::restored::clean_up(
        &rds,
        &backup,
        owner,
        Some("clean-1.2"),
        resource,
        Utc::now(),
    )
    .await;
    assert_eq!(resource.state, ResourceState::Deleted, "{resource:?}");
    assert_eq!(aws.db_instances().await, vec![SOURCE_DB.to_owned()]);
    // Another run's instance of the same name is never deleted.
    let mut foreign = CreatedResource::new(RestoredResource::RdsDbInstance {
        identifier: SOURCE_DB.into(),
    });
    rds.add_tags_to_resource()
        .resource_name(format!("arn:aws:rds:us-east-1:123456789012:db:{SOURCE_DB}"))
        .tags(
            aws_sdk_rds::types::Tag::builder()
                .key("drpilot:run-id")
                .value("someone-else")
                .build(),
        )
        .send()
        .await
        .unwrap();
    drpilot_shared::restored::clean_up(
        &rds,
        &backup,
        owner,
        Some("clean-1.2"),
        &mut foreign,
        Utc::now(),
    )
    .await;
    assert_eq!(foreign.state, ResourceState::DeleteFailed);
    assert!(
        foreign
            .detail
            .as_deref()
            .unwrap()
            .contains("another's (run someone-else"),
        "{foreign:?}"
    );
    assert_eq!(aws.db_instances().await, vec![SOURCE_DB.to_owned()]);
}

#[tokio::test]
async fn an_ssm_command_is_sent_to_the_instances_and_each_invocation_recorded() {
    let aws = LocalAws::start().await;
    with_profile(
        &aws,
        json!([{"name": "postgres", "kind": "ssm_command", "instance_ids": ["i-0123456789abcdef0"],
                "parameters": {"commands": ["restore-test.sh postgres"]}, "rto_target_seconds": 300, "poll_seconds": 1}]),
    )
    .await;
    let function = Components::new(aws.clients.clone());
    let run = run("ssm-1");
    plan(&function, &run).await.unwrap();
    let started = step(&function, &run, "postgres", false).await;
    assert_eq!(started.status, ComponentStatus::Running);
    assert!(
        started.reason.as_deref().unwrap().contains("sent"),
        "{started:?}"
    );
    let done = step(&function, &run, "postgres", true).await;
    assert_eq!(done.status, ComponentStatus::Verified, "{done:?}");
    let receipt = aws
        .receipts()
        .get_component("ssm-1", "postgres")
        .await
        .unwrap()
        .unwrap();
    let invocation = &receipt.details["invocations"][0];
    assert_eq!(invocation["instance_id"], "i-0123456789abcdef0");
    assert_eq!(invocation["status"], "Success");
    assert_eq!(invocation["response_code"], 0);
    // What was asked for, as SSM recorded it.
    let command_id = receipt.state["command_id"].as_str().unwrap();
    let sent = aws
        .clients
        .ssm
        .list_commands()
        .command_id(command_id)
        .send()
        .await
        .unwrap();
    let command = &sent.commands()[0];
    assert_eq!(command.document_name(), Some("AWS-RunShellScript"));
    assert_eq!(
        command.parameters().unwrap()["commands"],
        vec!["restore-test.sh postgres".to_owned()]
    );
    assert!(command.comment().unwrap().contains("ssm-1"));
    assert!(receipt.created_resources.is_empty());
}

#[tokio::test]
async fn an_http_check_polls_until_the_service_answers_and_fails_at_its_timeout() {
    let aws = LocalAws::start().await;
    let (slow, asked) = drpilot_testkit::health_page(2).await;
    let (never, _) = drpilot_testkit::health_page(u32::MAX).await;
    with_profile(
        &aws,
        json!([
            {"name": "api", "kind": "http", "url": format!("http://127.0.0.1:{slow}/health"), "body_contains": "\"status\": \"ok\"", "rto_target_seconds": 60, "poll_seconds": 1},
            {"name": "down", "kind": "http", "url": format!("http://127.0.0.1:{never}/health"), "rto_target_seconds": 1, "poll_seconds": 1, "timeout_seconds": 1}
        ]),
    )
    .await;
    let function = Components::new(aws.clients.clone());
    let run = run("http-1");
    plan(&function, &run).await.unwrap();
    let api = drive(&function, &run, "api", 10).await;
    assert_eq!(api.status, ComponentStatus::Verified, "{api:?}");
    assert_eq!(asked.load(Ordering::SeqCst), 3);
    let down = drive(&function, &run, "down", 10).await;
    assert_eq!(down.status, ComponentStatus::Failed, "{down:?}");
    let reason = down.reason.unwrap();
    assert!(
        reason.contains("not verified within timeout_seconds (1 s)")
            && reason.contains("answered 503"),
        "{reason}"
    );
    let err = finish(&function, &run).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::ServiceError, "{err}");
    assert!(err.message.contains("down"), "{err}");
    let receipt = aws
        .receipts()
        .get_phase("http-1", Phase::Components)
        .await
        .unwrap()
        .unwrap();
    let details: ComponentsDetails = receipt.details().unwrap();
    assert_eq!((details.verified, details.failed), (1, 1));
}

#[tokio::test]
async fn a_dry_run_checks_every_component_and_starts_none() {
    let aws = LocalAws::start().await;
    aws.seed_database(SOURCE_DB, true).await;
    with_profile(
        &aws,
        json!([{"name": "orders", "kind": "rds_snapshot", "db_instance_identifier": SOURCE_DB, "rto_target_seconds": 600}]),
    )
    .await;
    let function = Components::new(aws.clients.clone());
    let mut run = run("dry-1");
    run.input.dry_run = true;
    let planned = plan(&function, &run).await.unwrap();
    assert!(planned.items.is_empty());
    let output = finish(&function, &run).await.unwrap();
    let details: ComponentsDetails = serde_json::from_value(output.details).unwrap();
    assert_eq!(details.checked.len(), 1);
    assert!(
        details.checked[0].contains("would restore snapshot"),
        "{details:?}"
    );
    assert_eq!(aws.db_instances().await, vec![SOURCE_DB.to_owned()]);
}

#[tokio::test]
async fn a_later_execution_of_a_held_run_reuses_its_restore_and_its_snapshot() {
    let aws = LocalAws::start().await;
    aws.seed_database(SOURCE_DB, true).await;
    with_profile(
        &aws,
        json!([{"name": "orders", "kind": "rds_snapshot", "db_instance_identifier": SOURCE_DB,
                "rto_target_seconds": 600, "rpo_target_seconds": 3600, "poll_seconds": 1, "timeout_seconds": 60}]),
    )
    .await;
    let function = Components::new(aws.clients.clone());
    let first = run("held-1");
    plan(&function, &first).await.unwrap();
    assert_eq!(
        drive(&function, &first, "orders", 3).await.status,
        ComponentStatus::Verified
    );
    let restored = aws
        .receipts()
        .get_component("held-1", "orders")
        .await
        .unwrap()
        .unwrap();
    // A newer snapshot appears; the run's next execution starts the component over.
    aws.clients
        .rds()
        .create_db_snapshot()
        .db_instance_identifier(SOURCE_DB)
        .db_snapshot_identifier(format!("{SOURCE_DB}-manual-2"))
        .send()
        .await
        .unwrap();
    let mut second = first.clone();
    second.execution_arn = first.execution_arn.as_ref().map(|arn| format!("{arn}.2"));
    assert_eq!(
        drive(&function, &second, "orders", 3).await.status,
        ComponentStatus::Verified
    );
    let again = aws
        .receipts()
        .get_component("held-1", "orders")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.execution, second.execution_arn);
    assert_eq!(again.details["reused"], true, "{again:?}");
    // The snapshot of record is the one restored, not the newest.
    assert_eq!(again.details["snapshot"], restored.details["snapshot"]);
    assert_eq!(again.rpo_seconds, restored.rpo_seconds);
    assert_eq!(aws.db_instances().await.len(), 2);
}

/// A component's start cut off after its N-th write (its receipt, the restore it asks RDS
/// for) and run again — as the state machine's Retry does — restores once and ends as an
/// uncut one.
#[tokio::test]
async fn a_start_cut_after_its_nth_write_and_run_again_ends_as_an_uncut_one() {
    let aws = LocalAws::start().await;
    aws.seed_database(SOURCE_DB, true).await;
    with_profile(
        &aws,
        json!([{"name": "orders", "kind": "rds_snapshot", "db_instance_identifier": SOURCE_DB, "rto_target_seconds": 600, "rpo_target_seconds": 3600, "poll_seconds": 1}]),
    )
    .await;
    let function = Components::new(aws.clients.clone());
    let whole = run("rds-whole");
    assert_eq!(
        drive(&function, &whole, "orders", 5).await.status,
        ComponentStatus::Verified
    );
    let whole = aws.left_by("rds-whole").await;
    assert!(
        whole.keys().any(|k| k.ends_with("components/orders.json")),
        "{whole:?}"
    );
    let cuts = [
        ("rds-cut-a", "PutObject", 0),
        ("rds-cut-b", "PutObject", 1),
        ("rds-cut-c", "RestoreDBInstanceFromDBSnapshot", 0),
    ];
    for (run_id, operation, n) in cuts {
        let mut cut = Components::new(aws.clients.clone());
        if operation == "PutObject" {
            cut.clients.s3 = drpilot_testkit::FailAfter::s3(&cut.clients.s3, operation, n);
        } else {
            let conf = cut
                .kinds
                .rds
                .config()
                .to_builder()
                .interceptor(drpilot_testkit::FailAfter::new(operation, n))
                .build();
            cut.kinds.rds = aws_sdk_rds::Client::from_conf(conf);
        }
        let run = run(run_id);
        let err = cut
            .handle(ComponentsRequest::Start {
                run: run.clone(),
                component: "orders".into(),
                retry_count: 0,
            })
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("injected fault"),
            "{operation} after {n}: {err}"
        );
        let done = drive(&function, &run, "orders", 5).await;
        assert_eq!(done.status, ComponentStatus::Verified, "{done:?}");
        drpilot_testkit::assert_left_alike(
            &aws.left_by(run_id).await,
            &whole,
            &format!("cut after {operation} number {n}"),
        );
    }
    // One restored instance per run, none twice.
    assert_eq!(aws.db_instances().await.len(), 1 + 4);
}
