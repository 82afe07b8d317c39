//! Approvals a run can trust: the approve function (behind a Function URL with `AWS_IAM`
//! auth) records who called it and seals its decision with a KMS HMAC; promote and
//! failback verify the seal before they act, so a raw `SendTaskSuccess` by anyone with
//! `states:SendTaskSuccess` cannot promote.
//!
//! The seal is KMS `GenerateMac` (HMAC-SHA-256) over the run id, the execution and the
//! state that waited, the SHA-256 of the task token it answered, the decision, the
//! principal (proven, see [`crate::identity`]), the approver, the ticket, the comment and
//! the time, serialized as one JSON object in a fixed field order ([`SealedFields`]);
//! verifying recomputes the same bytes and asks KMS (`VerifyMac`). The key never leaves
//! KMS. Because the seal names the execution and the waiting state, it answers exactly one
//! wait: an approval of execution `R.1` does not open `R.2`'s promote after a resume, and
//! a drill's or recovery's approval is no failback confirmation.

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::MacAlgorithmSpec;
use aws_sdk_sfn::types::HistoryEvent;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};

/// The environment variable naming the HMAC key (an alias or key ARN) on the approve,
/// promote and failback functions.
pub const APPROVAL_KEY_ENV: &str = "DRPILOT_APPROVAL_KEY";

/// The only MAC algorithm drpilot seals with.
const ALGORITHM: MacAlgorithmSpec = MacAlgorithmSpec::HmacSha256;

/// The error a denial fails the approval task with: the state machines' Catch treats it
/// (with a timeout) as "not approved".
pub const DENIED_ERROR: &str = "ApprovalDenied";

/// The Step Functions resource of a task that waits for a token (the approval, a
/// failback's confirmations), as history events name it.
pub const WAIT_FOR_TOKEN: &str = "publish.waitForTaskToken";

/// What was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Approve,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Deny => "deny",
        }
    }
}

/// The state of the drill machine that waits for the approval to promote.
pub const DRILL_APPROVAL_STATE: &str = "RequestApproval";

/// The failback machine's two confirmation states, in order.
pub const FAILBACK_CONFIRMATION_STATES: [&str; 2] = ["Confirm1", "Confirm2"];

/// A decision's seal: the key that made it, the algorithm, the MAC (base64), and the one
/// wait it answers (execution, state, token digest), which the MAC covers too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    pub key_id: String,
    pub algorithm: String,
    pub mac: String,
    /// The execution whose wait it answered (empty in seals older than the binding,
    /// which no longer verify).
    #[serde(default)]
    pub execution_arn: String,
    /// The waiting state's name.
    #[serde(default)]
    pub state: String,
    /// SHA-256 (hex) of the task token it answered.
    #[serde(default)]
    pub task_token_sha256: String,
}

/// The wait a decision answers: what a seal is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealScope {
    pub execution_arn: String,
    pub state: String,
    pub task_token_sha256: String,
}

impl SealScope {
    pub fn of(waiting: &WaitingApproval, execution_arn: &str) -> Self {
        Self {
            execution_arn: execution_arn.to_owned(),
            state: waiting.state.clone().unwrap_or_default(),
            task_token_sha256: hex::encode(Sha256::digest(waiting.token.as_bytes())),
        }
    }

    fn of_seal(seal: &Seal) -> Self {
        Self {
            execution_arn: seal.execution_arn.clone(),
            state: seal.state.clone(),
            task_token_sha256: seal.task_token_sha256.clone(),
        }
    }
}

/// The bytes a seal covers, in this field order (serde keeps declaration order).
#[derive(Serialize)]
struct SealedFields<'a> {
    run_id: &'a str,
    execution_arn: &'a str,
    state: &'a str,
    task_token_sha256: &'a str,
    decision: Decision,
    principal: Option<&'a str>,
    verified: bool,
    approver: &'a str,
    ticket: &'a str,
    comment: Option<&'a str>,
    decided_at: String,
}

impl<'a> SealedFields<'a> {
    fn of(
        run_id: &'a str,
        scope: &'a SealScope,
        decision: Decision,
        approval: &'a Approval,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            run_id,
            execution_arn: &scope.execution_arn,
            state: &scope.state,
            task_token_sha256: &scope.task_token_sha256,
            decision,
            principal: approval.principal.as_deref(),
            verified: approval.verified,
            approver: &approval.approver,
            ticket: &approval.ticket,
            comment: approval.comment.as_deref(),
            decided_at: at.to_rfc3339_opts(SecondsFormat::Millis, true),
        }
    }

    fn bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::internal(format!("encoding a seal: {e}")))
    }
}

/// The most bytes KMS `GenerateMac` and `VerifyMac` take as a message.
pub const MAC_MESSAGE_MAX_BYTES: usize = 4096;

/// `message` if KMS can seal it: a decision's free text (comment, approver, ticket) is
/// bounded in characters by the approve function, and 2,000 characters outside ASCII are
/// up to 8,000 bytes; refused here, naming what to shorten, before anything is answered.
fn sealable(message: Vec<u8>) -> Result<Vec<u8>> {
    if message.len() > MAC_MESSAGE_MAX_BYTES {
        return Err(Error::input(format!(
            "comment: the decision to seal is {} bytes, over the {MAC_MESSAGE_MAX_BYTES} KMS seals; shorten the comment (or the approver or ticket)",
            message.len()
        )));
    }
    Ok(message)
}

/// Seals and verifies decisions with the stack's HMAC key.
#[derive(Clone, Debug)]
pub struct Sealer {
    kms: aws_sdk_kms::Client,
    key: String,
}

impl Sealer {
    pub fn new(kms: aws_sdk_kms::Client, key: impl Into<String>) -> Self {
        Self {
            kms,
            key: key.into(),
        }
    }

    /// With the key [`APPROVAL_KEY_ENV`] names; `None` when it is not set.
    pub fn from_env(kms: aws_sdk_kms::Client) -> Option<Self> {
        std::env::var(APPROVAL_KEY_ENV)
            .ok()
            .filter(|k| !k.trim().is_empty())
            .map(|key| Self::new(kms, key))
    }

    /// The function's sealer, or the error that says the function cannot verify
    /// approvals without one (a deployment fault, not an input's).
    pub fn required(sealer: Option<&Self>) -> Result<&Self> {
        sealer.ok_or_else(|| {
            Error::contract(format!(
                "{APPROVAL_KEY_ENV} is not set on this function: it cannot verify approvals"
            ))
        })
    }

    /// Seals `decision` on run `run_id`, answering the wait `scope`, as of the approval's
    /// `approved_at`.
    pub async fn seal(
        &self,
        run_id: &str,
        scope: &SealScope,
        decision: Decision,
        approval: &Approval,
    ) -> Result<Seal> {
        let at = approval
            .approved_at
            .ok_or_else(|| Error::internal("a decision to seal has no time"))?;
        let message = sealable(SealedFields::of(run_id, scope, decision, approval, at).bytes()?)?;
        let out = self
            .kms
            .generate_mac()
            .key_id(&self.key)
            .mac_algorithm(ALGORITHM)
            .message(Blob::new(message))
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("KMS GenerateMac with {}", self.key), e))?;
        let mac = out.mac().ok_or_else(|| {
            Error::new(
                ErrorKind::ServiceError,
                "KMS GenerateMac answered without a MAC",
            )
        })?;
        Ok(Seal {
            key_id: out.key_id().unwrap_or(&self.key).to_owned(),
            algorithm: ALGORITHM.as_str().to_owned(),
            mac: base64::engine::general_purpose::STANDARD.encode(mac.as_ref()),
            execution_arn: scope.execution_arn.clone(),
            state: scope.state.clone(),
            task_token_sha256: scope.task_token_sha256.clone(),
        })
    }

    /// Checks that `approval` is the approve function's sealed approval of run `run_id`,
    /// given while `execution_arn` waited in `state`: `ApprovalMissing` when it carries
    /// no seal, a seal of another algorithm, key, execution or state, or one that does not
    /// match (altered, or made for another run or decision).
    pub async fn verify(
        &self,
        run_id: &str,
        execution_arn: Option<&str>,
        state: &str,
        approval: &Approval,
    ) -> Result<()> {
        let who = format!("the approval of run {run_id} by {:?}", approval.approver);
        let (seal, at, mac) = seal_of(&who, approval, execution_arn, state)?;
        let scope = SealScope::of_seal(seal);
        let message = SealedFields::of(run_id, &scope, Decision::Approve, approval, at).bytes()?;
        // Always this function's key, never the one the seal names: a seal made with
        // any other key must not pass.
        let answer = self
            .kms
            .verify_mac()
            .key_id(&self.key)
            .mac_algorithm(ALGORITHM)
            .message(Blob::new(message))
            .mac(Blob::new(mac))
            .send()
            .await;
        match answer {
            // KMS names the key it verified with (its ARN); the seal must name the same
            // one. (The emulator echoes an alias back instead: nothing to compare then.)
            Ok(out) if out.mac_valid() => match out.key_id() {
                Some(used)
                    if !used.starts_with("alias/") && key_tail(used) != key_tail(&seal.key_id) =>
                {
                    Err(Error::new(
                        ErrorKind::ApprovalMissing,
                        format!(
                            "{who} names key {:?}, but this function verifies with {used}",
                            seal.key_id
                        ),
                    ))
                }
                _ => Ok(()),
            },
            Ok(_) => Err(mismatch(&who)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_kms_invalid_mac_exception()) =>
            {
                Err(mismatch(&who))
            }
            Err(e) => Err(Error::from_sdk(
                &format!("KMS VerifyMac with {}", self.key),
                e,
            )),
        }
    }
}

/// The parts of `approval`'s seal that need no key: present, of this algorithm, with a
/// time to check it at, and bound to this wait (`execution_arn` in `state`); the seal,
/// the approval's time and the MAC's bytes, for KMS to verify.
fn seal_of<'a>(
    who: &str,
    approval: &'a Approval,
    execution_arn: Option<&str>,
    state: &str,
) -> Result<(&'a Seal, DateTime<Utc>, Vec<u8>)> {
    let Some(seal) = &approval.seal else {
        return Err(Error::new(ErrorKind::ApprovalMissing, format!(
            "{who} is not sealed: approvals must come through the approve function (drpilot approve), not a raw SendTaskSuccess"
        )));
    };
    let Some(at) = approval.approved_at else {
        return Err(Error::new(
            ErrorKind::ApprovalMissing,
            format!("{who} has no approved_at: its seal cannot be checked"),
        ));
    };
    if seal.algorithm != ALGORITHM.as_str() {
        return Err(Error::new(
            ErrorKind::ApprovalMissing,
            format!(
                "{who} is sealed with {:?}, expected {}",
                seal.algorithm,
                ALGORITHM.as_str()
            ),
        ));
    }
    let Ok(mac) = base64::engine::general_purpose::STANDARD.decode(&seal.mac) else {
        return Err(Error::new(
            ErrorKind::ApprovalMissing,
            format!("{who}: its seal's mac is not base64"),
        ));
    };
    let Some(execution_arn) = execution_arn.filter(|arn| !arn.is_empty()) else {
        return Err(Error::new(
            ErrorKind::ApprovalMissing,
            format!("{who}: this execution's ARN is unknown, so no seal can be bound to it"),
        ));
    };
    if seal.execution_arn != execution_arn {
        return Err(Error::new(
            ErrorKind::ApprovalMissing,
            format!(
                "{who} was sealed for execution {:?}, not this one ({execution_arn}): a seal answers one wait of one execution",
                seal.execution_arn
            ),
        ));
    }
    if seal.state != state {
        return Err(Error::new(
            ErrorKind::ApprovalMissing,
            format!(
                "{who} answered the wait in state {:?}, not {state}",
                seal.state
            ),
        ));
    }
    Ok((seal, at, mac))
}

/// A key's id from its ARN (`arn:…:key/ID`) or the id itself: KMS answers with the ARN,
/// the emulator with the bare id.
fn key_tail(key: &str) -> &str {
    key.rsplit_once(":key/").map_or(key, |(_, id)| id)
}

fn mismatch(who: &str) -> Error {
    Error::new(ErrorKind::ApprovalMissing, format!(
        "{who}: its seal does not match (altered after sealing, or sealed for another run or decision)"
    ))
}

/// The approval (or failback confirmation) an execution waits for, read from its history:
/// the token to answer with and what the state machine put beside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaitingApproval {
    pub token: String,
    /// The run the approval belongs to (the task's `run_id` message attribute).
    pub run_id: Option<String>,
    /// The run's profile (`profile` attribute).
    pub profile: Option<String>,
    /// Who started the run, when a person did (`started_by` attribute; `none` otherwise).
    pub started_by: Option<String>,
    /// The waiting state's name (from its `TaskStateEntered` event).
    pub state: Option<String>,
    /// What earlier waits of the same execution were answered with (a failback's first
    /// confirmation, when the second is waiting).
    pub answered: Vec<Approval>,
}

impl WaitingApproval {
    /// From the waiting task's parameters: its message attributes, or for the token the
    /// `Task token:` line of its message.
    pub fn from_parameters(parameters: &str) -> Option<Self> {
        let p: Value = serde_json::from_str(parameters).ok()?;
        let attribute = |name: &str| {
            p["MessageAttributes"][name]["StringValue"]
                .as_str()
                .filter(|v| !v.is_empty() && *v != "none")
                .map(str::to_owned)
        };
        let token = attribute("task_token").or_else(|| {
            p["Message"]
                .as_str()?
                .lines()
                .find_map(|l| l.strip_prefix("Task token: "))
                .map(|t| t.trim().to_owned())
        })?;
        Some(Self {
            token,
            run_id: attribute("run_id"),
            profile: attribute("profile"),
            started_by: attribute("started_by"),
            state: None,
            answered: Vec::new(),
        })
    }
}

/// The approval `events` (an execution's history, oldest first) leave waiting: the last
/// token-waiting task submitted (its request sent: an answer before that can be lost on
/// the emulator) and not yet answered, failed or timed out.
pub fn waiting(events: &[HistoryEvent]) -> Option<WaitingApproval> {
    let mut scheduled_approval = None;
    let mut waiting = None;
    let mut entered = None;
    let mut answered = Vec::new();
    for event in events {
        if let Some(state) = event.state_entered_event_details() {
            entered = Some(state.name().to_owned());
        }
        if let Some(scheduled) = event.task_scheduled_event_details() {
            if scheduled.resource() == WAIT_FOR_TOKEN {
                scheduled_approval =
                    WaitingApproval::from_parameters(scheduled.parameters()).map(|mut w| {
                        w.state = entered.clone();
                        w
                    });
            }
        }
        if let Some(succeeded) = event
            .task_succeeded_event_details()
            .filter(|d| d.resource() == WAIT_FOR_TOKEN)
        {
            if let Some(approval) = succeeded
                .output()
                .and_then(|o| serde_json::from_str::<Approval>(o).ok())
            {
                answered.push(approval);
            }
        }
        if event
            .task_submitted_event_details()
            .is_some_and(|d| d.resource() == WAIT_FOR_TOKEN)
        {
            waiting = scheduled_approval.take();
        }
        let answered_now = [
            event.task_succeeded_event_details().map(|d| d.resource()),
            event.task_failed_event_details().map(|d| d.resource()),
            event.task_timed_out_event_details().map(|d| d.resource()),
        ];
        if answered_now.contains(&Some(WAIT_FOR_TOKEN)) {
            waiting = None;
        }
    }
    waiting.map(|mut w: WaitingApproval| {
        w.answered = answered;
        w
    })
}

/// An operator's approval, as `drpilot approve` sends it through the task token: what
/// promote receives, and each of a failback's two confirmations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub approver: String,
    pub ticket: String,
    #[serde(default)]
    pub approved_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub comment: Option<String>,
    /// The IAM principal the approver proved by a signed `sts:GetCallerIdentity` the
    /// approve function executed ([`crate::identity`]); never read from the event.
    #[serde(default)]
    pub principal: Option<String>,
    /// The principal is STS's answer, not the caller's word (false only in records written
    /// before identities were proven).
    #[serde(default)]
    pub verified: bool,
    /// The approve function's KMS HMAC over the decision (below); promote
    /// refuses an approval without a valid one.
    #[serde(default)]
    pub seal: Option<Seal>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_approvals_read_their_attributes() {
        let attrs = r#"{"MessageAttributes": {"task_token": {"DataType": "String", "StringValue": "tok-1"}, "run_id": {"StringValue": "r1"}, "profile": {"StringValue": "p"}, "started_by": {"StringValue": "none"}}, "Message": "x"}"#;
        let w = WaitingApproval::from_parameters(attrs).unwrap();
        assert_eq!(w.token, "tok-1");
        assert_eq!(w.run_id.as_deref(), Some("r1"));
        assert_eq!(w.profile.as_deref(), Some("p"));
        assert_eq!(w.started_by, None);
        let message = r#"{"Message": "approve it\n\nTask token: tok-2"}"#;
        assert_eq!(
            WaitingApproval::from_parameters(message).unwrap().token,
            "tok-2"
        );
        assert_eq!(WaitingApproval::from_parameters("{}"), None);
    }

    #[test]
    fn a_decision_too_long_for_kms_is_refused_naming_the_comment() {
        assert!(sealable(vec![b'x'; MAC_MESSAGE_MAX_BYTES]).is_ok());
        // 2,000 characters the approve function allows, 3 bytes each.
        let err = sealable("☃".repeat(2000).into_bytes()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InputError);
        assert!(err.message.starts_with("comment:"), "{err}");
    }

    #[test]
    fn sealed_fields_keep_their_order_and_precision() {
        let approval = Approval {
            approver: "alice".into(),
            ticket: "CHG-1".into(),
            approved_at: None,
            comment: None,
            principal: Some("arn:aws:iam::1:user/a".into()),
            verified: true,
            seal: None,
        };
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        let scope = SealScope {
            execution_arn: "arn:aws:states:us-east-1:1:execution:drpilot-drill:r1.1".into(),
            state: DRILL_APPROVAL_STATE.into(),
            task_token_sha256: "ab".into(),
        };
        let bytes = SealedFields::of("r1", &scope, Decision::Approve, &approval, at)
            .bytes()
            .unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"run_id":"r1","execution_arn":"arn:aws:states:us-east-1:1:execution:drpilot-drill:r1.1","state":"RequestApproval","task_token_sha256":"ab","decision":"approve","principal":"arn:aws:iam::1:user/a","verified":true,"approver":"alice","ticket":"CHG-1","comment":null,"decided_at":"2026-12-01T10:00:00.500Z"}"#
        );
        assert_eq!(key_tail("arn:aws:kms:us-east-1:1:key/abc-1"), "abc-1");
        assert_eq!(key_tail("abc-1"), "abc-1");
    }
}
