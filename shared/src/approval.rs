//! Approvals a run can trust: the approve function (behind a Function URL with `AWS_IAM`
//! auth) records who called it and seals its decision with a KMS HMAC; promote and
//! failback verify the seal before they act, so a raw `SendTaskSuccess` by anyone with
//! `states:SendTaskSuccess` cannot promote.
//!
//! The seal is KMS `GenerateMac` (HMAC-SHA-256) over the run id, the decision, the
//! principal, the approver, the ticket and the time, serialized as one JSON object in a
//! fixed field order ([`SealedFields`]); verifying recomputes the same bytes and asks KMS
//! (`VerifyMac`). The key never leaves KMS.

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::MacAlgorithmSpec;
use aws_sdk_sfn::types::HistoryEvent;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::run::Approval;

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

/// A decision's seal: the key that made it, the algorithm, and the MAC (base64).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    pub key_id: String,
    pub algorithm: String,
    pub mac: String,
}

/// The bytes a seal covers, in this field order (serde keeps declaration order).
#[derive(Serialize)]
struct SealedFields<'a> {
    run_id: &'a str,
    decision: Decision,
    principal: Option<&'a str>,
    approver: &'a str,
    ticket: &'a str,
    decided_at: String,
}

impl<'a> SealedFields<'a> {
    fn of(run_id: &'a str, decision: Decision, approval: &'a Approval, at: DateTime<Utc>) -> Self {
        Self {
            run_id,
            decision,
            principal: approval.principal.as_deref(),
            approver: &approval.approver,
            ticket: &approval.ticket,
            decided_at: at.to_rfc3339_opts(SecondsFormat::Millis, true),
        }
    }

    fn bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::internal(format!("encoding a seal: {e}")))
    }
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

    /// Seals `decision` on run `run_id`, as of the approval's `approved_at`.
    pub async fn seal(
        &self,
        run_id: &str,
        decision: Decision,
        approval: &Approval,
    ) -> Result<Seal> {
        let at = approval
            .approved_at
            .ok_or_else(|| Error::internal("a decision to seal has no time"))?;
        let message = SealedFields::of(run_id, decision, approval, at).bytes()?;
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
        })
    }

    /// Checks that `approval` is the approve function's sealed approval of run `run_id`:
    /// `ApprovalMissing` when it carries no seal, a seal of another algorithm, or one
    /// that does not match (altered, or made for another run or decision).
    pub async fn verify(&self, run_id: &str, approval: &Approval) -> Result<()> {
        let who = format!("the approval of run {run_id} by {:?}", approval.approver);
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
        let message = SealedFields::of(run_id, Decision::Approve, approval, at).bytes()?;
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
            Ok(out) if out.mac_valid() => Ok(()),
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
        })
    }
}

/// The approval `events` (an execution's history, oldest first) leave waiting: the last
/// token-waiting task submitted (its request sent: an answer before that can be lost on
/// the emulator) and not yet answered, failed or timed out.
pub fn waiting(events: &[HistoryEvent]) -> Option<WaitingApproval> {
    let mut scheduled_approval = None;
    let mut waiting = None;
    for event in events {
        if let Some(scheduled) = event.task_scheduled_event_details() {
            if scheduled.resource() == WAIT_FOR_TOKEN {
                scheduled_approval = WaitingApproval::from_parameters(scheduled.parameters());
            }
        }
        if event
            .task_submitted_event_details()
            .is_some_and(|d| d.resource() == WAIT_FOR_TOKEN)
        {
            waiting = scheduled_approval.take();
        }
        let answered = [
            event.task_succeeded_event_details().map(|d| d.resource()),
            event.task_failed_event_details().map(|d| d.resource()),
            event.task_timed_out_event_details().map(|d| d.resource()),
        ];
        if answered.contains(&Some(WAIT_FOR_TOKEN)) {
            waiting = None;
        }
    }
    waiting
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
        let bytes = SealedFields::of("r1", Decision::Approve, &approval, at)
            .bytes()
            .unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"run_id":"r1","decision":"approve","principal":"arn:aws:iam::1:user/a","approver":"alice","ticket":"CHG-1","decided_at":"2026-12-01T10:00:00.500Z"}"#
        );
    }
}
