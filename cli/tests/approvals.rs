//! The proven approver end to end: the real drill state machine on the local stack, the
//! approve function (served, and in this process where a test hands it events as a
//! Function URL or a direct invoke would), each person's proof of identity signed with
//! their own credentials and answered by the emulator's STS, promote verifying the seal.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

mod common;

use std::time::Duration;

use approve::Approve;
use aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlRequest;
use drpilot_cli::commands::approve::prove_identity;
use drpilot_cli::history::fetch;
use drpilot_cli::local::{deploy_state_machine, Machine};
use drpilot_cli::{approve, follow, Ctx, Out};
use drpilot_shared::approval::Sealer;
use drpilot_shared::identity::DecisionRequest;
use drpilot_testkit::{
    make_backup, sh, test_profile, LocalAws, TempDir, BACKUP_BUCKET, BACKUP_PREFIX,
    EVIDENCE_BUCKET, PROFILE, TARGET_BUCKET,
};
use drpilot_tools::local::{APPROVAL_KEY_ALIAS, STATE_MACHINES};
use serde_json::{json, Value};

use common::{start_run, MACHINE};

const ALICE: &str = "arn:aws:sts::123456789012:assumed-role/Operators/alice";
const BOB: &str = "arn:aws:sts::123456789012:assumed-role/Approvers/bob";
const MALLORY: &str = "arn:aws:iam::123456789012:user/mallory";

/// Functions, buckets, the profile (with `two_person_rule` when asked), the drill
/// machine and one backup.
async fn stack(aws: &LocalAws, tmp: &TempDir, two_person_rule: bool) -> Ctx {
    aws.with_functions();
    aws.standard_setup().await;
    let mut profile = test_profile();
    profile["two_person_rule"] = json!(two_person_rule);
    aws.put_profile(PROFILE, &profile).await;
    let ctx = Ctx::new(
        Some(&aws.endpoint),
        Some(MACHINE.into()),
        Out { json: true },
    )
    .await;
    let topic = ctx.sns.create_topic().name("drpilot").send().await.unwrap();
    deploy_state_machine(
        &ctx,
        Machine::Drill,
        MACHINE,
        topic.topic_arn().unwrap(),
        600,
    )
    .await
    .unwrap();
    let src = tmp.path().join("src");
    sh(&format!(
        "mkdir -p '{0}/x' && for i in $(seq 1 10); do echo \"{{\\\"n\\\": $i}}\" > '{0}/x/'$i.json; done",
        src.display()
    ));
    let out = tmp.path().join("b1");
    make_backup(&src, &out, &[]);
    aws.upload_dir(BACKUP_BUCKET, &format!("{BACKUP_PREFIX}b1"), &out)
        .await;
    ctx
}

/// Waits until the run asks for approval; returns the token it waits with.
async fn waiting_token(ctx: &Ctx, run_id: &str) -> String {
    let arn = ctx.execution_arn(run_id).await.unwrap();
    for _ in 0..600 {
        let p = fetch(&ctx.sfn, &arn).await.unwrap();
        if let Some(token) = p.waiting_token {
            return token;
        }
        assert!(
            !p.finished(),
            "run {run_id} ended before its approval: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("run {run_id} never reached the approval");
}

/// The approve function in this process, as its Function URL runs it on AWS.
fn approve_function(aws: &LocalAws) -> Approve {
    let mut function = Approve::new(aws.clients.clone());
    function.state_machines = STATE_MACHINES.iter().map(|m| (*m).to_owned()).collect();
    function.sealer = Some(Sealer::new(function.clients.kms(), APPROVAL_KEY_ALIAS));
    function
}

/// A Function URL request event with `body`, its IAM context naming `claimed`: what AWS
/// writes behind a Function URL, and what anyone may write in a direct invoke.
fn url_request(body: Value, claimed: &str) -> LambdaFunctionUrlRequest {
    serde_json::from_value(json!({
        "version": "2.0",
        "rawPath": "/",
        "headers": {"content-type": "application/json"},
        "requestContext": {
            "accountId": "123456789012",
            "http": {"method": "POST", "path": "/"},
            "authorizer": {"iam": {"userArn": claimed, "accountId": "123456789012"}},
            "timeEpoch": 0
        },
        "body": body.to_string(),
        "isBase64Encoded": false
    }))
    .unwrap()
}

/// `body` with the proof of identity of the person `config` signs as.
async fn signed(config: &aws_config::SdkConfig, body: &Value) -> Value {
    let mut request: DecisionRequest = serde_json::from_value(body.clone()).unwrap();
    request.identity = Some(prove_identity(config, &request.digest()).await.unwrap());
    serde_json::to_value(request).unwrap()
}

/// Starts execution `name` with `input` by a raw `StartExecution` (around `drpilot
/// start`, as anyone with `states:StartExecution` can) and follows it to its end.
async fn start_raw_and_follow(
    ctx: &Ctx,
    name: &str,
    input: &Value,
) -> drpilot_cli::history::Progress {
    let started = ctx
        .sfn
        .start_execution()
        .state_machine_arn(ctx.state_machine_arn().await.unwrap())
        .name(name)
        .input(input.to_string())
        .send()
        .await
        .unwrap();
    let run_id = drpilot_shared::record::ExecutionName::parse(name).run_id;
    follow(ctx, started.execution_arn(), &run_id, None)
        .await
        .unwrap()
}

/// The function's refusal: its status and error message.
fn refusal(
    response: &aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlResponse,
) -> (i64, String) {
    let answer: Value = serde_json::from_str(response.body.as_deref().unwrap()).unwrap();
    (
        response.status_code,
        format!("{}: {}", answer["error"], answer["message"]),
    )
}

#[tokio::test]
async fn a_raw_send_task_success_cannot_promote() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("approval-raw");
    let ctx = stack(&aws, &tmp, false).await;
    let run = start_run(&ctx, json!({"mode": "drill", "run_id": "raw-1"})).await;
    let token = waiting_token(&ctx, &run).await;
    // Anyone with states:SendTaskSuccess can answer the token, but not with a seal.
    ctx.sfn
        .send_task_success()
        .task_token(token)
        .output(json!({"approver": "mallory", "ticket": "CHG-0"}).to_string())
        .send()
        .await
        .unwrap();
    let arn = ctx.execution_arn(&run).await.unwrap();
    let done = follow(&ctx, &arn, &run, None).await.unwrap();
    assert_eq!(done.status, "FAILED");
    let promote = aws
        .receipts()
        .get_phase(&run, drpilot_shared::Phase::Promote)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(promote.error_name(), Some("ApprovalMissing"));
    assert!(
        promote.reason.as_deref().unwrap().contains("not sealed"),
        "{promote:?}"
    );
    assert!(aws.keys(TARGET_BUCKET, "root/").await.is_empty());
    assert!(aws
        .keys(TARGET_BUCKET, "audit/promotions/")
        .await
        .is_empty());
}

#[tokio::test]
async fn the_two_person_rule_refuses_the_starter_and_a_second_principal_promotes() {
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("approval-two-person");
    let ctx = stack(&aws, &tmp, true).await;
    let alice = aws.person("Operators", "alice").await;
    let alice_again = aws.person("Operators", "alice-second-session").await;
    let bob = aws.person("Approvers", "bob").await;

    // A start whose input only names its starter (anyone may write the input) proves no
    // one: under the two-person rule, bringup refuses it before anything is written.
    let claimed = json!({"mode": "drill", "run_id": "two-0", "profile": PROFILE,
                         "trigger": {"kind": "manual", "source": MALLORY}});
    let ended = start_raw_and_follow(&ctx, "two-0.1", &claimed).await;
    assert_eq!(ended.status, "FAILED");
    assert!(
        format!("{ended:?}").contains("two_person_rule needs to know who started the run"),
        "{ended:?}"
    );

    // Nor does a proof made for another execution (lifted from a start of two-1.1).
    let lifted = prove_identity(&alice, &drpilot_shared::identity::start_digest("two-1.1"))
        .await
        .unwrap();
    let replayed = json!({"mode": "drill", "run_id": "two-2", "profile": PROFILE,
                          "trigger": {"kind": "manual", "proof": lifted}});
    let ended = start_raw_and_follow(&ctx, "two-2.1", &replayed).await;
    assert_eq!(ended.status, "FAILED");
    assert!(format!("{ended:?}").contains("trigger.proof"), "{ended:?}");

    // Alice starts the run with `drpilot start` under her own credentials: proven.
    let run = start_run(
        &ctx.as_caller(alice.clone()),
        json!({"mode": "drill", "run_id": "two-1",
               "trigger": {"kind": "manual", "source": MALLORY}}),
    )
    .await;
    waiting_token(&ctx, &run).await;
    let arn = ctx.execution_arn(&run).await.unwrap();
    let function = approve_function(&aws);
    let body = json!({"execution_arn": arn, "decision": "approve",
                      "approver": "Alice", "ticket": "CHG-9"});

    // A hand-written IAM context (a direct invoke) is no identity: refused, whoever it names.
    let forged = function.handle(url_request(body.clone(), MALLORY)).await;
    let (status, why) = refusal(&forged);
    assert_eq!(status, 403, "{why}");
    assert!(
        why.contains("ApprovalMissing") && why.contains("identity"),
        "{why}"
    );
    // A proof made for another decision does not carry over (bob's proof, alice's ticket).
    let mut lifted = signed(
        &bob,
        &json!({"execution_arn": arn, "decision": "approve",
                                          "approver": "Bob", "ticket": "CHG-1"}),
    )
    .await;
    lifted["ticket"] = json!("CHG-9");
    let (status, why) = refusal(&function.handle(url_request(lifted, BOB)).await);
    assert_eq!(status, 403, "{why}");
    assert!(why.contains("not bound"), "{why}");

    // The starter, proven, even under another session name of the same role.
    for person in [&alice, &alice_again] {
        let refused = function
            .handle(url_request(signed(person, &body).await, BOB))
            .await;
        let (status, why) = refusal(&refused);
        assert_eq!(status, 403, "{why}");
        assert!(
            why.contains("ApprovalMissing") && why.contains("two_person_rule"),
            "{why}"
        );
    }
    // Still waiting: the refusals answered nothing.
    assert!(fetch(&ctx.sfn, &arn).await.unwrap().waiting_for_approval);

    // Bad input names its field and answers nothing either.
    let bad = function
        .handle(url_request(
            json!({"execution_arn": arn, "decision": "approve", "approver": "Bob"}),
            BOB,
        ))
        .await;
    assert_eq!(bad.status_code, 400);
    assert!(bad.body.as_deref().unwrap().contains("ticket"));
    let foreign = function
        .handle(url_request(
            json!({"execution_arn": "arn:aws:states:us-east-1:123456789012:execution:other:x",
                   "decision": "approve", "approver": "Bob", "ticket": "CHG-9"}),
            BOB,
        ))
        .await;
    assert_eq!(foreign.status_code, 400);
    assert!(foreign.body.as_deref().unwrap().contains("execution_arn"));

    let mut bobs = body.clone();
    bobs["approver"] = json!("Bob");
    // The event claims mallory; the proof says bob, and the proof is what counts.
    let approved = function
        .handle(url_request(signed(&bob, &bobs).await, MALLORY))
        .await;
    assert_eq!(approved.status_code, 200, "{:?}", approved.body);
    let record: Value = serde_json::from_str(approved.body.as_deref().unwrap()).unwrap();
    assert_eq!(record["principal"], BOB);
    assert_eq!(record["verified"], true);
    assert_eq!(
        record["person"],
        "arn:aws:sts::123456789012:assumed-role/Approvers"
    );
    assert_eq!(record["started_by"], ALICE);
    assert_eq!(record["seal"]["execution_arn"], arn);
    assert_eq!(record["seal"]["state"], "RequestApproval");

    let done = follow(&ctx, &arn, &run, None).await.unwrap();
    assert_eq!(done.status, "SUCCEEDED");
    let summary = aws.receipts().get_summary(&run).await.unwrap().unwrap();
    assert!(summary.promoted);
    assert_eq!(summary.approver.as_deref(), Some("Bob"));
    assert_eq!(summary.approver_principal.as_deref(), Some(BOB));
    assert!(summary.approval_sealed);
    // The decision is kept with the run's evidence, under the bucket's retention.
    let decisions = aws
        .keys(
            EVIDENCE_BUCKET,
            &format!("drpilot/receipts/runs/{run}/approvals/"),
        )
        .await;
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert!(decisions[0].contains("/approve-"));
}

/// On the local stack `drpilot approve` reaches the served approve function through
/// Lambda Invoke, with the same proof of identity as on AWS, answered by the emulator's
/// STS: the one who started the run (`drpilot start` records its caller) is refused under
/// the two-person rule, another person's `drpilot` approves.
#[tokio::test]
async fn drpilot_approve_on_the_local_stack_proves_its_caller_through_sts() {
    const CAROL: &str = "arn:aws:sts::123456789012:assumed-role/Approvers/carol";
    let aws = LocalAws::start().await;
    let tmp = TempDir::new("approval-local");
    let ctx = stack(&aws, &tmp, true).await;
    let run = start_run(&ctx, json!({"mode": "drill", "run_id": "local-1"})).await;
    waiting_token(&ctx, &run).await;
    let starter = approve(&ctx, &run, "me", "CHG-3", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        starter.contains("two_person_rule") && starter.contains("user/moto"),
        "{starter}"
    );
    let carol = ctx.as_caller(aws.person("Approvers", "carol").await);
    let approval = approve(&carol, &run, "carol", "CHG-3", Some("looks right"))
        .await
        .unwrap();
    assert_eq!(approval["principal"], CAROL);
    assert_eq!(approval["verified"], true);
    assert_eq!(approval["seal"]["algorithm"], "HMAC_SHA_256");
    let arn = ctx.execution_arn(&run).await.unwrap();
    let done = follow(&ctx, &arn, &run, None).await.unwrap();
    assert_eq!(done.status, "SUCCEEDED");
    let summary = aws.receipts().get_summary(&run).await.unwrap().unwrap();
    assert!(summary.approval_sealed);
    assert_eq!(summary.approver_principal.as_deref(), Some(CAROL));
    // A second answer finds nothing waiting.
    let again = approve(&carol, &run, "carol", "CHG-3", None)
        .await
        .unwrap_err();
    assert!(again.to_string().contains("not waiting"), "{again}");
}
