//! components: the profile's databases and services, restored and verified beside the S3
//! restore (a branch of the state machine's `Recover` Parallel), each with its own RTO.
//!
//! One function, several steps of the state machine, each an `action`:
//! - `plan` (once): the phase lifecycle's start (window, re-run), then every component
//!   checked without changing anything — a missing snapshot, an unreachable verifier, a
//!   restore that would reuse the source's identifier — before any is started; returns the
//!   Map's items. A dry run stops here: each component's receipt says what was checked.
//! - `start` and `poll` (per component, in the Map's iterations): start the restore or
//!   check, then poll it after each Wait state until it is verified, fails, or runs out of
//!   time. Every step reads and writes the component's receipt, so a retried step finds
//!   what an earlier attempt did (a restore is never started twice).
//! - `fail` (per component): records the error a Catch caught.
//! - `finish` (once): the phase receipt, failing the phase when a required component did.
//!
//! Teardown deletes what the components created (`shared::restored`).

pub mod kinds;

use chrono::{DateTime, Utc};
use drpilot_shared::component::{
    ComponentOutcome, ComponentReceipt, ComponentSpec, ComponentStatus, CreatedResource,
    ResourceState,
};
use drpilot_shared::details::ComponentsDetails;
use drpilot_shared::error::{bounded_message, readable_cause};
use drpilot_shared::phase::{self, Begun, Failed, Outcome, PhaseResult, Rerun};
use drpilot_shared::profile::{Profile, ProfileSource};
use drpilot_shared::receipt::PhaseStatus;
use drpilot_shared::run::{PhaseOutput, PhaseRequest, RunContext};
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::time::{seconds, Objective};
use drpilot_shared::{AwsClients, Error, ErrorKind, Phase, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use kinds::{Clients, Cx, Progress};

/// What the state machine sends, by step.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ComponentsRequest {
    Plan {
        run: RunContext,
        #[serde(default)]
        retry_count: u32,
    },
    Start {
        run: RunContext,
        component: String,
        #[serde(default)]
        retry_count: u32,
    },
    Poll {
        run: RunContext,
        component: String,
        #[serde(default)]
        retry_count: u32,
    },
    /// A Catch's `$states.errorOutput` for one component.
    Fail {
        run: RunContext,
        component: String,
        error: CaughtError,
    },
    Finish {
        run: RunContext,
        #[serde(default)]
        retry_count: u32,
    },
}

impl ComponentsRequest {
    /// This step's attempt (1-based) and the run's `max_attempts`.
    fn attempt(&self) -> (u32, u32) {
        let (run, retry_count) = match self {
            Self::Plan { run, retry_count }
            | Self::Start {
                run, retry_count, ..
            }
            | Self::Poll {
                run, retry_count, ..
            }
            | Self::Finish { run, retry_count } => (run, *retry_count),
            Self::Fail { run, .. } => (run, 0),
        };
        (retry_count.saturating_add(1), run.input.max_attempts)
    }
}

/// `{"Error": ..., "Cause": ...}` as a Catch hands it on.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CaughtError {
    #[serde(rename = "Error", default)]
    pub error: String,
    #[serde(rename = "Cause", default)]
    pub cause: String,
}

/// `plan`'s answer: the Map's items and its concurrency (no items: nothing to start,
/// outside the window, a dry run, no components).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub items: Vec<PlanItem>,
    pub max_concurrency: u32,
}

impl Plan {
    fn nothing() -> Self {
        Self {
            items: Vec::new(),
            max_concurrency: 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanItem {
    pub name: String,
}

/// `start`/`poll`/`fail`'s answer: where the component stands, and how long the state
/// machine waits before the next poll.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub status: ComponentStatus,
    pub wait_seconds: u64,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Plan(Plan),
    Step(Step),
    Finished(PhaseOutput),
}

pub struct Components {
    pub clients: AwsClients,
    pub kinds: Clients,
    pub profiles: ProfileSource,
}

impl Components {
    pub fn new(clients: AwsClients) -> Self {
        let clients = clients.for_function("components");
        let kinds = Clients::new(&clients);
        let profiles = ProfileSource::from_env(clients.ssm.clone());
        Self {
            clients,
            kinds,
            profiles,
        }
    }

    pub async fn handle(&self, request: ComponentsRequest) -> Result<Answer> {
        // A transient failure at the run's last allowed attempt is not retried (the
        // phase lifecycle's rule, for the steps outside it too).
        let (attempt, max_attempts) = request.attempt();
        // Boxed: a step's future holds the SDK's and is large.
        Box::pin(self.act(request))
            .await
            .map_err(|err| err.at_attempt(attempt, max_attempts))
    }

    async fn act(&self, request: ComponentsRequest) -> Result<Answer> {
        match request {
            ComponentsRequest::Plan { run, retry_count } => {
                let request = PhaseRequest::new(run, retry_count);
                Box::pin(self.plan(&request)).await.map(Answer::Plan)
            }
            ComponentsRequest::Start { run, component, .. } => {
                Box::pin(self.step(&run, &component, false))
                    .await
                    .map(Answer::Step)
            }
            ComponentsRequest::Poll { run, component, .. } => {
                Box::pin(self.step(&run, &component, true))
                    .await
                    .map(Answer::Step)
            }
            ComponentsRequest::Fail {
                run,
                component,
                error,
            } => self.fail(&run, &component, &error).await.map(Answer::Step),
            ComponentsRequest::Finish { run, retry_count } => {
                let request = PhaseRequest::new(run, retry_count);
                Box::pin(self.finish(&request)).await.map(Answer::Finished)
            }
        }
    }

    /// The phase lifecycle's start, the same at planning and at the finish (a re-run
    /// starts over; outside the window both end as skipped).
    async fn begin(&self, request: &PhaseRequest) -> Result<Begun> {
        phase::begin(
            request,
            &self.clients.s3,
            &self.profiles,
            Phase::Components,
            Rerun::StartOver,
        )
        .await
    }

    /// The phase's start and every component checked before any is started.
    async fn plan(&self, request: &PhaseRequest) -> Result<Plan> {
        let run = &request.run;
        let started = match self.begin(request).await? {
            // Skipped outside the window (its receipt written): FinishComponents says so.
            Begun::Ended(_) => return Ok(Plan::nothing()),
            Begun::Started(started) => started,
        };
        let profile = &started.profile;
        let mut checked = Vec::new();
        for spec in &profile.components {
            let cx = self.cx(run, profile, spec, &started.store);
            match kinds::check(&cx).await {
                Ok(line) => checked.push((spec, line)),
                Err(error) => {
                    let error = Error::new(
                        error.kind,
                        format!("component {:?}: {}", spec.name, error.message),
                    );
                    // Nothing was started: the phase fails here, with its receipt.
                    let failed: std::result::Result<Outcome<ComponentsDetails>, _> =
                        Err(Failed::from(error));
                    return phase::finish(request, &started, failed)
                        .await
                        .map(|_| Plan::nothing());
                }
            }
        }
        if run.input.dry_run {
            for (spec, line) in &checked {
                let mut receipt = new_receipt(run, spec, Utc::now(), None);
                receipt.status = ComponentStatus::Skipped;
                receipt.reason = Some(format!("dry run: {line}"));
                receipt.dry_run = true;
                started.store.put_component(&receipt).await?;
            }
            return Ok(Plan::nothing());
        }
        info!(
            components = checked.len(),
            "every component checked; starting them"
        );
        Ok(Plan {
            items: checked
                .iter()
                .map(|(spec, _)| PlanItem {
                    name: spec.name.clone(),
                })
                .collect(),
            max_concurrency: profile.component_concurrency,
        })
    }

    fn cx<'a>(
        &'a self,
        run: &'a RunContext,
        profile: &'a Profile,
        spec: &'a ComponentSpec,
        store: &'a ReceiptStore,
    ) -> Cx<'a> {
        Cx {
            run,
            profile,
            spec,
            store,
            clients: &self.kinds,
        }
    }

    /// `start` (`polling` false) or `poll` one component.
    async fn step(&self, run: &RunContext, name: &str, polling: bool) -> Result<Step> {
        phase::record_run(&run.run_id, Phase::Components);
        let profile = self.profiles.load(&run.input.profile).await?;
        let spec = profile
            .components
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                Error::input(format!(
                    "component {name:?} is not in profile {} (was it changed during the run?)",
                    run.input.profile
                ))
            })?;
        let store = run.receipts(&self.clients.s3, &profile);
        let now = Utc::now();
        let cx = self.cx(run, &profile, spec, &store);
        let earlier = store.get_component(&run.run_id, name).await?;
        let this_execution = |r: &ComponentReceipt| r.execution == run.execution_arn;
        let mut receipt = match (polling, earlier) {
            (true, Some(receipt)) => receipt,
            (true, None) => {
                return Err(Error::internal(format!(
                    "component {name:?}: polled before it was started (no receipt)"
                )))
            }
            // A retried start of this execution carries on from what its first attempt
            // did (a verdict stands; a job or command is not started twice) ...
            (false, Some(earlier)) if this_execution(&earlier) => earlier,
            // ... a later execution starts the component over, keeping what earlier ones
            // created and teardown has not deleted.
            (false, earlier) => new_receipt(run, spec, now, earlier.as_ref()),
        };
        if receipt.status != ComponentStatus::Running {
            // Already decided (a retried step after its receipt was written).
            return Ok(step_of(&receipt, spec));
        }
        receipt.polls += u32::from(polling);
        receipt.updated_at = now;
        let progress = if now > receipt.deadline_at {
            Progress::Failed(Error::new(
                ErrorKind::ServiceError,
                format!(
                    "not verified within timeout_seconds ({} s){}",
                    spec.timeout_seconds,
                    receipt
                        .reason
                        .as_ref()
                        .map(|r| format!("; last: {r}"))
                        .unwrap_or_default()
                ),
            ))
        } else if let Some(waiting) = self.waiting_for_restore(&cx).await? {
            waiting
        } else {
            // Intent first: what starting will create is on record before it exists.
            if receipt.state.get("started").is_none() {
                for resource in kinds::creates(&cx) {
                    if !receipt
                        .created_resources
                        .iter()
                        .any(|r| r.resource == resource)
                    {
                        receipt
                            .created_resources
                            .push(CreatedResource::new(resource));
                    }
                }
                store.put_component(&receipt).await?;
                let progress = kinds::start(&cx, &mut receipt).await?;
                receipt.state["started"] = json!(now);
                progress
            } else {
                kinds::poll(&cx, &mut receipt).await?
            }
        };
        settle(&mut receipt, run, progress, now);
        store.put_component(&receipt).await?;
        info!(
            component = name,
            status = receipt.status.as_str(),
            polls = receipt.polls,
            "component step"
        );
        Ok(step_of(&receipt, spec))
    }

    /// `Some(Waiting)` while an `after_restore` component waits for the S3 restore; a
    /// failed restore fails it.
    async fn waiting_for_restore(&self, cx: &Cx<'_>) -> Result<Option<Progress>> {
        if !cx.spec.after_restore {
            return Ok(None);
        }
        let restore = cx.store.get_phase(&cx.run.run_id, Phase::Restore).await?;
        Ok(match restore {
            Some(r) if r.status == PhaseStatus::Success && !r.dry_run => None,
            Some(r) if r.status == PhaseStatus::Failed => Some(Progress::Failed(Error::new(
                ErrorKind::ServiceError,
                "after_restore: the S3 restore failed, so there is nothing staged to verify",
            ))),
            _ if !cx.run.input.runs(Phase::Restore) => Some(Progress::Failed(Error::input(
                "after_restore: this execution does not run restore and the run has no successful one",
            ))),
            _ => Some(Progress::Waiting("waiting for the S3 restore".into())),
        })
    }

    async fn fail(&self, run: &RunContext, name: &str, caught: &CaughtError) -> Result<Step> {
        phase::record_run(&run.run_id, Phase::Components);
        let profile = self.profiles.load(&run.input.profile).await?;
        let spec = profile.components.iter().find(|c| c.name == name);
        let store = run.receipts(&self.clients.s3, &profile);
        let now = Utc::now();
        let mut receipt = match store.get_component(&run.run_id, name).await? {
            Some(receipt) => receipt,
            None => match spec {
                Some(spec) => new_receipt(run, spec, now, None),
                None => {
                    return Err(Error::input(format!(
                        "component {name:?} is not in profile {}",
                        run.input.profile
                    )))
                }
            },
        };
        let kind = ErrorKind::from_name(&caught.error).unwrap_or(ErrorKind::ServiceError);
        let error = Error::new(
            kind,
            format!("{}: {}", caught.error, readable_cause(&caught.cause)),
        );
        warn!(component = name, error = %error, "component failed");
        // The receipt names drpilot's error (a Lambda timeout is a ServiceError); the
        // caught name stays in the reason.
        settle(&mut receipt, run, Progress::Failed(error), now);
        store.put_component(&receipt).await?;
        Ok(Step {
            name: name.to_owned(),
            status: receipt.status,
            wait_seconds: 0,
            reason: receipt.reason.as_deref().map(bounded_message),
        })
    }

    /// The phase receipt from the components' receipts, its time running from the first
    /// component's start (the phase began at planning).
    async fn finish(&self, request: &PhaseRequest) -> Result<PhaseOutput> {
        let mut started = match self.begin(request).await? {
            Begun::Ended(output) => return Ok(output),
            Begun::Started(started) => started,
        };
        let mut first_start = None;
        let result = self
            .judge(&started.context(&request.run), &mut first_start)
            .await;
        if let Some(at) = first_start {
            started.since(at);
        }
        phase::finish(request, &started, result).await
    }

    /// Every component's verdict (a component left without one failed); fails when a
    /// required one did. `first_start` is when the earliest started.
    async fn judge(
        &self,
        phase_run: &phase::PhaseRun<'_>,
        first_start: &mut Option<DateTime<Utc>>,
    ) -> PhaseResult<ComponentsDetails> {
        let run = phase_run.run;
        let mut outcomes = Vec::new();
        let mut checked = Vec::new();
        let mut failures = Vec::new();
        for spec in &phase_run.profile.components {
            let receipt = phase_run
                .store
                .get_component(&run.run_id, &spec.name)
                .await?;
            let receipt = match receipt {
                Some(r) if r.status == ComponentStatus::Running => {
                    // The Map ended without a verdict (its failure step failed too).
                    let mut r = r;
                    settle(
                        &mut r,
                        run,
                        Progress::Failed(Error::new(
                            ErrorKind::ServiceError,
                            "the run stopped polling it before a verdict",
                        )),
                        Utc::now(),
                    );
                    phase_run.store.put_component(&r).await?;
                    r
                }
                Some(r) => r,
                None => {
                    let mut r = new_receipt(run, spec, Utc::now(), None);
                    settle(
                        &mut r,
                        run,
                        Progress::Failed(Error::new(ErrorKind::ServiceError, "never started")),
                        Utc::now(),
                    );
                    phase_run.store.put_component(&r).await?;
                    r
                }
            };
            if receipt.dry_run {
                checked.push(format!(
                    "{}: {}",
                    receipt.name,
                    receipt.reason.clone().unwrap_or_default()
                ));
            }
            if receipt.status == ComponentStatus::Failed && receipt.required {
                failures.push(receipt.clone());
            }
            if !receipt.dry_run {
                *first_start =
                    Some(first_start.map_or(receipt.started_at, |t| t.min(receipt.started_at)));
            }
            outcomes.push(ComponentOutcome::from(&receipt));
        }
        let details = ComponentsDetails {
            verified: outcomes
                .iter()
                .filter(|o| o.status == ComponentStatus::Verified)
                .count() as u32,
            failed: outcomes
                .iter()
                .filter(|o| o.status == ComponentStatus::Failed)
                .count() as u32,
            components: outcomes,
            checked,
        };
        match failures.first() {
            None => Ok(Outcome::Done(details)),
            Some(first) => {
                let kind = first
                    .error
                    .as_deref()
                    .and_then(ErrorKind::from_name)
                    .unwrap_or(ErrorKind::IntegrityError);
                let names: Vec<String> = failures
                    .iter()
                    .map(|f| {
                        format!(
                            "{} ({}: {})",
                            f.name,
                            f.error.as_deref().unwrap_or("failed"),
                            f.reason.as_deref().unwrap_or("failed")
                        )
                    })
                    .collect();
                Err(Failed::with_details(
                    Error::new(
                        kind,
                        format!("required components failed: {}", names.join("; ")),
                    ),
                    details,
                ))
            }
        }
    }
}

/// A fresh receipt of `spec` in `run`, keeping the resources an earlier receipt lists as
/// not deleted (an earlier attempt or execution may have created them).
fn new_receipt(
    run: &RunContext,
    spec: &ComponentSpec,
    now: DateTime<Utc>,
    earlier: Option<&ComponentReceipt>,
) -> ComponentReceipt {
    ComponentReceipt {
        run_id: run.run_id.clone(),
        name: spec.name.clone(),
        kind: spec.kind.name().to_owned(),
        required: spec.required,
        status: ComponentStatus::Running,
        reason: None,
        error: None,
        started_at: now,
        updated_at: now,
        verified_at: None,
        deadline_at: now + chrono::TimeDelta::seconds(spec.timeout_seconds as i64),
        polls: 0,
        rto: Objective::measure(None, spec.rto_target_seconds),
        rpo_seconds: None,
        rpo_target_seconds: spec.rpo_target_seconds,
        details: json!({}),
        state: json!({}),
        created_resources: earlier
            .map(|e| {
                e.created_resources
                    .iter()
                    .filter(|r| r.state != ResourceState::Deleted)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default(),
        dry_run: false,
        execution: run.execution_arn.clone(),
    }
}

/// Records `progress` in the receipt: the verdict, and RTO (kickoff to verified) and RPO
/// (kickoff minus the restored point) when verified.
fn settle(
    receipt: &mut ComponentReceipt,
    run: &RunContext,
    progress: Progress,
    now: DateTime<Utc>,
) {
    receipt.updated_at = now;
    match progress {
        Progress::Waiting(why) => {
            receipt.status = ComponentStatus::Running;
            receipt.reason = Some(why);
        }
        Progress::Verified { restored_point } => {
            receipt.status = ComponentStatus::Verified;
            receipt.reason = None;
            receipt.verified_at = Some(now);
            receipt.rto = Objective::measure(
                Some(seconds(now - run.kickoff_at)),
                receipt.rto.target_seconds,
            );
            receipt.rpo_seconds = restored_point.map(|at| seconds(run.kickoff_at - at));
        }
        Progress::Failed(error) => {
            receipt.status = ComponentStatus::Failed;
            receipt.error = Some(error.kind.name().to_owned());
            receipt.reason = Some(error.message);
        }
    }
}

fn step_of(receipt: &ComponentReceipt, spec: &ComponentSpec) -> Step {
    Step {
        name: receipt.name.clone(),
        status: receipt.status,
        wait_seconds: spec.poll_seconds,
        reason: receipt.reason.as_deref().map(bounded_message),
    }
}
