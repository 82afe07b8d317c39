//! An execution's progress read from its history: which states ran, how long, which
//! failed, whether it waits for an approval (and the task token to answer with), and what
//! bringup and teardown returned.

use aws_sdk_sfn::types::{ExecutionStatus, HistoryEvent};
use chrono::{DateTime, Utc};
use drpilot_shared::approval::{WaitingApproval, WAIT_FOR_TOKEN};
use drpilot_shared::receipt::PhaseStatus;
use drpilot_shared::run::{PhaseOutput, RunContext, TeardownOutput};
use drpilot_shared::stage::Phase;
use drpilot_shared::stage::Stage;
use drpilot_shared::time::{seconds, utc as time};
use serde::Serialize;
use serde_json::Value;

use crate::CliError;

pub use drpilot_shared::error::readable_cause;

/// One state of the run as the history shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub state: &'static str,
    pub phase: Stage,
    pub entered_at: Option<DateTime<Utc>>,
    pub exited_at: Option<DateTime<Utc>>,
    /// `Error: cause` of the task's last failure, when it failed.
    pub failed: Option<String>,
    /// Why the phase did nothing, when it reported itself skipped.
    pub skipped: Option<String>,
    pub attempts: u32,
}

impl Step {
    fn new(stage: Stage) -> Self {
        Self {
            state: stage.state_name(),
            phase: stage,
            entered_at: None,
            exited_at: None,
            failed: None,
            skipped: None,
            attempts: 0,
        }
    }

    pub fn seconds(&self) -> Option<f64> {
        Some(seconds(self.exited_at? - self.entered_at?))
    }
}

/// Where an execution is, as Step Functions reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionState {
    #[default]
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Aborted,
    PendingRedrive,
}

impl ExecutionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::TimedOut => "TIMED_OUT",
            Self::Aborted => "ABORTED",
            Self::PendingRedrive => "PENDING_REDRIVE",
        }
    }
}

impl From<&ExecutionStatus> for ExecutionState {
    fn from(status: &ExecutionStatus) -> Self {
        match status {
            ExecutionStatus::Running => Self::Running,
            ExecutionStatus::Succeeded => Self::Succeeded,
            ExecutionStatus::TimedOut => Self::TimedOut,
            ExecutionStatus::Aborted => Self::Aborted,
            ExecutionStatus::PendingRedrive => Self::PendingRedrive,
            // FAILED, and any status this CLI does not know yet: not a success.
            _ => Self::Failed,
        }
    }
}

/// Compares with the name Step Functions uses (`"SUCCEEDED"`).
impl PartialEq<&str> for ExecutionState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for ExecutionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Progress {
    pub execution_arn: String,
    pub status: ExecutionState,
    pub started_at: Option<DateTime<Utc>>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub steps: Vec<Step>,
    /// The token `drpilot approve`/`deny` answers, while the run waits for one.
    #[serde(skip)]
    pub waiting_token: Option<String>,
    pub waiting_for_approval: bool,
    /// The approval request's message, while waiting.
    pub approval_message: Option<String>,
    /// The execution's input, as it was started.
    pub input: Option<Value>,
    /// Bringup's output (the run context), once bringup succeeded.
    pub run: Option<RunContext>,
    /// The execution's output (teardown's answer), once it succeeded.
    pub output: Option<TeardownOutput>,
    pub error: Option<String>,
    pub cause: Option<String>,
}

impl Progress {
    pub fn finished(&self) -> bool {
        self.status != ExecutionState::Running
    }

    pub fn succeeded(&self) -> bool {
        self.status == ExecutionState::Succeeded
    }

    /// The run this execution belongs to: bringup's run id, else the execution's name
    /// without its `.<n>`.
    pub fn run_id(&self) -> String {
        match &self.run {
            Some(run) => run.run_id.clone(),
            None => {
                let name = self.execution_arn.rsplit(':').next().unwrap_or_default();
                drpilot_shared::record::ExecutionName::parse(name).run_id
            }
        }
    }
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
        status: ExecutionState::from(described.status()),
        started_at: time(described.start_date()),
        stopped_at: described.stop_date().and_then(time),
        output: described
            .output()
            .and_then(|o| serde_json::from_str(o).ok()),
        input: described.input().and_then(|i| serde_json::from_str(i).ok()),
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
    let mut scheduled_token: Option<String> = None;
    for event in events {
        let at = time(event.timestamp());
        if let Some(entered) = event.state_entered_event_details() {
            current = None;
            if let Some(stage) = Stage::of_state(entered.name()) {
                let index = match progress.steps.iter().position(|s| s.phase == stage) {
                    Some(i) => i,
                    None => {
                        progress.steps.push(Step::new(stage));
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
            if scheduled.resource() == WAIT_FOR_TOKEN {
                scheduled_token =
                    WaitingApproval::from_parameters(scheduled.parameters()).map(|w| w.token);
                progress.approval_message = serde_json::from_str::<Value>(scheduled.parameters())
                    .ok()
                    .and_then(|p| p["Message"].as_str().map(str::to_owned));
            }
        }
        // The request went out: the token can be answered now (an answer before that can
        // be lost on the emulator).
        if event
            .task_submitted_event_details()
            .is_some_and(|d| d.resource() == WAIT_FOR_TOKEN)
        {
            token = scheduled_token.take();
        }
        // An answered (or failed) wait for a task token: nothing to approve any more,
        // until the next one is scheduled (a failback asks twice).
        let answered = [
            event.task_succeeded_event_details().map(|d| d.resource()),
            event.task_failed_event_details().map(|d| d.resource()),
            event.task_timed_out_event_details().map(|d| d.resource()),
        ];
        if answered.contains(&Some(WAIT_FOR_TOKEN)) {
            token = None;
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
        if let Some(succeeded) = event.task_succeeded_event_details() {
            if let Some(i) = current {
                progress.steps[i].failed = None; // a retry succeeded
                progress.steps[i].skipped = succeeded.output().and_then(skip_reason);
            }
        }
        if let Some(exited) = event.state_exited_event_details() {
            if let Some(i) = progress.steps.iter().position(|s| s.state == exited.name()) {
                progress.steps[i].exited_at = at;
                let stage = progress.steps[i].phase;
                if stage == Stage::Phase(Phase::Bringup) && progress.steps[i].failed.is_none() {
                    progress.run = exited.output().and_then(run_context);
                }
                if stage == Stage::Approval {
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

/// The reason a phase gave for skipping, from its task's result (the Lambda invoke result,
/// whose `Payload` is the phase's output).
fn skip_reason(output: &str) -> Option<String> {
    let phase: PhaseOutput = payload(output)?;
    (phase.status == PhaseStatus::Skipped).then(|| phase.reason.unwrap_or_default())
}

/// Bringup's state output: the run context.
fn run_context(output: &str) -> Option<RunContext> {
    payload(output)
}

/// What a Lambda task's function returned: the invoke result's `Payload` (or the output
/// itself when a state passes only the payload on).
fn payload<T: serde::de::DeserializeOwned>(output: &str) -> Option<T> {
    let value: Value = serde_json::from_str(output).ok()?;
    let payload = value.get("Payload").cloned().unwrap_or(value);
    serde_json::from_value(payload).ok()
}
