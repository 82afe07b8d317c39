//! approve: the one door to a waiting approval. It sits behind a Lambda Function URL
//! with `AWS_IAM` auth, but trusts nothing the event says about the caller: a direct
//! invoke can hand it any `requestContext`. The caller proves who they are with a signed
//! STS `GetCallerIdentity` request bound to their decision, which this function sends to
//! STS itself ([`drpilot_shared::identity`]). It answers the execution's waiting task
//! token itself, after:
//! - checking the execution belongs to one of this stack's state machines
//!   (`DRPILOT_STATE_MACHINES`) and is waiting for an approval (its history);
//! - proving the caller's identity (no proof, or one STS refuses: 403);
//! - under the profile's `two_person_rule`, refusing the person that started the run, and
//!   always refusing a person or approver who already answered an earlier wait of the
//!   same execution (a failback's second confirmation);
//! - sealing the decision, bound to the execution, the waiting state and its token, with
//!   the stack's KMS HMAC key (`DRPILOT_APPROVAL_KEY`), which promote and failback verify
//!   ([`drpilot_shared::approval`]);
//! - recording it with the run's evidence (`runs/<run>/approvals/`).
//!
//! Every answer is an HTTP response: 200 with the decision record, or the error's status
//! with `{error, message}` (`error` is one of drpilot's error names).

use aws_lambda_events::event::lambda_function_urls::{
    LambdaFunctionUrlRequest, LambdaFunctionUrlResponse,
};
use base64::Engine;
use chrono::{DateTime, Utc};
use drpilot_shared::approval::{
    self, Approval, Decision, Seal, SealScope, Sealer, WaitingApproval, DENIED_ERROR,
};
use drpilot_shared::error::decode_slice;
use drpilot_shared::identity::{self, CallerIdentity, PersonRule, StsEndpoint};
use drpilot_shared::objects::{put_json_if, Conditional, Precondition};
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::{AwsClients, Error, ErrorKind, Result, S3Uri};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::info;

/// The environment variable listing the state machines (ARNs, comma separated) whose
/// approvals this function may answer.
pub const STATE_MACHINES_ENV: &str = "DRPILOT_STATE_MACHINES";

/// Longest approver or ticket accepted (they go into receipts, reports and the seal).
const MAX_NAME: usize = 200;
/// Longest comment or denial reason (Step Functions caps a cause at 32,768 characters).
const MAX_TEXT: usize = 2000;

pub use drpilot_shared::identity::DecisionRequest;

/// What the function decided, as it answers and records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub run_id: String,
    pub execution_arn: String,
    pub decision: Decision,
    /// The answer sent to the approval (approve).
    pub approval: Option<Approval>,
    /// Why it was denied (deny).
    pub reason: Option<String>,
    pub approver: Option<String>,
    pub principal: Option<String>,
    pub verified: bool,
    /// Who STS says signed the request, and at which endpoint the function asked it.
    pub identity: CallerIdentity,
    pub identity_verified_by: String,
    /// The person the two-person checks compared (the profile's `approver_identity`).
    pub person: String,
    /// Who started the run, as the state machine recorded it (a manual start's caller).
    pub started_by: Option<String>,
    pub two_person_rule: bool,
    pub decided_at: DateTime<Utc>,
    pub seal: Seal,
    /// Where this record is kept with the run's evidence.
    pub record: S3Uri,
}

pub struct Approve {
    pub clients: AwsClients,
    pub sfn: aws_sdk_sfn::Client,
    pub profiles: ProfileSource,
    pub sealer: Option<Sealer>,
    /// The state machines whose executions it answers.
    pub state_machines: Vec<String>,
    /// Where it sends identity proofs: its own configuration's STS, never the request's.
    pub sts: StsEndpoint,
}

impl Approve {
    pub fn new(clients: AwsClients) -> Self {
        let clients = clients.for_function("approve");
        let state_machines = std::env::var(STATE_MACHINES_ENV)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect();
        Self {
            sfn: clients.sfn(),
            sts: StsEndpoint::of_config(&clients.config),
            sealer: Sealer::from_env(clients.kms()),
            profiles: ProfileSource::from_env(clients.ssm.clone()),
            state_machines,
            clients,
        }
    }

    /// Answers one request: 200 with the decision record, or the error's status.
    pub async fn handle(&self, request: LambdaFunctionUrlRequest) -> LambdaFunctionUrlResponse {
        match self.decide(&request).await {
            Ok(record) => {
                info!(run_id = %record.run_id, decision = record.decision.as_str(), principal = ?record.principal, "decided");
                respond(200, &json!(record))
            }
            Err(err) => {
                info!(error.name = err.kind.name(), error = %err, "refused");
                respond(
                    status_of(err.kind),
                    &json!({"error": err.kind.name(), "message": err.message}),
                )
            }
        }
    }

    pub async fn decide(&self, request: &LambdaFunctionUrlRequest) -> Result<DecisionRecord> {
        if let Some(method) = request.request_context.http.method.as_deref() {
            if !method.eq_ignore_ascii_case("POST") {
                return Err(Error::input(format!(
                    "method: expected POST with a JSON body, got {method}"
                )));
            }
        }
        let body = body_bytes(request)?;
        let asked: DecisionRequest = decode_slice("request body", &body)
            .map_err(|e| Error::input(e.to_string()).with_source(e))?;
        let answer = Answer::validate(&asked)?;
        self.owned(&asked.execution_arn)?;
        let proof = asked.identity.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::ApprovalMissing,
                "identity: the request carries no proof of identity (a signed STS GetCallerIdentity request); decide with drpilot approve or drpilot deny, which sign one",
            )
        })?;
        let caller = self.sts.verify(proof, &asked.digest()).await?;
        let waiting = self.waiting(&asked.execution_arn).await?;
        let run_id = waiting.run_id.clone().ok_or_else(|| {
            Error::contract(format!(
                "execution {}: its approval task names no run_id (a state machine older than this function?)",
                asked.execution_arn
            ))
        })?;
        let profile_name = waiting.profile.clone().ok_or_else(|| {
            Error::contract(format!(
                "execution {}: its approval task names no profile (a state machine older than this function?)",
                asked.execution_arn
            ))
        })?;
        let profile = self.profiles.load(&profile_name).await?;
        let rule = profile.approver_identity;
        let person = identity::person(&caller.arn, rule);
        if asked.decision == Decision::Approve {
            refuse_same_person(
                &run_id,
                &waiting,
                &answer,
                &person,
                rule,
                profile.two_person_rule,
            )?;
        }
        let principal = Some(caller.arn.clone());
        let decided_at = Utc::now();
        let mut approval = Approval {
            approver: answer.approver.clone().unwrap_or_default(),
            ticket: answer.ticket.clone().unwrap_or_default(),
            approved_at: Some(decided_at),
            comment: answer.comment.clone(),
            principal: principal.clone(),
            verified: true,
            seal: None,
        };
        let scope = SealScope::of(&waiting, &asked.execution_arn);
        let seal = Sealer::required(self.sealer.as_ref())?
            .seal(&run_id, &scope, asked.decision, &approval)
            .await?;
        approval.seal = Some(seal.clone());
        let store = ReceiptStore::new(self.clients.s3.clone(), profile.receipts.clone());
        let record_uri = store.run_dir(&run_id)?.join(&format!(
            "approvals/{}-{}.json",
            asked.decision.as_str(),
            decided_at.format("%Y%m%dT%H%M%S%.3fZ")
        ))?;
        let record = DecisionRecord {
            run_id: run_id.clone(),
            execution_arn: asked.execution_arn.clone(),
            decision: asked.decision,
            approval: (asked.decision == Decision::Approve).then(|| approval.clone()),
            reason: answer.reason.clone(),
            approver: answer.approver.clone(),
            principal: principal.clone(),
            verified: true,
            identity: caller,
            identity_verified_by: self.sts.url.clone(),
            person,
            started_by: waiting.started_by.clone(),
            two_person_rule: profile.two_person_rule,
            decided_at,
            seal,
            record: record_uri.clone(),
        };
        self.send(&waiting, &record).await?;
        // After the answer went through: the evidence records what was decided, never a
        // decision Step Functions refused.
        match put_json_if(
            &self.clients.s3,
            &record_uri,
            &record,
            Some(Precondition::Absent),
        )
        .await?
        {
            Conditional::Written | Conditional::ConditionFailed => Ok(record),
        }
    }

    /// Refuses an execution of any state machine but this stack's.
    fn owned(&self, execution_arn: &str) -> Result<()> {
        if self.state_machines.is_empty() {
            return Err(Error::contract(format!(
                "{STATE_MACHINES_ENV} is not set on this function: it answers no state machine's approvals"
            )));
        }
        let machine = state_machine_of(execution_arn).ok_or_else(|| {
            Error::input(format!(
                "execution_arn: expected arn:aws:states:REGION:ACCOUNT:execution:MACHINE:NAME, got {execution_arn:?}"
            ))
        })?;
        if !self.state_machines.contains(&machine) {
            return Err(Error::input(format!(
                "execution_arn: {execution_arn} is not an execution of this stack's state machines ({})",
                self.state_machines.join(", ")
            )));
        }
        Ok(())
    }

    /// The approval the execution waits for, from its whole history.
    async fn waiting(&self, execution_arn: &str) -> Result<WaitingApproval> {
        let mut events = Vec::new();
        let mut pages = self
            .sfn
            .get_execution_history()
            .execution_arn(execution_arn)
            .max_results(1000)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| match e.as_service_error() {
                Some(s) if s.is_execution_does_not_exist() => {
                    Error::input(format!("execution_arn: no execution {execution_arn}"))
                }
                _ => Error::from_sdk(&format!("GetExecutionHistory {execution_arn}"), e),
            })?;
            events.extend(page.events().iter().cloned());
        }
        approval::waiting(&events).ok_or_else(|| {
            Error::contract(format!(
                "execution {execution_arn} is not waiting for an approval"
            ))
        })
    }

    async fn send(&self, waiting: &WaitingApproval, record: &DecisionRecord) -> Result<()> {
        let answered = |e: &dyn std::fmt::Display| {
            Error::contract(format!(
                "run {}: the approval could not be answered (answered already, or timed out?): {e}",
                record.run_id
            ))
        };
        match record.decision {
            Decision::Approve => {
                let output = serde_json::to_string(&record.approval)
                    .map_err(|e| Error::internal(format!("encoding the approval: {e}")))?;
                self.sfn
                    .send_task_success()
                    .task_token(&waiting.token)
                    .output(output)
                    .send()
                    .await
                    .map_err(|e| match e.as_service_error() {
                        Some(s)
                            if s.is_task_does_not_exist()
                                || s.is_task_timed_out()
                                || s.is_invalid_token() =>
                        {
                            answered(s)
                        }
                        _ => Error::from_sdk("SendTaskSuccess", e),
                    })?;
            }
            Decision::Deny => {
                let by = record
                    .principal
                    .as_deref()
                    .or(record.approver.as_deref())
                    .unwrap_or("an unverified caller");
                self.sfn
                    .send_task_failure()
                    .task_token(&waiting.token)
                    .error(DENIED_ERROR)
                    .cause(format!(
                        "{} (denied by {by})",
                        record.reason.as_deref().unwrap_or_default()
                    ))
                    .send()
                    .await
                    .map_err(|e| match e.as_service_error() {
                        Some(s)
                            if s.is_task_does_not_exist()
                                || s.is_task_timed_out()
                                || s.is_invalid_token() =>
                        {
                            answered(s)
                        }
                        _ => Error::from_sdk("SendTaskFailure", e),
                    })?;
            }
        }
        Ok(())
    }
}

/// Refuses an approval by a person who may not give it: under `two_person_rule` the one
/// who started the run; always, a person (or approver name) who already answered an
/// earlier wait of this execution, so a failback's second confirmation keeps waiting for
/// someone else instead of failing the run at copy-back.
fn refuse_same_person(
    run_id: &str,
    waiting: &WaitingApproval,
    answer: &Answer,
    person: &str,
    rule: PersonRule,
    two_person_rule: bool,
) -> Result<()> {
    let refuse = |why: String| Err(Error::new(ErrorKind::ApprovalMissing, why));
    if two_person_rule {
        if let Some(starter) = &waiting.started_by {
            if identity::person(starter, rule) == person {
                return refuse(format!(
                    "two_person_rule: {person} started run {run_id} and cannot approve it; another person must"
                ));
            }
        }
    }
    let approver = answer.approver.as_deref().unwrap_or_default();
    for earlier in &waiting.answered {
        let same_person = earlier
            .principal
            .as_deref()
            .is_some_and(|p| identity::person(p, rule) == person);
        if same_person || earlier.approver.eq_ignore_ascii_case(approver) {
            return refuse(format!(
                "{approver} ({person}) already confirmed run {run_id}; the next confirmation must come from another person"
            ));
        }
    }
    Ok(())
}

/// A request's fields, trimmed and checked for its decision.
struct Answer {
    approver: Option<String>,
    ticket: Option<String>,
    comment: Option<String>,
    reason: Option<String>,
}

impl Answer {
    fn validate(asked: &DecisionRequest) -> Result<Self> {
        let text = |field: &str, value: &Option<String>, max: usize| -> Result<Option<String>> {
            let Some(value) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) else {
                return Ok(None);
            };
            if value.chars().count() > max {
                return Err(Error::input(format!(
                    "{field}: at most {max} characters, got {}",
                    value.chars().count()
                )));
            }
            if value.chars().any(char::is_control) {
                return Err(Error::input(format!(
                    "{field}: control characters are not allowed"
                )));
            }
            Ok(Some(value.to_owned()))
        };
        let answer = Self {
            approver: text("approver", &asked.approver, MAX_NAME)?,
            ticket: text("ticket", &asked.ticket, MAX_NAME)?,
            comment: text("comment", &asked.comment, MAX_TEXT)?,
            reason: text("reason", &asked.reason, MAX_TEXT)?,
        };
        match asked.decision {
            Decision::Approve if answer.approver.is_none() => Err(Error::input(
                "approver: an approval needs the approver's name",
            )),
            Decision::Approve if answer.ticket.is_none() => Err(Error::input(
                "ticket: an approval needs a change or incident ticket",
            )),
            Decision::Approve if answer.reason.is_some() => {
                Err(Error::input("reason: only a denial gives a reason"))
            }
            Decision::Deny if answer.reason.is_none() => {
                Err(Error::input("reason: a denial needs a reason"))
            }
            _ => Ok(answer),
        }
    }
}

/// `arn:P:states:R:A:execution:MACHINE:NAME` → `arn:P:states:R:A:stateMachine:MACHINE`.
pub fn state_machine_of(execution_arn: &str) -> Option<String> {
    let parts: Vec<&str> = execution_arn.split(':').collect();
    match parts.as_slice() {
        ["arn", partition, "states", region, account, "execution", machine, name]
            if !machine.is_empty() && !name.is_empty() =>
        {
            Some(format!(
                "arn:{partition}:states:{region}:{account}:stateMachine:{machine}"
            ))
        }
        _ => None,
    }
}

fn body_bytes(request: &LambdaFunctionUrlRequest) -> Result<Vec<u8>> {
    let body = request
        .body
        .as_deref()
        .ok_or_else(|| Error::input("body: expected a JSON body"))?;
    if request.is_base64_encoded {
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| Error::input(format!("body: not valid base64: {e}")))
    } else {
        Ok(body.as_bytes().to_vec())
    }
}

/// The HTTP status an error answers with.
pub fn status_of(kind: ErrorKind) -> i64 {
    match kind {
        ErrorKind::InputError => 400,
        ErrorKind::ApprovalMissing => 403,
        ErrorKind::ContractError | ErrorKind::LockHeld => 409,
        ErrorKind::Retryable => 503,
        _ => 500,
    }
}

fn respond(status: i64, body: &serde_json::Value) -> LambdaFunctionUrlResponse {
    let mut response = LambdaFunctionUrlResponse::default();
    response.status_code = status;
    response.headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response.body = Some(body.to_string());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_map_to_their_state_machine() {
        assert_eq!(
            state_machine_of("arn:aws:states:us-east-1:123456789012:execution:drpilot-drill:r1.1")
                .as_deref(),
            Some("arn:aws:states:us-east-1:123456789012:stateMachine:drpilot-drill")
        );
        assert_eq!(
            state_machine_of("arn:aws:states:us-east-1:1:stateMachine:m"),
            None
        );
        assert_eq!(state_machine_of("r1"), None);
    }

    #[test]
    fn answers_are_checked_for_their_decision() {
        let asked = |decision,
                     approver: Option<&str>,
                     ticket: Option<&str>,
                     reason: Option<&str>| DecisionRequest {
            execution_arn: "arn".into(),
            decision,
            approver: approver.map(Into::into),
            ticket: ticket.map(Into::into),
            comment: None,
            reason: reason.map(Into::into),
            identity: None,
        };
        let err = |a: DecisionRequest| Answer::validate(&a).err().map(|e| e.message);
        assert!(err(asked(Decision::Approve, Some("a"), Some("T"), None)).is_none());
        assert!(err(asked(Decision::Approve, Some(" "), Some("T"), None))
            .unwrap()
            .starts_with("approver:"));
        assert!(err(asked(Decision::Approve, Some("a"), None, None))
            .unwrap()
            .starts_with("ticket:"));
        assert!(
            err(asked(Decision::Approve, Some("a"), Some("T"), Some("r")))
                .unwrap()
                .starts_with("reason:")
        );
        assert!(err(asked(Decision::Deny, None, None, None))
            .unwrap()
            .starts_with("reason:"));
        assert!(err(asked(Decision::Deny, None, None, Some("no"))).is_none());
        let long = "x".repeat(MAX_NAME + 1);
        assert!(err(asked(Decision::Approve, Some(&long), Some("T"), None))
            .unwrap()
            .starts_with("approver: at most"));
        assert!(
            err(asked(Decision::Approve, Some("a\u{7}"), Some("T"), None))
                .unwrap()
                .contains("control")
        );
    }
}
