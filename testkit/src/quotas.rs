//! AWS's Step Functions quotas, held against every execution a test case ran.
//!
//! The emulator runs the real state machines but enforces almost none of AWS's limits,
//! and on AWS some of them end an execution where no `Catch` reaches
//! (`States.DataLimitExceeded` is not matched by `States.ALL`): a drill that passes here
//! would die there without teardown. So when a case's [`crate::LocalAws`] is dropped, every
//! execution in its emulator — Distributed Map children included — is read back and
//! measured against the quotas below; the case fails naming each breach.
//!
//! Sources: "Step Functions service quotas" (256 KiB of UTF-8 for a task's, a state's or
//! an execution's input or output; 25,000 events in an execution's history) and "Lambda
//! quotas" (6 MB for a synchronous invocation's response).
//!
//! It speaks the Step Functions JSON protocol to the emulator over a blocking socket
//! ([`drpilot_tools::local::http_with`]) rather than through the SDK: it runs inside
//! `Drop`, where the case's async runtime is blocked and its pooled connections with it.

use serde_json::{json, Value};

/// A state's, a task's or an execution's input or output, in bytes of UTF-8.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Events in one execution's history.
pub const MAX_HISTORY_EVENTS: usize = 25_000;
/// A synchronous Lambda invocation's response.
pub const MAX_LAMBDA_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

/// The fields of a history event's details that carry a payload.
const PAYLOAD_FIELDS: [&str; 3] = ["input", "output", "parameters"];

/// Every breach of the quotas among the executions in the emulator on `port`.
pub fn breaches(port: u16, region: &str) -> Result<Vec<String>, String> {
    let api = Api { port, region };
    let mut found = Vec::new();
    for machine in api.all("ListStateMachines", json!({}), "stateMachines")? {
        let Some(machine_arn) = machine["stateMachineArn"].as_str() else {
            continue;
        };
        let executions = api.all(
            "ListExecutions",
            json!({"stateMachineArn": machine_arn}),
            "executions",
        )?;
        for execution in executions {
            let Some(arn) = execution["executionArn"].as_str() else {
                continue;
            };
            found.extend(api.execution_breaches(arn)?);
            // A Distributed Map's children are executions of their map run, where the
            // emulator lists them (it does not for every version: then their inputs and
            // results are still measured where they enter the parent's history).
            for map_run in api
                .all("ListMapRuns", json!({"executionArn": arn}), "mapRuns")
                .unwrap_or_default()
            {
                let Some(map_run_arn) = map_run["mapRunArn"].as_str() else {
                    continue;
                };
                let children = api
                    .all(
                        "ListExecutions",
                        json!({"mapRunArn": map_run_arn}),
                        "executions",
                    )
                    .unwrap_or_default();
                for child in children {
                    if let Some(child_arn) = child["executionArn"].as_str() {
                        found.extend(api.execution_breaches(child_arn)?);
                    }
                }
            }
        }
    }
    Ok(found)
}

/// What one history event breaches: each payload over 256 KiB, a Lambda result over 6 MB.
pub fn event_breaches(execution_arn: &str, event: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let Some(fields) = event.as_object() else {
        return found;
    };
    let kind = event["type"].as_str().unwrap_or("?");
    for (name, details) in fields {
        if !name.ends_with("EventDetails") {
            continue;
        }
        for field in PAYLOAD_FIELDS {
            let Some(payload) = details[field].as_str() else {
                continue;
            };
            if payload.len() > MAX_PAYLOAD_BYTES {
                found.push(format!(
                    "{execution_arn}: event {} ({kind}{}): {field} of {} bytes, over Step Functions' {MAX_PAYLOAD_BYTES}",
                    event["id"],
                    details["name"].as_str().map(|n| format!(" {n}")).unwrap_or_default(),
                    payload.len()
                ));
            }
            let lambda_result = name == "lambdaFunctionSucceededEventDetails"
                || (name == "taskSucceededEventDetails" && details["resourceType"] == "lambda");
            if lambda_result && field == "output" && payload.len() > MAX_LAMBDA_RESPONSE_BYTES {
                found.push(format!(
                    "{execution_arn}: event {} ({kind}): a Lambda result of {} bytes, over Lambda's {MAX_LAMBDA_RESPONSE_BYTES}",
                    event["id"],
                    payload.len()
                ));
            }
        }
    }
    found
}

struct Api<'a> {
    port: u16,
    region: &'a str,
}

impl Api<'_> {
    fn call(&self, action: &str, body: &Value) -> Result<Value, String> {
        let target = format!("AWSStepFunctions.{action}");
        // The emulator routes by the credential scope and checks no signature.
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential=testing/20260101/{}/states/aws4_request, SignedHeaders=host, Signature=0",
            self.region
        );
        let (status, text) = drpilot_tools::local::http_with(
            self.port,
            "POST",
            "/",
            &[
                ("Content-Type", "application/x-amz-json-1.0"),
                ("X-Amz-Target", &target),
                ("Authorization", &authorization),
            ],
            &body.to_string(),
        )?;
        if status != 200 {
            return Err(format!("{action}: HTTP {status}: {text:.300}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("{action}: not JSON ({e}): {text:.300}"))
    }

    /// Every item of a paginated list.
    fn all(&self, action: &str, request: Value, items: &str) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut body = request.clone();
            if let Some(token) = &token {
                body["nextToken"] = json!(token);
            }
            let page = self.call(action, &body)?;
            if let Some(list) = page[items].as_array() {
                out.extend(list.iter().cloned());
            }
            match page["nextToken"].as_str() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    fn execution_breaches(&self, arn: &str) -> Result<Vec<String>, String> {
        let events = self.all(
            "GetExecutionHistory",
            json!({"executionArn": arn, "maxResults": 1000}),
            "events",
        )?;
        let mut found: Vec<String> = events
            .iter()
            .flat_map(|event| event_breaches(arn, event))
            .collect();
        if events.len() > MAX_HISTORY_EVENTS {
            found.push(format!(
                "{arn}: {} history events, over Step Functions' {MAX_HISTORY_EVENTS}",
                events.len()
            ));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_payload_or_lambda_result_is_a_breach() {
        let big = "x".repeat(MAX_PAYLOAD_BYTES + 1);
        let event = json!({"id": 7, "type": "TaskStateExited",
                           "stateExitedEventDetails": {"name": "ReduceRestore", "output": big}});
        let found = event_breaches("arn:e", &event);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("ReduceRestore") && found[0].contains("output"));
        let fine = json!({"id": 8, "type": "TaskStateExited",
                          "stateExitedEventDetails": {"name": "x", "output": "{}"}});
        assert!(event_breaches("arn:e", &fine).is_empty());
        let huge = "x".repeat(MAX_LAMBDA_RESPONSE_BYTES + 1);
        let lambda = json!({"id": 9, "type": "TaskSucceeded",
                            "taskSucceededEventDetails": {"resourceType": "lambda", "output": huge}});
        assert_eq!(event_breaches("arn:e", &lambda).len(), 2);
    }
}
