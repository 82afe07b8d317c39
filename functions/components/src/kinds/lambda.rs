//! `lambda`: the team's verifier, in the style of AWS Backup restore testing. Invoked
//! synchronously with the run (where the staging and the backup are) and the component's
//! `parameters`; its answer `{"status": "passed|failed", "details": {...}}` is the
//! verdict. The verifier must answer within this function's timeout.

use aws_sdk_lambda::primitives::Blob;
use drpilot_shared::component::{ComponentReceipt, LambdaVerifier};
use drpilot_shared::{Error, ErrorKind, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{tail, Cx, Kind, Progress};

/// What a verifier answers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Verdict {
    status: VerdictStatus,
    #[serde(default)]
    details: Value,
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum VerdictStatus {
    Passed,
    Failed,
}

impl Kind for LambdaVerifier {
    async fn check(&self, cx: &Cx<'_>) -> Result<String> {
        let found = cx
            .clients
            .lambda
            .get_function()
            .function_name(&self.function)
            .send()
            .await
            .map_err(|e| {
                // Missing, or not this function's to call: the profile's to fix. A transient
                // fault (a throttle, a 5xx) stays Retryable, and is retried.
                let e = Error::from_sdk(&format!("GetFunction {}", self.function), e);
                if e.kind == ErrorKind::ServiceError {
                    Error::input(format!(
                        "function: the verifier {:?} cannot be reached: {}",
                        self.function, e.message
                    ))
                } else {
                    e
                }
            })?;
        let arn = found
            .configuration()
            .and_then(|c| c.function_arn())
            .unwrap_or(&self.function);
        Ok(format!("would invoke the verifier {arn}"))
    }

    async fn start(&self, cx: &Cx<'_>, receipt: &mut ComponentReceipt) -> Result<Progress> {
        let staging = cx.profile.target.staging(&cx.run.run_id)?;
        let payload = json!({
            "run_id": cx.run.run_id,
            "component": cx.name(),
            "mode": cx.run.input.mode,
            "staging": staging,
            "backup": cx.run.backup,
            "parameters": self.parameters,
        });
        let answer = cx
            .clients
            .lambda
            .invoke()
            .function_name(&self.function)
            .payload(Blob::new(payload.to_string()))
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("Invoke {}", self.function), e))?;
        let body = answer
            .payload()
            .map(|b| String::from_utf8_lossy(b.as_ref()).into_owned())
            .unwrap_or_default();
        receipt.details = json!({"function": self.function, "status_code": answer.status_code()});
        if let Some(function_error) = answer.function_error() {
            receipt.details["function_error"] = json!(function_error);
            receipt.details["answer_tail"] = json!(tail(&body, 2000));
            return Ok(Progress::Failed(Error::new(
                ErrorKind::ServiceError,
                format!(
                    "the verifier {} failed ({function_error}): {}",
                    self.function,
                    drpilot_shared::error::readable_cause(&body)
                ),
            )));
        }
        let verdict: Verdict = match serde_json::from_str(&body) {
            Ok(verdict) => verdict,
            Err(e) => {
                receipt.details["answer_tail"] = json!(tail(&body, 2000));
                return Ok(Progress::Failed(Error::contract(format!(
                    "the verifier {} answered {}, expected {{\"status\": \"passed|failed\", \"details\": {{...}}}} ({e})",
                    self.function,
                    tail(&body, 200)
                ))));
            }
        };
        receipt.details["verdict"] = json!(if verdict.status == VerdictStatus::Passed {
            "passed"
        } else {
            "failed"
        });
        receipt.details["details"] = verdict.details.clone();
        Ok(match verdict.status {
            VerdictStatus::Passed => Progress::Verified {
                restored_point: None,
            },
            VerdictStatus::Failed => Progress::Failed(Error::integrity(format!(
                "the verifier {} says failed: {}",
                self.function,
                tail(&verdict.details.to_string(), 500)
            ))),
        })
    }

    async fn poll(&self, cx: &Cx<'_>, receipt: &mut ComponentReceipt) -> Result<Progress> {
        // The verdict comes with the invocation; a poll only follows a start that was
        // waiting for the S3 restore.
        self.start(cx, receipt).await
    }
}
