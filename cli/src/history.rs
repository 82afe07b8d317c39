//! An execution's progress read from its history: which states ran, how long, which
//! failed, whether it waits for an approval (and the task token to answer with), and what
//! bringup and teardown returned.

use aws_sdk_sfn::types::HistoryEvent;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::CliError;

/// The states an operator cares about, in the order they run, with the phase they are.
pub const STEPS: [(&str, &str); 7] = [
    ("Bringup", "bringup"),
    ("Restore", "restore"),
    ("Validate", "validate"),
    ("ParityReport", "parity-report"),
    ("RequestApproval", "approval"),
    ("Promote", "promote"),
    ("Teardown", "teardown"),
];

#[derive(Clone, Debug, Default, Serialize)]
pub struct Step {
    pub state: String,
    pub phase: String,
    pub entered_at: Option<DateTime<Utc>>,
    pub exited_at: Option<DateTime<Utc>>,
    /// `Error: cause` of the task's last failure, when it failed.
    pub failed: Option<String>,
    pub attempts: u32,
}

impl Step {
    pub fn seconds(&self) -> Option<f64> {
        Some((self.exited_at? - self.entered_at?).num_milliseconds() as f64 / 1000.0)
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Progress {
    pub execution_arn: String,
    pub status: String,
    pub started_at: Option<DateTime<Utc>>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub steps: Vec<Step>,
    /// The token `drpilot approve`/`deny` answers, while the run waits for one.
    #[serde(skip)]
    pub waiting_token: Option<String>,
    pub waiting_for_approval: bool,
    /// The approval request's message, while waiting.
    pub approval_message: Option<String>,
    /// Bringup's output (the run context), once bringup succeeded.
    pub run: Option<Value>,
    /// The execution's output (teardown's summary), once finished.
    pub output: Option<Value>,
    pub error: Option<String>,
    pub cause: Option<String>,
}

impl Progress {
    pub fn finished(&self) -> bool {
        self.status != "RUNNING"
    }
}

fn time(t: &aws_sdk_sfn::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(t.to_millis().ok()?)
}

pub async fn fetch(sfn: &aws_sdk_sfn::Client, execution_arn: &str) -> Result<Progress, CliError> {
    let described = sfn
        .describe_execution()
        .execution_arn(execution_arn)
        .send()
        .await
        .map_err(|e| CliError::aws(&format!("DescribeExecution {execution_arn}"), e))?;
    let mut events: Vec<HistoryEvent> = Vec::new();
    let mut pages = sfn
        .get_execution_history()
        .execution_arn(execution_arn)
        .max_results(1000)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page =
            page.map_err(|e| CliError::aws(&format!("GetExecutionHistory {execution_arn}"), e))?;
        events.extend(page.events().iter().cloned());
    }
    let mut progress = Progress {
        execution_arn: execution_arn.to_owned(),
        status: described.status().as_str().to_owned(),
        started_at: time(described.start_date()),
        stopped_at: described.stop_date().and_then(time),
        output: described
            .output()
            .and_then(|o| serde_json::from_str(o).ok()),
        error: described.error().map(str::to_owned),
        cause: described.cause().map(str::to_owned),
        ..Default::default()
    };
    read_events(&mut progress, &events);
    Ok(progress)
}

fn read_events(progress: &mut Progress, events: &[HistoryEvent]) {
    let mut current: Option<usize> = None;
    let mut token: Option<String> = None;
    for event in events {
        let at = time(event.timestamp());
        if let Some(entered) = event.state_entered_event_details() {
            current = None;
            if let Some((state, phase)) = STEPS.iter().find(|(s, _)| *s == entered.name()) {
                let index = match progress.steps.iter().position(|s| s.state == *state) {
                    Some(i) => i,
                    None => {
                        progress.steps.push(Step {
                            state: (*state).to_owned(),
                            phase: (*phase).to_owned(),
                            ..Default::default()
                        });
                        progress.steps.len() - 1
                    }
                };
                let step = &mut progress.steps[index];
                step.entered_at = at;
                step.exited_at = None;
                current = Some(index);
            }
        }
        if let Some(scheduled) = event.task_scheduled_event_details() {
            if let Some(i) = current {
                progress.steps[i].attempts += 1;
            }
            if scheduled.resource() == "publish.waitForTaskToken" {
                token = task_token(scheduled.parameters());
                progress.approval_message = serde_json::from_str::<Value>(scheduled.parameters())
                    .ok()
                    .and_then(|p| p["Message"].as_str().map(str::to_owned));
            }
        }
        if let Some(failed) = event.task_failed_event_details() {
            if let Some(i) = current {
                progress.steps[i].failed = Some(format!(
                    "{}: {}",
                    failed.error().unwrap_or("Error"),
                    readable_cause(failed.cause().unwrap_or_default())
                ));
            }
        }
        if let Some(timed_out) = event.task_timed_out_event_details() {
            if let Some(i) = current {
                progress.steps[i].failed = Some(format!(
                    "{}: {}",
                    timed_out.error().unwrap_or("States.Timeout"),
                    timed_out.cause().unwrap_or_default()
                ));
            }
        }
        if event.task_succeeded_event_details().is_some() {
            if let Some(i) = current {
                progress.steps[i].failed = None; // a retry succeeded
            }
        }
        if let Some(exited) = event.state_exited_event_details() {
            if let Some(i) = progress.steps.iter().position(|s| s.state == exited.name()) {
                progress.steps[i].exited_at = at;
                if exited.name() == "Bringup" && progress.steps[i].failed.is_none() {
                    progress.run = exited
                        .output()
                        .and_then(|o| serde_json::from_str::<Value>(o).ok())
                        .map(|v| v.get("Payload").cloned().unwrap_or(v));
                }
                if exited.name() == "RequestApproval" {
                    token = None;
                }
            }
            current = None;
        }
    }
    // A failed Bringup leaves its output as the error: no run context then.
    if progress.steps.first().is_some_and(|s| s.failed.is_some()) {
        progress.run = None;
    }
    progress.waiting_for_approval = token.is_some() && !progress.finished();
    progress.waiting_token = token.filter(|_| progress.waiting_for_approval);
}

/// The token from the approval task's parameters: its `task_token` message attribute, or
/// the `Task token:` line of its message.
fn task_token(parameters: &str) -> Option<String> {
    let p: Value = serde_json::from_str(parameters).ok()?;
    if let Some(t) = p["MessageAttributes"]["task_token"]["StringValue"].as_str() {
        return Some(t.to_owned());
    }
    p["Message"]
        .as_str()?
        .lines()
        .find_map(|l| l.strip_prefix("Task token: "))
        .map(str::to_owned)
}

/// Lambda errors arrive as `{"errorType": ..., "errorMessage": ...}`; show the message.
pub fn readable_cause(cause: &str) -> String {
    serde_json::from_str::<Value>(cause)
        .ok()
        .and_then(|v| v["errorMessage"].as_str().map(str::to_owned))
        .unwrap_or_else(|| cause.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_token_in_either_place() {
        let attrs = r#"{"MessageAttributes": {"task_token": {"DataType": "String", "StringValue": "tok-1"}}, "Message": "x"}"#;
        assert_eq!(task_token(attrs).as_deref(), Some("tok-1"));
        let message = r#"{"Message": "approve it\n\nTask token: tok-2"}"#;
        assert_eq!(task_token(message).as_deref(), Some("tok-2"));
        assert_eq!(task_token("{}"), None);
    }

    #[test]
    fn lambda_causes_are_unwrapped() {
        assert_eq!(
            readable_cause(r#"{"errorType":"ContractError","errorMessage":"missing artifact"}"#),
            "missing artifact"
        );
        assert_eq!(readable_cause("plain"), "plain");
    }
}
