//! The operator CLI (`drpilot`, docs/contracts.md): start runs and follow them, approve or
//! deny promotion, read receipts and reports, and run the local drill. Human-readable by
//! default, `--json` for scripts; the exit status says how it ended ([`ExitStatus`]).
//!
//! One module per command under [`commands`]; [`history`] reads an execution's progress,
//! [`html`] renders the report, [`output`] holds the output policy and exit status, and
//! [`error`] turns failures (AWS errors included) into one readable line.

pub mod audit;
pub mod commands;
pub mod error;
pub mod history;
pub mod html;
pub mod output;
pub mod zipfile;

use aws_config::BehaviorVersion;
use drpilot_shared::record::ExecutionName;
use drpilot_shared::AwsClients;

use crate::history::ExecutionState;

pub use commands::approve::{approve, deny};
pub use commands::evidence::{evidence, Controls, EvidencePack};
pub use commands::failback::{failback, FailbackArgs, FailbackProgress};
pub use commands::local;
pub use commands::readiness::readiness;
pub use commands::receipts::{receipts, records, RunRecords};
pub use commands::report::{report, Report};
pub use commands::resume::{resume, ResumeFlags};
pub use commands::runs::{parse_since, runs, RunLine};
pub use commands::start::{follow, start, Approver, AttemptFlags, StartFlags};
pub use commands::status::status;
pub use error::CliError;
pub use output::{ExitStatus, Out};

/// The state machine the CLI drives when none is named: the name the SAM template and the
/// local drill give it.
pub const DEFAULT_STATE_MACHINE: &str = "drpilot-drill";
/// The failback state machine the CLI drives when none is named (`--failback-state-machine`).
pub const FAILBACK_STATE_MACHINE: &str = "drpilot-failback";
/// The error `drpilot deny` fails the approval task with.
pub const DENIED: &str = drpilot_shared::approval::DENIED_ERROR;

/// The AWS clients and the state machine the CLI works with.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub aws: AwsClients,
    pub sfn: aws_sdk_sfn::Client,
    pub sns: aws_sdk_sns::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub state_machine: Option<String>,
    /// The failback state machine (a name or an ARN); [`FAILBACK_STATE_MACHINE`] when
    /// not given.
    pub failback_state_machine: Option<String>,
    /// The approve function (a name, an ARN or its URL); the default stack's, or on the
    /// local stack the served binary, when not given.
    pub approve_function: Option<String>,
    /// These clients talk to the local emulator (no Function URLs, no IAM).
    pub emulator: bool,
    pub out: Out,
}

impl Ctx {
    /// From the environment (credentials chain, region, `AWS_ENDPOINT_URL`), or against
    /// `endpoint` with the emulator's dummy credentials.
    pub async fn new(endpoint: Option<&str>, state_machine: Option<String>, out: Out) -> Self {
        let config = match endpoint {
            Some(endpoint) => AwsClients::emulator_config(endpoint, local::REGION).await,
            None => aws_config::defaults(BehaviorVersion::latest()).load().await,
        };
        Self {
            sfn: aws_sdk_sfn::Client::new(&config),
            sns: aws_sdk_sns::Client::new(&config),
            sqs: aws_sdk_sqs::Client::new(&config),
            aws: AwsClients::from_config(config),
            state_machine,
            failback_state_machine: None,
            approve_function: None,
            emulator: endpoint.is_some(),
            out,
        }
    }

    /// The same stack, reached with another caller's configuration (their credentials):
    /// what a second person's `drpilot` would be.
    pub fn as_caller(&self, config: aws_config::SdkConfig) -> Self {
        Self {
            sfn: aws_sdk_sfn::Client::new(&config),
            sns: aws_sdk_sns::Client::new(&config),
            sqs: aws_sdk_sqs::Client::new(&config),
            aws: AwsClients::from_config(config),
            ..self.clone()
        }
    }

    /// These clients, driving the failback state machine instead of the drill's.
    pub fn failback(&self) -> Self {
        Self {
            state_machine: Some(
                self.failback_state_machine
                    .clone()
                    .unwrap_or_else(|| FAILBACK_STATE_MACHINE.to_owned()),
            ),
            ..self.clone()
        }
    }

    /// The execution of `run` in the drill state machine, else in the failback one (a
    /// failback run answered with `drpilot approve`, `deny` or `status`).
    pub async fn any_execution_arn(&self, run: &str) -> Result<(String, Self), CliError> {
        match self.execution_arn(run).await {
            Ok(arn) => Ok((arn, self.clone())),
            Err(first) => {
                let failback = self.failback();
                match failback.execution_arn(run).await {
                    Ok(arn) => Ok((arn, failback)),
                    Err(_) => Err(first),
                }
            }
        }
    }

    /// Invokes a drpilot function directly (the readiness and approve functions) with
    /// `payload` and answers what it returned as JSON; a function error is a
    /// [`CliError::Function`] naming `what` and the function's message.
    pub async fn invoke_function(
        &self,
        function: &str,
        what: &str,
        payload: &serde_json::Value,
    ) -> Result<serde_json::Value, CliError> {
        let out = self
            .aws
            .lambda()
            .invoke()
            .function_name(function)
            .payload(aws_sdk_lambda::primitives::Blob::new(payload.to_string()))
            .send()
            .await
            .map_err(|e| CliError::aws(&format!("Invoke {function}"), e))?;
        let answer: serde_json::Value = out
            .payload()
            .and_then(|p| serde_json::from_slice(p.as_ref()).ok())
            .unwrap_or_default();
        if let Some(error) = out.function_error() {
            return Err(CliError::Function(format!(
                "{what} failed ({error}): {}",
                answer["errorMessage"].as_str().unwrap_or("no message")
            )));
        }
        Ok(answer)
    }

    /// Starts execution `name` of `machine` with `input`; answers its ARN.
    pub async fn start_execution(
        &self,
        machine: &str,
        name: &str,
        input: &serde_json::Value,
    ) -> Result<String, CliError> {
        let started = self
            .sfn
            .start_execution()
            .state_machine_arn(machine)
            .name(name)
            .input(input.to_string())
            .send()
            .await
            .map_err(|e| CliError::aws("StartExecution", e))?;
        Ok(started.execution_arn().to_owned())
    }

    /// The state machine's ARN: as given (an ARN, or a name to look up), else the one
    /// named [`DEFAULT_STATE_MACHINE`].
    pub async fn state_machine_arn(&self) -> Result<String, CliError> {
        let wanted = self
            .state_machine
            .clone()
            .unwrap_or_else(|| DEFAULT_STATE_MACHINE.to_owned());
        if wanted.starts_with("arn:") {
            return Ok(wanted);
        }
        let mut pages = self.sfn.list_state_machines().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| CliError::aws("ListStateMachines", e))?;
            if let Some(m) = page.state_machines().iter().find(|m| m.name() == wanted) {
                return Ok(m.state_machine_arn().to_owned());
            }
        }
        Err(CliError::Usage(format!(
            "no state machine named {wanted:?}; pass --state-machine NAME|ARN or set DRPILOT_STATE_MACHINE"
        )))
    }

    /// The execution a command about `run` means: an execution ARN as given; a
    /// numbered execution name (`RUN.2`) as named; otherwise the run's running execution, or
    /// its latest when none runs.
    pub async fn execution_arn(&self, run: &str) -> Result<String, CliError> {
        if run.starts_with("arn:") {
            return Ok(run.to_owned());
        }
        if ExecutionName::parse(run).number.is_some() {
            return self.arn_of(run).await;
        }
        // The one still running, if any (an approval waits there); else the latest.
        let executions = self.run_executions(run).await?;
        executions
            .iter()
            .rev()
            .find(|e| e.state == ExecutionState::Running)
            .or(executions.last())
            .map(|e| e.arn.clone())
            .ok_or_else(|| {
                CliError::Usage(format!("no execution of run {run} in this state machine"))
            })
    }

    /// Every execution of `run`, in order: `RUN` (a first execution not named by
    /// drpilot, e.g. by an EventBridge rule) or `RUN.1`, then `RUN.2`, … up to the first
    /// number that does not exist.
    pub async fn run_executions(&self, run: &str) -> Result<Vec<RunExecution>, CliError> {
        let mut found = Vec::new();
        for (name, number) in [(run.to_owned(), 1), (ExecutionName::format(run, 1), 1)] {
            if let Some(e) = self.describe(&name, number).await? {
                found.push(e);
            }
        }
        for number in 2.. {
            match self
                .describe(&ExecutionName::format(run, number), number)
                .await?
            {
                Some(e) => found.push(e),
                None => break,
            }
        }
        Ok(found)
    }

    async fn arn_of(&self, name: &str) -> Result<String, CliError> {
        let machine = self.state_machine_arn().await?;
        Ok(format!(
            "{}:{name}",
            machine.replacen(":stateMachine:", ":execution:", 1)
        ))
    }

    async fn describe(&self, name: &str, number: u32) -> Result<Option<RunExecution>, CliError> {
        let arn = self.arn_of(name).await?;
        match self
            .sfn
            .describe_execution()
            .execution_arn(&arn)
            .send()
            .await
        {
            Ok(described) => Ok(Some(RunExecution {
                name: name.to_owned(),
                arn,
                number,
                state: ExecutionState::from(described.status()),
                input: described.input().and_then(|i| serde_json::from_str(i).ok()),
            })),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_execution_does_not_exist()) =>
            {
                Ok(None)
            }
            Err(err) => Err(CliError::aws(&format!("DescribeExecution {arn}"), err)),
        }
    }
}

/// One execution of a run.
#[derive(Clone, Debug)]
pub struct RunExecution {
    pub name: String,
    pub arn: String,
    /// Its number in the run (an unnumbered first execution is 1).
    pub number: u32,
    pub state: ExecutionState,
    /// The execution input it was started with.
    pub input: Option<serde_json::Value>,
}
