//! `ssm_command` on instances by tag: the emulator resolves tag targets but has no
//! `ListCommandInvocations`, so the SSM client answers from aws-smithy-mocks (recorded in
//! the call ledger like the emulator's calls); receipts are the emulator's.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::sync::{Arc, Mutex};

use aws_sdk_ssm::operation::list_command_invocations::ListCommandInvocationsOutput;
use aws_sdk_ssm::operation::send_command::SendCommandOutput;
use aws_sdk_ssm::types::{Command, CommandInvocation, CommandInvocationStatus, CommandPlugin};
use aws_sdk_ssm::Client;
use aws_smithy_mocks::{mock, MockResponseInterceptor, Rule, RuleMode};
use components::{Answer, Components, ComponentsRequest, Step};
use drpilot_shared::component::ComponentStatus;
use drpilot_shared::run::RunContext;
use drpilot_testkit::{run_context, test_profile, LocalAws, PROFILE};
use serde_json::json;

fn ssm_client(rules: &[&Rule]) -> Client {
    let mut interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
    for rule in rules {
        interceptor = interceptor.with_rule(rule);
    }
    let config = aws_sdk_ssm::Config::builder()
        .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
        .region(aws_sdk_ssm::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ssm::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .http_client(aws_smithy_mocks::create_mock_http_client())
        .interceptor(interceptor);
    let config = match drpilot_shared::ledger::CallLedger::from_env("components") {
        Some(ledger) => config.interceptor(ledger),
        None => config,
    };
    Client::from_conf(config.build())
}

/// SendCommand, keeping the targets it was sent.
fn send(sent: Arc<Mutex<Vec<String>>>) -> Rule {
    mock!(Client::send_command)
        .match_requests(move |r| {
            let targets: Vec<String> = r
                .targets()
                .iter()
                .map(|t| format!("{}={}", t.key().unwrap_or_default(), t.values().join(",")))
                .collect();
            sent.lock().unwrap().push(format!(
                "{} {} {}",
                r.document_name().unwrap_or_default(),
                targets.join(";"),
                r.instance_ids().len()
            ));
            true
        })
        .sequence()
        .output(|| {
            SendCommandOutput::builder()
                .command(Command::builder().command_id("cmd-1").build())
                .build()
        })
        .repeatedly()
        .build()
}

fn invocation(
    instance: &str,
    status: CommandInvocationStatus,
    output: &str,
    code: i32,
) -> CommandInvocation {
    CommandInvocation::builder()
        .instance_id(instance)
        .status(status)
        .command_plugins(
            CommandPlugin::builder()
                .response_code(code)
                .output(output)
                .build(),
        )
        .build()
}

fn listing(answers: Vec<Vec<(&'static str, CommandInvocationStatus, &'static str, i32)>>) -> Rule {
    let mut sequence = mock!(Client::list_command_invocations)
        .match_requests(|r| r.command_id() == Some("cmd-1") && r.details() == Some(true))
        .sequence();
    for answer in answers {
        sequence = sequence.output(move || {
            let mut out = ListCommandInvocationsOutput::builder();
            for (instance, status, output, code) in &answer {
                out = out.command_invocations(invocation(instance, status.clone(), output, *code));
            }
            out.build()
        });
    }
    sequence.repeatedly().build()
}

async fn setup(aws: &LocalAws) -> RunContext {
    aws.standard_setup().await;
    let mut profile = test_profile();
    profile["components"] = json!([{"name": "postgres", "kind": "ssm_command",
        "targets": {"tag:Role": ["postgres-dr"]},
        "parameters": {"commands": ["restore-test.sh postgres"]},
        "rto_target_seconds": 300, "poll_seconds": 1, "timeout_seconds": 60}]);
    aws.put_profile(PROFILE, &profile).await;
    run_context("ssm-tags-1", "b1")
}

async fn step(function: &Components, run: &RunContext, poll: bool) -> Step {
    let request = if poll {
        ComponentsRequest::Poll {
            run: run.clone(),
            component: "postgres".into(),
            retry_count: 0,
        }
    } else {
        ComponentsRequest::Start {
            run: run.clone(),
            component: "postgres".into(),
            retry_count: 0,
        }
    };
    match function.handle(request).await.unwrap() {
        Answer::Step(step) => step,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_command_by_tag_is_polled_until_every_resolved_instance_succeeds() {
    use CommandInvocationStatus::*;
    let aws = LocalAws::start().await;
    let run = setup(&aws).await;
    let sent = Arc::default();
    let rules = [
        send(Arc::clone(&sent)),
        listing(vec![
            vec![],
            vec![
                ("i-0aaa", InProgress, "", -1),
                ("i-0bbb", Success, "restored 12 tables", 0),
            ],
            vec![
                ("i-0aaa", Success, "restored 9 tables", 0),
                ("i-0bbb", Success, "restored 12 tables", 0),
            ],
        ]),
    ];
    let mut function = Components::new(aws.clients.clone());
    function.kinds.ssm = ssm_client(&rules.iter().collect::<Vec<_>>());
    assert_eq!(
        step(&function, &run, false).await.status,
        ComponentStatus::Running
    );
    assert_eq!(
        *sent.lock().unwrap(),
        vec!["AWS-RunShellScript tag:Role=postgres-dr 0".to_owned()]
    );
    // Targets not resolved yet, then one instance still running.
    let waiting = step(&function, &run, true).await;
    assert!(
        waiting
            .reason
            .as_deref()
            .unwrap()
            .contains("no invocation yet"),
        "{waiting:?}"
    );
    let waiting = step(&function, &run, true).await;
    assert!(
        waiting
            .reason
            .as_deref()
            .unwrap()
            .contains("still running on i-0aaa"),
        "{waiting:?}"
    );
    let done = step(&function, &run, true).await;
    assert_eq!(done.status, ComponentStatus::Verified, "{done:?}");
    let receipt = aws
        .receipts()
        .get_component("ssm-tags-1", "postgres")
        .await
        .unwrap()
        .unwrap();
    let invocations = receipt.details["invocations"].as_array().unwrap();
    assert_eq!(invocations.len(), 2);
    assert_eq!(invocations[0]["output_tail"], "restored 9 tables");
}

#[tokio::test]
async fn a_failed_invocation_fails_the_component_naming_the_instance_and_its_output() {
    use CommandInvocationStatus::*;
    let aws = LocalAws::start().await;
    let run = setup(&aws).await;
    let rules = [
        send(Arc::default()),
        listing(vec![vec![
            (
                "i-0aaa",
                Failed,
                "pg_restore: error: could not read archive",
                1,
            ),
            ("i-0bbb", Success, "restored", 0),
        ]]),
    ];
    let mut function = Components::new(aws.clients.clone());
    function.kinds.ssm = ssm_client(&rules.iter().collect::<Vec<_>>());
    step(&function, &run, false).await;
    let failed = step(&function, &run, true).await;
    assert_eq!(failed.status, ComponentStatus::Failed);
    let reason = failed.reason.unwrap();
    assert!(
        reason.contains("on i-0aaa: Failed (exit 1)") && reason.contains("could not read archive"),
        "{reason}"
    );
    let receipt = aws
        .receipts()
        .get_component("ssm-tags-1", "postgres")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.error.as_deref(), Some("IntegrityError"));
}
