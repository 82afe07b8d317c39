//! What the end-to-end test files share.

#![allow(dead_code)] // each test file uses its own share of these
#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::time::Duration;

use drpilot_cli::history::{fetch, Progress};
use drpilot_cli::local::{deploy_state_machine, Machine};
use drpilot_cli::{follow, start, Ctx, Out, StartFlags};
use drpilot_shared::receipt::PhaseStatus;
use drpilot_shared::Phase;
use drpilot_testkit::{LocalAws, TempDir, PROFILE};
use serde_json::Value;

/// The drill state machine's name in the end-to-end tests.
pub const MACHINE: &str = "drpilot-drill";

/// The stack a drill runs on: the functions up, buckets, the test profile, a topic,
/// and the drill state machine from the ASL that deploys. No backup yet.
pub async fn drill_stack(aws: &LocalAws) -> Ctx {
    aws.with_functions();
    aws.standard_setup().await;
    let ctx = Ctx::new(
        Some(&aws.endpoint),
        Some(MACHINE.into()),
        Out { json: true },
    )
    .await;
    let created = ctx.sns.create_topic().name("drpilot").send().await.unwrap();
    let topic = created.topic_arn().unwrap().to_owned();
    deploy_state_machine(&ctx, Machine::Drill, MACHINE, &topic, 600)
        .await
        .unwrap();
    ctx
}

/// Waits until the run asks for approval (or ends).
pub async fn until_waiting(ctx: &Ctx, run_id: &str) {
    let arn = ctx.execution_arn(run_id).await.unwrap();
    for _ in 0..1200 {
        let p = fetch(&ctx.sfn, &arn).await.unwrap();
        if p.waiting_for_approval || p.finished() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("run {run_id} never reached the approval");
}

/// Follows the run to its end.
pub async fn finish(ctx: &Ctx, run_id: &str) -> Progress {
    let arn = ctx.execution_arn(run_id).await.unwrap();
    follow(ctx, &arn, run_id, None).await.unwrap()
}

/// Follows the run to its end, which must be a success (its error and cause otherwise).
pub async fn finish_succeeded(ctx: &Ctx, run_id: &str) -> Progress {
    let done = finish(ctx, run_id).await;
    assert_eq!(
        done.status, "SUCCEEDED",
        "{:?} {:?}",
        done.error, done.cause
    );
    done
}

/// The details of the run's receipt of `phase`, which must say it succeeded.
pub async fn receipt(aws: &LocalAws, run_id: &str, phase: Phase) -> Value {
    let receipt = aws
        .receipts()
        .get_phase(run_id, phase)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{run_id}: no {phase} receipt"));
    assert_eq!(
        receipt.status,
        PhaseStatus::Success,
        "{run_id} {phase}: {receipt:?}"
    );
    receipt.details
}

/// Starts a run of the test profile with `input` (a full drill may promote) without
/// following it; returns its run id.
pub async fn start_run(ctx: &Ctx, input: Value) -> String {
    let tmp = TempDir::new("input");
    let path = tmp.path().join("input.json");
    std::fs::write(&path, input.to_string()).unwrap();
    let p = start(
        ctx,
        PROFILE,
        Some(&path),
        None,
        false,
        None,
        &StartFlags::full_drill(),
    )
    .await
    .unwrap();
    p.run_id()
}

/// Every event of the run's latest execution's history, in order.
pub async fn history(ctx: &Ctx, run_id: &str) -> Vec<aws_sdk_sfn::types::HistoryEvent> {
    let arn = ctx.execution_arn(run_id).await.unwrap();
    let mut events = Vec::new();
    let mut token = None;
    loop {
        let page = ctx
            .sfn
            .get_execution_history()
            .execution_arn(&arn)
            .set_next_token(token)
            .max_results(1000)
            .send()
            .await
            .unwrap();
        events.extend(page.events().iter().cloned());
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            return events;
        }
    }
}

/// The names of the states the execution entered.
pub async fn states_entered(ctx: &Ctx, run_id: &str) -> Vec<String> {
    history(ctx, run_id)
        .await
        .iter()
        .filter_map(|e| e.state_entered_event_details())
        .map(|d| d.name().to_owned())
        .collect()
}
