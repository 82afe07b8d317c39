//! teardown: the phase every run ends with, whatever happened before it. Deletes the
//! run's staging (unless the input holds it), releases the run lock (only if this run
//! owns it), records a phase a Catch reports as failed, writes the run summary with the
//! measured RTO and RPO, and publishes the `DRPilot` metrics. Running it twice ends in
//! the same state (metrics are published once).

use chrono::{DateTime, Utc};
use drpilot_shared::input::{normalize, Trigger, TriggerDefaults};
use drpilot_shared::lock::{Released, RunLock};
use drpilot_shared::metrics::{self, Sample};
use drpilot_shared::objects::delete_prefix;
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::receipt::{
    Failure, Objective, PhaseClock, PhaseOutcome, PhaseReceipt, PhaseStatus, ReceiptStore,
    RunStatus, RunSummary,
};
use drpilot_shared::run::{ExecutionInfo, RunContext};
use drpilot_shared::{AwsClients, ErrorKind, Phase, Result, RunInput, S3Uri};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

/// What the state machine passes to teardown.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TeardownRequest {
    /// Bringup's output; absent when the run failed before bringup produced it.
    #[serde(default)]
    pub run: Option<RunContext>,
    /// The raw execution input, to recover the profile and run id without `run`.
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub execution: ExecutionInfo,
    /// The error a Catch caught, and in which phase.
    #[serde(default)]
    pub failure: Option<CaughtFailure>,
    /// The operator's decision, when the run reached the approval step.
    #[serde(default)]
    pub approval: Option<ApprovalOutcome>,
}

/// A Catch's `$states.errorOutput` (`Error`, `Cause`) and the phase it came from.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CaughtFailure {
    pub phase: Phase,
    #[serde(alias = "Error")]
    pub error: String,
    #[serde(alias = "Cause", default)]
    pub cause: String,
}

/// The approval step's outcome.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ApprovalOutcome {
    pub approved: bool,
    #[serde(default)]
    pub approver: Option<String>,
    #[serde(default)]
    pub ticket: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// Approved by the drill-only bypass rather than a person.
    #[serde(default)]
    pub bypass: bool,
}

/// teardown's answer: the headline of the summary and where the summary is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeardownOutput {
    pub run_id: String,
    pub status: RunStatus,
    pub summary: Option<S3Uri>,
    pub rto_seconds: Option<f64>,
    pub rpo_seconds: Option<f64>,
    pub promoted: bool,
    pub torn_down: bool,
    pub lock: String,
    pub failure: Option<Failure>,
}

impl TeardownOutput {
    /// A failed run teardown could not, or must not, touch (no input, no profile, or the
    /// wrong account): nothing written, nothing released.
    fn untouched(run_id: String, failure: Option<Failure>) -> Self {
        Self {
            run_id,
            status: RunStatus::Failed,
            summary: None,
            rto_seconds: None,
            rpo_seconds: None,
            promoted: false,
            torn_down: false,
            lock: "untouched".into(),
            failure,
        }
    }
}

pub struct Teardown {
    pub clients: AwsClients,
    pub profiles: ProfileSource,
    pub defaults: TriggerDefaults,
}

/// What teardown knows about the run, with or without bringup's output.
struct Known {
    run_id: String,
    input: RunInput,
    trigger: Option<Trigger>,
    execution_arn: Option<String>,
    kickoff_at: DateTime<Utc>,
    backup_uri: Option<S3Uri>,
    backup_created_at: Option<DateTime<Utc>>,
}

impl Teardown {
    pub fn new(clients: AwsClients) -> Self {
        let clients = clients.for_function("teardown");
        let profiles = ProfileSource::from_env(clients.ssm.clone());
        Self {
            clients,
            profiles,
            defaults: TriggerDefaults::from_env(),
        }
    }

    pub async fn handle(&self, request: TeardownRequest) -> Result<TeardownOutput> {
        let clock_start = Utc::now();
        let failure = request.failure.as_ref().map(|f| Failure {
            phase: Some(f.phase),
            error: f.error.clone(),
            cause: f.cause.clone(),
        });
        let Some(known) = self.known(&request, clock_start) else {
            // No valid input: there is no profile, so nowhere to write and nothing to undo.
            warn!(
                ?failure,
                "teardown without a usable input: nothing to clean up"
            );
            return Ok(TeardownOutput::untouched(
                request.execution.name.clone().unwrap_or_default(),
                failure,
            ));
        };
        drpilot_shared::phase::record_run(&known.run_id, Phase::Teardown);
        let wrong_account = request
            .failure
            .as_ref()
            .is_some_and(|f| f.error == ErrorKind::AccountMismatch.name());
        let profile = match self.profiles.load(&known.input.profile).await {
            Ok(profile) if !wrong_account => profile,
            result => {
                // Wrong account, or no profile: writing anything anywhere would be wrong.
                if let Err(err) = result {
                    warn!(error = %err, "teardown cannot load the profile");
                }
                return Ok(TeardownOutput::untouched(known.run_id, failure));
            }
        };
        let store = ReceiptStore::new(self.clients.s3.clone(), profile.receipts.clone());
        let clock = PhaseClock::start(&known.run_id, Phase::Teardown, 1);
        let previous = store.get_phase(&known.run_id, Phase::Teardown).await?;
        // Whatever else a previous attempt did, metrics it put stay put: never twice.
        let metrics_already_published = previous
            .as_ref()
            .is_some_and(|r| r.details["metrics_published"] == true);

        // 1. Staging: deleted unless the input holds it (or a dry run never made it).
        let staging = profile.target.staging(&known.run_id)?;
        let hold = !known.input.teardown;
        let deleted = if hold {
            info!(run_id = %known.run_id, staging = %staging, "holding staging for inspection");
            None
        } else {
            Some(delete_prefix(&self.clients.s3, &staging).await?)
        };

        // 2. The lock, only if it is ours.
        let lock = RunLock::new(self.clients.s3.clone(), profile.target.lock());
        let released = lock.release(&known.run_id).await?;
        let lock_state = match &released {
            Released::Released => "released".to_owned(),
            Released::NotHeld => "not held".to_owned(),
            Released::OwnedByOther { owner } => format!("owned by run {owner}, left alone"),
        };

        // 3. Every phase gets a receipt: the failed one from the Catch if its own Lambda
        //    could not write one, and those that never ran as skipped with why.
        let mut receipts = Vec::new();
        for phase in Phase::ALL.into_iter().filter(|p| *p != Phase::Teardown) {
            let receipt = match store.get_phase(&known.run_id, phase).await? {
                Some(r) if !(r.status == PhaseStatus::Success && failed_here(&request, phase)) => r,
                _ => {
                    let receipt = synthesize(&known, &request, phase);
                    store.put_phase(&receipt).await?;
                    receipt
                }
            };
            receipts.push(receipt);
        }

        // 4. The summary.
        let now = Utc::now();
        let receipt_of = |phase: Phase| receipts.iter().find(|r| r.phase == phase);
        let succeeded =
            |phase: Phase| receipt_of(phase).filter(|r| r.status == PhaseStatus::Success);
        let promote = succeeded(Phase::Promote);
        let promoted = promote.is_some_and(|r| r.details["promoted"] != false);
        let rto_end = promote
            .or_else(|| succeeded(Phase::Validate))
            .map(|r| r.finished_at);
        let rto_seconds = rto_end.map(|end| seconds(end - known.kickoff_at));
        let rpo_seconds = known
            .backup_created_at
            .map(|created| seconds(known.kickoff_at - created));
        let parity_delta = succeeded(Phase::ParityReport).and_then(|r| r.details["delta"].as_u64());
        let approver = promote
            .and_then(|r| r.details["approver"].as_str().map(str::to_owned))
            .or_else(|| request.approval.as_ref().and_then(|a| a.approver.clone()));
        let ticket = promote
            .and_then(|r| r.details["ticket"].as_str().map(str::to_owned))
            .or_else(|| request.approval.as_ref().and_then(|a| a.ticket.clone()));
        // A person deciding (approve or deny) is a manual intervention; the bypass is not.
        let manual_interventions = u32::from(request.approval.as_ref().is_some_and(|a| !a.bypass));
        let failed_phases = receipts
            .iter()
            .filter(|r| r.status == PhaseStatus::Failed)
            .count();
        let status = if failure.is_some() || failed_phases > 0 {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        let torn_down = deleted.is_some();
        let mut summary = RunSummary {
            run_id: known.run_id.clone(),
            mode: known.input.mode,
            profile: known.input.profile.clone(),
            status,
            execution_arn: known.execution_arn.clone(),
            trigger: known.trigger.clone(),
            backup_uri: known.backup_uri.clone(),
            backup_created_at: known.backup_created_at,
            kickoff_at: known.kickoff_at,
            finished_at: now,
            phases: receipts.iter().map(outcome).collect(),
            rto_seconds,
            rpo_seconds,
            rto: Objective::measure(rto_seconds, profile.rto_target_seconds),
            rpo: Objective::measure(rpo_seconds, profile.rpo_target_seconds),
            parity_delta,
            manual_interventions,
            approver,
            ticket,
            promoted,
            torn_down,
            failure: failure.clone().or_else(|| {
                receipts
                    .iter()
                    .find(|r| r.status == PhaseStatus::Failed)
                    .map(|r| Failure {
                        phase: Some(r.phase),
                        error: r.details["error"].as_str().unwrap_or("Failed").to_owned(),
                        cause: r.reason.clone().unwrap_or_default(),
                    })
            }),
        };

        // 5. Metrics, once per run, before the summary says how teardown ended: a failed
        //    put is recorded as teardown's failure (and retried), never as a success.
        let metrics = if metrics_already_published {
            Ok(())
        } else {
            self.publish_metrics(&summary, failed_phases).await
        };
        let teardown_reason = metrics
            .as_ref()
            .err()
            .map(|err| format!("metrics not published: {err}"));
        let finished = Utc::now();
        summary.phases.push(PhaseOutcome {
            phase: Phase::Teardown,
            status: if metrics.is_ok() {
                PhaseStatus::Success
            } else {
                PhaseStatus::Failed
            },
            reason: teardown_reason.clone(),
            started_at: Some(clock.started_at()),
            finished_at: Some(finished),
            duration_ms: Some((finished - clock.started_at()).num_milliseconds().max(0) as u64),
        });
        let summary_uri = store.put_summary(&summary).await?;

        let details = json!({
            "staging": staging,
            "held": hold,
            "staged_objects_deleted": deleted,
            "lock": lock_state,
            "summary": summary_uri,
            "metrics_published": metrics.is_ok(),
        });
        let receipt = match &metrics {
            Ok(()) => clock.finish(PhaseStatus::Success, None, details),
            Err(err) => {
                let mut details = details;
                details["error"] = json!(err.kind.name());
                clock.finish(PhaseStatus::Failed, teardown_reason, details)
            }
        };
        store.put_phase(&receipt).await?;
        metrics?;
        info!(run_id = %summary.run_id, status = ?summary.status, rto_seconds = ?summary.rto_seconds, rpo_seconds = ?summary.rpo_seconds, "run summary written");
        Ok(TeardownOutput {
            run_id: summary.run_id,
            status: summary.status,
            summary: Some(summary_uri),
            rto_seconds: summary.rto_seconds,
            rpo_seconds: summary.rpo_seconds,
            promoted,
            torn_down,
            lock: lock_state,
            failure: summary.failure,
        })
    }

    fn known(&self, request: &TeardownRequest, now: DateTime<Utc>) -> Option<Known> {
        if let Some(run) = &request.run {
            return Some(Known {
                run_id: run.run_id.clone(),
                input: run.input.clone(),
                trigger: Some(run.trigger.clone()),
                execution_arn: run.execution_arn.clone(),
                kickoff_at: run.kickoff_at,
                backup_uri: Some(run.backup.uri.clone()),
                backup_created_at: Some(run.backup.created_at),
            });
        }
        let normalized = normalize(request.input.as_ref()?, &self.defaults).ok()?;
        let run_id = normalized
            .input
            .run_id
            .clone()
            .or_else(|| request.execution.name.clone())?;
        drpilot_shared::input::validate_run_id(&run_id).ok()?;
        Some(Known {
            run_id,
            input: normalized.input,
            trigger: Some(normalized.trigger),
            execution_arn: request.execution.arn.clone(),
            kickoff_at: request.execution.start_time.unwrap_or(now),
            backup_uri: None,
            backup_created_at: None,
        })
    }

    async fn publish_metrics(&self, summary: &RunSummary, failed_phases: usize) -> Result<()> {
        let mut samples = vec![
            Sample::seconds(
                "DrillDurationSeconds",
                seconds(summary.finished_at - summary.kickoff_at),
            ),
            Sample::count(
                "ManualInterventions",
                f64::from(summary.manual_interventions),
            ),
            Sample::count("PhaseFailures", failed_phases as f64),
        ];
        if let Some(rpo) = summary.rpo_seconds {
            samples.push(Sample::seconds("RecoveryPointAgeSeconds", rpo));
        }
        metrics::publish(
            &self.clients.cloudwatch,
            &summary.profile,
            summary.mode.as_str(),
            summary.finished_at,
            samples,
        )
        .await
    }
}

fn failed_here(request: &TeardownRequest, phase: Phase) -> bool {
    request.failure.as_ref().is_some_and(|f| f.phase == phase)
}

/// The receipt for a phase that left none: failed (per the Catch), or skipped with why.
fn synthesize(known: &Known, request: &TeardownRequest, phase: Phase) -> PhaseReceipt {
    let clock = PhaseClock::start(&known.run_id, phase, 1);
    if let Some(f) = request.failure.as_ref().filter(|f| f.phase == phase) {
        return clock.finish(
            PhaseStatus::Failed,
            Some(format!("{}: {}", f.error, f.cause)),
            json!({"error": f.error, "recorded_by": "teardown"}),
        );
    }
    let reason = known
        .input
        .skip_reason(phase)
        .or_else(|| {
            request
                .failure
                .as_ref()
                .filter(|f| f.phase < phase)
                .map(|f| format!("not reached: {} failed", f.phase))
        })
        .or_else(|| match (&request.approval, phase) {
            (Some(a), Phase::Promote) if !a.approved => Some(format!(
                "approval denied{}",
                a.reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )),
            _ => None,
        })
        .unwrap_or_else(|| "not reached".to_owned());
    clock.skipped(reason)
}

fn outcome(receipt: &PhaseReceipt) -> PhaseOutcome {
    PhaseOutcome {
        phase: receipt.phase,
        status: receipt.status,
        reason: receipt.reason.clone(),
        started_at: Some(receipt.started_at),
        finished_at: Some(receipt.finished_at),
        duration_ms: Some(receipt.duration_ms),
    }
}

fn seconds(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}
