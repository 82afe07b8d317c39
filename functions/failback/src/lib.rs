//! failback: returns the live data from the DR site to the primary site after a recovery
//! promoted the DR site (`statemachine/failback.asl.json` drives it).
//!
//! One function, one action per step of the state machine:
//! - `preflight` ([`preflight`]): the DR run promoted, the publish pointer is still its
//!   generation, the stack's drill schedule is disabled, the primary is reachable, the
//!   literal confirmations (a drill's) are right, and the lock is free; it takes the lock.
//! - `divergence` ([`divergence`]): compares both sites with the baseline the DR run
//!   started from and writes the plan; keys changed on both sites differently stop the
//!   run with `DivergenceError` unless the input discards the primary's versions.
//! - `copy-back` ([`copy_back`]): checks the two confirmations, copies the DR site's
//!   changes back server-side with promote's engine, recounts, writes the audit record
//!   and publishes the next generation.
//! - `teardown` ([`teardown`]): releases the lock and writes the summary, whatever
//!   happened before.

pub mod copy_back;
pub mod divergence;
pub mod merge;
pub mod preflight;
pub mod teardown;

use drpilot_shared::copy::CopyTuning;
use drpilot_shared::failback::{FailbackFailure, FailbackRun};
use drpilot_shared::input::DEFAULT_ATTEMPTS;
use drpilot_shared::phase::Failed;
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::receipt::PhaseClock;
use drpilot_shared::run::ExecutionInfo;
use drpilot_shared::stage::FailbackStep;
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::{AwsClients, Result, S3Uri};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The stack's drill schedule (EventBridge Scheduler), which must be disabled while the
/// data moves back: `DRPILOT_DRILL_SCHEDULE` (and `DRPILOT_DRILL_SCHEDULE_GROUP`, else
/// `default`) on the function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleRef {
    pub name: String,
    pub group: String,
}

impl ScheduleRef {
    pub fn from_env() -> Option<Self> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Some(Self {
            name: env("DRPILOT_DRILL_SCHEDULE")?,
            group: env("DRPILOT_DRILL_SCHEDULE_GROUP").unwrap_or_else(|| "default".into()),
        })
    }
}

/// What the state machine sends; `action` names the step.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum FailbackRequest {
    Preflight {
        input: Value,
        #[serde(default)]
        execution: ExecutionInfo,
        #[serde(default)]
        retry_count: u32,
    },
    Divergence {
        run: FailbackRun,
        #[serde(default)]
        retry_count: u32,
    },
    CopyBack {
        run: FailbackRun,
        /// The two approvals' answers (task-token outputs); `null` with literal
        /// confirmations.
        #[serde(default)]
        confirmations: Option<Vec<Value>>,
        #[serde(default)]
        retry_count: u32,
    },
    Teardown {
        /// `null` when preflight failed before it knew the run.
        #[serde(default)]
        run: Option<FailbackRun>,
        input: Value,
        #[serde(default)]
        execution: ExecutionInfo,
        #[serde(default)]
        failure: Option<FailbackFailure>,
    },
}

/// A step's output: its receipt and its details (the state machine reads a few).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailbackStepOutput<D> {
    pub receipt: S3Uri,
    pub details: D,
}

/// Everything the response to the state machine may be.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum FailbackResponse {
    Run(Box<FailbackRun>),
    Divergence(FailbackStepOutput<drpilot_shared::failback::DivergenceDetails>),
    CopyBack(Box<FailbackStepOutput<drpilot_shared::failback::CopyBackDetails>>),
    Teardown(teardown::FailbackTeardownOutput),
}

pub struct Failback {
    pub clients: AwsClients,
    pub profiles: ProfileSource,
    pub tuning: CopyTuning,
    pub schedule: Option<ScheduleRef>,
    pub scheduler: aws_sdk_scheduler::Client,
    /// Verifies the approve function's seals on the confirmations.
    pub sealer: Option<drpilot_shared::approval::Sealer>,
}

impl Failback {
    pub fn new(clients: AwsClients) -> Self {
        let clients = clients.for_function("failback");
        let profiles = ProfileSource::from_env(clients.ssm.clone());
        Self {
            scheduler: clients.scheduler(),
            sealer: drpilot_shared::approval::Sealer::from_env(clients.kms()),
            clients,
            profiles,
            tuning: CopyTuning::default(),
            schedule: ScheduleRef::from_env(),
        }
    }

    pub async fn handle(&self, request: FailbackRequest) -> Result<FailbackResponse> {
        match request {
            FailbackRequest::Preflight {
                input,
                execution,
                retry_count,
            } => Box::pin(self.preflight(&input, &execution, retry_count + 1))
                .await
                .map(|run| FailbackResponse::Run(Box::new(run))),
            FailbackRequest::Divergence { run, retry_count } => {
                Box::pin(self.divergence(&run, retry_count + 1))
                    .await
                    .map(FailbackResponse::Divergence)
            }
            FailbackRequest::CopyBack {
                run,
                confirmations,
                retry_count,
            } => Box::pin(self.copy_back(&run, confirmations.as_deref(), retry_count + 1))
                .await
                .map(|out| FailbackResponse::CopyBack(Box::new(out))),
            FailbackRequest::Teardown {
                run,
                input,
                execution,
                failure,
            } => Box::pin(self.teardown(run.as_ref(), &input, &execution, failure))
                .await
                .map(FailbackResponse::Teardown),
        }
    }
}

/// One step's timing and receipt, written when the step ends, success or failure: the
/// phase clock of a failback step.
pub(crate) struct StepClock(PhaseClock<FailbackStep>);

impl StepClock {
    pub(crate) fn start(run_id: &str, step: FailbackStep, attempt: u32, dry_run: bool) -> Self {
        drpilot_shared::phase::record_failback(run_id, step.as_str());
        Self(PhaseClock::start(run_id, step, attempt).dry_run(dry_run))
    }

    /// Writes the step's receipt from how it ended, and hands the result on (a failure
    /// at the last attempt as `ServiceError`, which the state machine does not retry).
    pub(crate) async fn end<T, D: Serialize>(
        self,
        store: &ReceiptStore,
        ended: std::result::Result<(T, D), Failed<D>>,
    ) -> Result<(T, S3Uri)> {
        match ended {
            Ok((out, details)) => {
                let uri = store.put_failback(&self.0.succeeded(&details)?).await?;
                Ok((out, uri))
            }
            Err(Failed { error, details }) => {
                let error = error.at_attempt(self.0.attempt(), DEFAULT_ATTEMPTS);
                store
                    .put_failback(&self.0.failed(&error, details.as_ref())?)
                    .await?;
                Err(error)
            }
        }
    }
}
