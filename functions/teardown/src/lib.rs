//! teardown: the phase every run ends with, whatever happened before it. Deletes the
//! run's staging (unless the input holds it), releases the run lock (only if this run
//! owns it), records a phase a Catch reports as failed, writes the run summary with the
//! measured RTO and RPO, and publishes the `DRPilot` metrics. Running it twice ends in
//! the same state (metrics are published once).

use chrono::{DateTime, Utc};
use drpilot_shared::budget::{delete_prefix, Deletion, RequestBudget};
use drpilot_shared::component::{overall_rto, ComponentOutcome, ComponentReceipt, ResourceState};
use drpilot_shared::details::{ParityDetails, PromoteDetails, TeardownDetails};
use drpilot_shared::error::readable_cause;
use drpilot_shared::fence::{self, fence_uri};
use drpilot_shared::input::{normalize, NameRule, Trigger, TriggerDefaults};
use drpilot_shared::lock::{Released, RunLock};
use drpilot_shared::metrics::{self, Sample};
use drpilot_shared::profile::{Profile, ProfileSource};
use drpilot_shared::receipt::{Failure, PhaseClock, PhaseReceipt, PhaseStatus, RunStatus};
use drpilot_shared::record::{ExecutionEntry, ExecutionName, ExecutionOutcome, RunRecord};
use drpilot_shared::restored;
use drpilot_shared::resume;
use drpilot_shared::run::{CleanupProgress, ExecutionInfo, RunContext, TeardownOutput};
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::summary::{PhaseOutcome, RunSummary};
use drpilot_shared::time::{seconds, Objective};
use drpilot_shared::{AwsClients, Error, ErrorKind, Phase, Result, RunInput, S3Uri};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

mod journal;
use journal::Journal;

/// The shortest wait between two cleanup passes, whatever a component's `poll_seconds`:
/// each pass adds 9 events to the execution's history (25,000 at most), and a resource
/// gets [`drpilot_shared::restored::DELETE_PATIENCE_SECONDS`] to go away, so passes stay
/// at 180 (1,620 events) and the components' polls keep the rest (docs/limits.md).
pub const CLEANUP_WAIT_MIN_SECONDS: u64 = 10;

/// Passes over the staging in a row that may delete nothing before teardown gives up
/// naming it (each ~9 history events; the history holds 25,000).
pub const MAX_IDLE_PASSES: u32 = 30;

/// Passes over the staging teardown takes at most before it gives up naming it: each
/// adds ~9 events to the execution's history, whose 25,000 the components' polls
/// (18,000 at most), the resource passes (1,620) and the fixed states (under 1,000) share
/// with it, so 400 (3,600 events) is what is left. At the write floor a pass deletes ~2 M
/// objects, so 400 passes are ~800 M objects (docs/limits.md).
pub const MAX_STAGING_PASSES: u32 = 400;

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
    /// How far an earlier pass of this teardown came deleting the staging.
    #[serde(default)]
    pub cleanup: Option<CleanupProgress>,
}

impl TeardownRequest {
    /// The failure a Catch reported, as the summary records it.
    pub fn caught_failure(&self) -> Option<Failure> {
        self.failure.as_ref().map(|f| Failure {
            phase: Some(f.phase),
            error: f.error.clone(),
            cause: f.cause.clone(),
        })
    }
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

pub struct Teardown {
    pub clients: AwsClients,
    /// Deletes the RDS DB instances components restored.
    pub rds: aws_sdk_rds::Client,
    /// Waits for an AWS Backup restore job to end before it looks for what it created.
    pub backup: aws_sdk_backup::Client,
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
            rds: clients.rds(),
            backup: clients.backup(),
            clients,
            profiles,
            defaults: TriggerDefaults::from_env(),
        }
    }

    pub async fn handle(&self, request: TeardownRequest) -> Result<TeardownOutput> {
        let failure = request.caught_failure();
        let Some(known) = self.known(&request, Utc::now()) else {
            return Ok(without_input(&request, failure));
        };
        drpilot_shared::phase::record_run(&known.run_id, Phase::Teardown);
        let Some(profile) = self.profile(&known, &request).await else {
            return Ok(TeardownOutput::untouched(known.run_id, failure));
        };
        let store = ReceiptStore::new(self.clients.s3.clone(), profile.receipts.clone());
        let record = store.get_record(&known.run_id).await?;
        let this = request.execution.name_and_arn();
        if let Some(run_id) = refused_at_bringup(&request, record.as_ref(), this) {
            warn!(%run_id, ?failure, "a later execution was refused at bringup: the run is left as it was");
            return Ok(TeardownOutput::refused(run_id, failure));
        }
        // What components created goes first, and must be gone (proven) before the run's
        // end is written; a resource still being deleted sends the state machine round its
        // wait loop. A held run keeps them with its staging; a dry run created none.
        let cleans_components =
            request.run.is_some() && known.input.teardown && !known.input.dry_run;
        let mut components = store.components(&known.run_id).await?;
        if cleans_components {
            let (cleaned, pending) = self
                .clean_components(
                    components,
                    (&known.input.profile, &profile),
                    &store,
                    request.execution.name.as_deref(),
                )
                .await?;
            if let Some((count, wait_seconds)) = pending {
                return Ok(TeardownOutput::cleaning(known.run_id, count, wait_seconds));
            }
            components = cleaned;
        }
        let clock =
            PhaseClock::start(&known.run_id, Phase::Teardown, 1).dry_run(known.input.dry_run);
        let metrics_already_published =
            metrics_published_by(&store, &known.run_id, request.execution.name.as_deref()).await?;

        let cleaned = match self.clean_up(&known, &request, &profile, &store).await? {
            Cleanup::Finished(cleaned) => cleaned,
            Cleanup::Unfinished(progress) => {
                return Ok(TeardownOutput::deleting_staging(known.run_id, progress));
            }
        };
        let receipts = self.gather(&known, &request, &store).await?;
        let now = Utc::now();
        let mut summary = summarize(
            &known,
            &request,
            &profile,
            &receipts,
            &components,
            cleaned.staging.torn_down(),
            now,
        )?;
        summary.rto_watch = store.get_rto_watch(&known.run_id).await?;
        // A resource teardown could not delete fails teardown, naming it: never left silently.
        let leftovers = if cleans_components {
            fail_on_leftovers(&components, &mut summary)
        } else {
            Ok(())
        };

        // Metrics, once per execution that ends the run (a held run has not ended),
        // before the summary says how teardown ended: a failed put is recorded as
        // teardown's failure (and retried), never as a success.
        let ends_run = !matches!(cleaned.staging, Staging::Held);
        let metrics = if metrics_already_published || !ends_run {
            Ok(())
        } else {
            self.publish_metrics(&summary).await
        };
        let details = cleaned.details(
            store.summary_uri(&known.run_id)?,
            ends_run && metrics.is_ok(),
            request.execution.name.clone(),
        );
        let ended = leftovers.and(metrics.clone());
        let receipt = match &ended {
            Ok(()) => clock.succeeded(&details)?,
            Err(err) => clock.failed(err, Some(&details))?,
        };
        // The summary's teardown line is the receipt teardown writes next.
        summary.phases.push(outcome(&receipt));
        if let Some(record) = record {
            summary.executions = record_outcome(&store, record, this, &summary, now).await?;
        }
        store.put_summary(&summary).await?;
        store.put_phase(&receipt).await?;
        ended?;
        info!(run_id = %summary.run_id, status = ?summary.status, rto_seconds = ?summary.rto_seconds, rpo_seconds = ?summary.rpo_seconds, "run summary written");
        let held = details
            .held
            .then(|| resume::resume_point(&receipts).run_first);
        let notice = notice(&summary, held, &store.run_dir(&known.run_id)?);
        Ok(TeardownOutput::ended(summary, details, notice))
    }

    /// One cleanup pass over every resource the run's components created: `Some((count,
    /// wait_seconds))` while some are still being deleted.
    async fn clean_components(
        &self,
        mut components: Vec<ComponentReceipt>,
        (profile_name, profile): (&str, &Profile),
        store: &ReceiptStore,
        execution: Option<&str>,
    ) -> Result<(Vec<ComponentReceipt>, Option<(u32, u64)>)> {
        let now = Utc::now();
        let mut pending = 0u32;
        let mut wait_seconds = u64::MAX;
        for component in &mut components {
            if component
                .created_resources
                .iter()
                .all(|r| r.state == ResourceState::Deleted)
            {
                continue;
            }
            let owner = restored::Owner {
                run_id: &component.run_id,
                profile: profile_name,
            };
            for resource in &mut component.created_resources {
                restored::clean_up(&self.rds, &self.backup, owner, execution, resource, now).await;
                if !resource.settled() {
                    pending += 1;
                }
            }
            store.put_component(component).await?;
            let poll = profile
                .components
                .iter()
                .find(|c| c.name == component.name)
                .map_or(30, |c| c.poll_seconds);
            if component.created_resources.iter().any(|r| !r.settled()) {
                wait_seconds = wait_seconds.min(poll.max(CLEANUP_WAIT_MIN_SECONDS));
            }
        }
        if pending > 0 {
            info!(
                pending,
                wait_seconds, "resources still being deleted: teardown looks again after a wait"
            );
        }
        Ok((components, (pending > 0).then_some((pending, wait_seconds))))
    }

    /// The run's profile, unless teardown must not touch anything: a wrong-account
    /// failure, or a profile that cannot be loaded (writing anywhere would be wrong).
    async fn profile(&self, known: &Known, request: &TeardownRequest) -> Option<Profile> {
        let wrong_account = request
            .failure
            .as_ref()
            .is_some_and(|f| ErrorKind::from_name(&f.error) == Some(ErrorKind::AccountMismatch));
        if wrong_account {
            return None;
        }
        match self.profiles.load(&known.input.profile).await {
            Ok(profile) => Some(profile),
            Err(err) => {
                warn!(error = %err, "teardown cannot load the profile");
                None
            }
        }
    }

    /// Ends the run, or holds it for a later execution. Deletes the staging and
    /// releases the lock (if this run owns it) unless the input holds them; a dry run
    /// touches neither; after a bringup that failed, there is no staging of this
    /// execution's and only a lock this execution took is released.
    async fn clean_up(
        &self,
        known: &Known,
        request: &TeardownRequest,
        profile: &Profile,
        store: &ReceiptStore,
    ) -> Result<Cleanup> {
        let staging_uri = profile.target.staging(&known.run_id)?;
        let lock = RunLock::new(self.clients.s3.clone(), profile.target.lock());
        // A later pass finds the fence raised by the first (and the writes it waited out).
        let fenced = match request.cleanup {
            None => self.fence(known, request, store).await?,
            Some(progress) => progress.fenced,
        };
        let (staging, released) = if known.input.dry_run {
            (Staging::Untouched, None)
        } else if request.run.is_none() {
            let released = match &request.execution.arn {
                Some(arn) => Some(lock.release_taken_by(&known.run_id, arn).await?),
                None => None,
            };
            (Staging::Untouched, released)
        } else if known.input.teardown {
            let earlier = request.cleanup.unwrap_or_default();
            let journal_uri = store
                .run_dir(&known.run_id)?
                .join("teardown.journal.json")?;
            let mut journal = Journal::open(&self.clients.s3, journal_uri, &staging_uri).await?;
            let pass = self
                .empty_staging(
                    &staging_uri,
                    fenced,
                    request.cleanup.is_none(),
                    &mut journal,
                )
                .await?;
            let deleted = journal.deleted();
            if !pass.complete {
                let idle_passes = if pass.deleted == 0 {
                    earlier.idle_passes + 1
                } else {
                    0
                };
                if idle_passes >= MAX_IDLE_PASSES {
                    return Err(Error::new(
                        ErrorKind::ServiceError,
                        format!(
                            "{staging_uri}: {MAX_IDLE_PASSES} passes in a row deleted nothing (S3 throttled every request); {} objects deleted before",
                            earlier.staging_deleted
                        ),
                    ));
                }
                let passes = earlier.passes + 1;
                if passes >= MAX_STAGING_PASSES {
                    return Err(Error::new(
                        ErrorKind::ServiceError,
                        format!(
                            "{staging_uri}: objects still left after {passes} passes (at most {MAX_STAGING_PASSES}: the execution's history holds no more); {deleted} objects deleted"
                        ),
                    ));
                }
                info!(run_id = %known.run_id, deleted, passes, "the staging is larger than one invocation deletes: teardown goes on in another pass");
                return Ok(Cleanup::Unfinished(CleanupProgress {
                    staging_deleted: deleted,
                    passes,
                    fenced,
                    idle_passes,
                }));
            }
            (
                Staging::Deleted(deleted),
                Some(release_lock(&lock, &known.run_id, &mut journal).await?),
            )
        } else {
            info!(run_id = %known.run_id, staging = %staging_uri, "holding the staging and the lock for the run's next execution");
            (Staging::Held, None)
        };
        let lock = match released {
            Some(Released::Released) => "released".to_owned(),
            Some(Released::NotHeld) => "not held".to_owned(),
            Some(Released::KeptForRun) => {
                "kept: an earlier execution of the run holds it".to_owned()
            }
            Some(Released::OwnedByOther { owner }) => format!("owned by run {owner}, left alone"),
            None if matches!(staging, Staging::Held) => "kept for the run (held)".to_owned(),
            None => "untouched".to_owned(),
        };
        Ok(Cleanup::Finished(Cleaned {
            staging_uri,
            staging,
            lock,
        }))
    }

    /// Raises the run's fence (`fence`) when a failure ended a run that fanned out: a
    /// failed Map's children may still be running, and must write nothing more. Whether
    /// it did.
    async fn fence(
        &self,
        known: &Known,
        request: &TeardownRequest,
        store: &ReceiptStore,
    ) -> Result<bool> {
        let fanned_out = request
            .run
            .as_ref()
            .and_then(|run| run.plan.as_ref())
            .is_some_and(|plan| plan.fans_out());
        let Some(failure) = request
            .failure
            .as_ref()
            .filter(|_| fanned_out && !known.input.dry_run)
        else {
            return Ok(false);
        };
        let uri = fence_uri(store, &known.run_id)?;
        let reason = format!("{} failed with {}", failure.phase, failure.error);
        fence::raise(
            &self.clients.s3,
            &uri,
            request.execution.arn.as_deref(),
            &reason,
        )
        .await?;
        info!(run_id = %known.run_id, fence = %uri, "fence raised: the run's remaining children stop before their next write");
        Ok(true)
    }

    /// Deletes the staging, paced at the run's write rate, until this invocation's time
    /// for work is up ([`drpilot_shared::deadline`]). Behind a raised fence it first
    /// waits out the writes a child had begun, then deletes until a listing finds nothing
    /// more (a write that landed after a pass is deleted by the next).
    async fn empty_staging(
        &self,
        staging: &S3Uri,
        fenced: bool,
        first_pass: bool,
        journal: &mut Journal,
    ) -> Result<Deletion> {
        let budget = RequestBudget::writes_for_run(None, false);
        let stop_at = drpilot_shared::deadline::work_until();
        if !fenced {
            return delete_prefix(&self.clients.s3, staging, &budget, stop_at, journal).await;
        }
        if first_pass {
            tokio::time::sleep(fence::GRACE).await;
        }
        let mut deleted = 0;
        for _ in 0..FENCED_DELETE_PASSES {
            let pass = delete_prefix(&self.clients.s3, staging, &budget, stop_at, journal).await?;
            deleted += pass.deleted;
            if !pass.complete || pass.deleted == 0 {
                return Ok(Deletion {
                    deleted,
                    complete: pass.complete,
                });
            }
            tokio::time::sleep(fence::CHECK_EVERY).await;
        }
        Err(Error::retryable(format!(
            "{staging} still gets writes {FENCED_DELETE_PASSES} deletes after the fence \
             went up; teardown's retry deletes again"
        )))
    }

    /// Every phase's receipt before teardown: the failed one from the Catch if its own
    /// Lambda could not write one, and those that never ran as skipped with why.
    async fn gather(
        &self,
        known: &Known,
        request: &TeardownRequest,
        store: &ReceiptStore,
    ) -> Result<Vec<PhaseReceipt>> {
        let mut receipts = Vec::new();
        for phase in Phase::ALL.into_iter().filter(|p| *p != Phase::Teardown) {
            let receipt = match store.get_phase(&known.run_id, phase).await? {
                Some(r) if !(r.status == PhaseStatus::Success && failed_here(request, phase)) => r,
                _ => {
                    let receipt = synthesize(known, request, phase);
                    store.put_phase(&receipt).await?;
                    receipt
                }
            };
            receipts.push(receipt);
        }
        Ok(receipts)
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
        let run_id = normalized.input.run_id.clone().or_else(|| {
            let name = request.execution.name.as_deref()?;
            Some(ExecutionName::parse(name).run_id)
        })?;
        NameRule::RUN_ID.check(&run_id).ok()?;
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

    /// Puts the run's metrics; an error says they were not published.
    async fn publish_metrics(&self, summary: &RunSummary) -> Result<()> {
        self.put_metrics(summary).await.map_err(|err| {
            let message = format!("metrics not published: {}", err.message);
            Error::new(err.kind, message).with_source(err)
        })
    }

    async fn put_metrics(&self, summary: &RunSummary) -> Result<()> {
        let failed_phases = summary
            .phases
            .iter()
            .filter(|p| p.status == PhaseStatus::Failed)
            .count();
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
        for component in &summary.components {
            if let Some(rto) = component.rto_seconds {
                samples.push(
                    Sample::seconds("ComponentRecoverySeconds", rto)
                        .with_dimension("Component", &component.name),
                );
            }
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

/// Deletes of a fenced run's staging before teardown gives up for this attempt.
const FENCED_DELETE_PASSES: u32 = 5;

/// What [`Teardown::clean_up`] did.
struct Cleaned {
    staging_uri: S3Uri,
    staging: Staging,
    /// What happened to the run lock, in words.
    lock: String,
}

impl Cleaned {
    /// Teardown's receipt details for what it cleaned.
    fn details(
        self,
        summary: S3Uri,
        metrics_published: bool,
        execution: Option<String>,
    ) -> TeardownDetails {
        TeardownDetails {
            staging: self.staging_uri,
            held: matches!(self.staging, Staging::Held),
            staged_objects_deleted: match self.staging {
                Staging::Deleted(count) => Some(count),
                Staging::Held | Staging::Untouched => None,
            },
            lock: self.lock,
            summary,
            metrics_published,
            execution,
        }
    }
}

/// Whether an earlier attempt of execution `name` already put the run's metrics (its
/// teardown receipt says so): whatever else that attempt did, its metrics stay put,
/// never twice.
async fn metrics_published_by(
    store: &ReceiptStore,
    run_id: &str,
    name: Option<&str>,
) -> Result<bool> {
    Ok(store
        .get_phase(run_id, Phase::Teardown)
        .await?
        .and_then(|r| r.details::<TeardownDetails>().ok())
        .is_some_and(|d| d.metrics_published && d.execution.as_deref() == name))
}

/// How far [`Teardown::clean_up`] came.
enum Cleanup {
    Finished(Cleaned),
    /// The staging is not empty yet: another pass goes on from here.
    Unfinished(CleanupProgress),
}

/// Releases the run's lock, writing down first that the run held it: a teardown run
/// again after the lock went reports it released, as the first attempt would have.
async fn release_lock(lock: &RunLock, run_id: &str, journal: &mut Journal) -> Result<Released> {
    let held = lock
        .read()
        .await?
        .is_some_and(|(record, _)| record.run_id == run_id);
    if held {
        journal.releasing_lock().await?;
    }
    match lock.release(run_id).await? {
        Released::NotHeld if journal.lock_released_before() => Ok(Released::Released),
        released => Ok(released),
    }
}

/// What became of the run's staging.
enum Staging {
    /// Deleted: this many objects.
    Deleted(u64),
    /// Kept, with the lock, for the run's next execution (`teardown: false`).
    Held,
    /// Not this execution's to touch: a dry run, or a bringup that did not finish.
    Untouched,
}

impl Staging {
    fn torn_down(&self) -> bool {
        matches!(self, Self::Deleted(_))
    }
}

/// The run summary from the receipts of every phase before teardown: the measured RTO
/// (kickoff to promotion, or to validation when not promoted) and RPO (kickoff minus the
/// backup's creation), the approval, and the failure, if any.
fn summarize(
    known: &Known,
    request: &TeardownRequest,
    profile: &Profile,
    receipts: &[PhaseReceipt],
    components: &[ComponentReceipt],
    torn_down: bool,
    now: DateTime<Utc>,
) -> Result<RunSummary> {
    let succeeded = |phase: Phase| {
        receipts
            .iter()
            .find(|r| r.phase == phase && r.status == PhaseStatus::Success)
    };
    let promote = succeeded(Phase::Promote);
    let promoted_details = match promote {
        Some(receipt) => Some(receipt.details::<PromoteDetails>()?),
        None => None,
    };
    let parity = match succeeded(Phase::ParityReport) {
        Some(receipt) => Some(receipt.details::<ParityDetails>()?),
        None => None,
    };
    let rto_end = promote
        .or_else(|| succeeded(Phase::Validate))
        .map(|r| r.finished_at);
    let components: Vec<ComponentOutcome> = components.iter().map(ComponentOutcome::from).collect();
    // The slowest required component counts when it is later than the S3 data's.
    let rto_seconds = overall_rto(
        rto_end.map(|end| seconds(end - known.kickoff_at)),
        &components,
    );
    let rpo_seconds = known
        .backup_created_at
        .map(|created| seconds(known.kickoff_at - created));
    let approval = request.approval.as_ref();
    let approver = promoted_details
        .as_ref()
        .and_then(|d| d.approver.clone())
        .or_else(|| approval.and_then(|a| a.approver.clone()));
    let ticket = promoted_details
        .as_ref()
        .and_then(|d| d.ticket.clone())
        .or_else(|| approval.and_then(|a| a.ticket.clone()));
    let failed = receipts.iter().find(|r| r.status == PhaseStatus::Failed);
    let failure = request.caught_failure().or_else(|| {
        failed.map(|r| Failure {
            phase: Some(r.phase),
            error: r.error_name().unwrap_or("Failed").to_owned(),
            cause: r.reason.clone().unwrap_or_default(),
        })
    });
    Ok(RunSummary {
        run_id: known.run_id.clone(),
        mode: known.input.mode,
        dry_run: known.input.dry_run,
        profile: known.input.profile.clone(),
        status: if failure.is_some() {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        },
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
        parity_delta: parity.map(|p| p.delta),
        // A person deciding (approve or deny) is a manual intervention; the bypass is not.
        manual_interventions: u32::from(approval.is_some_and(|a| !a.bypass)),
        approver,
        ticket,
        approver_principal: promoted_details.as_ref().and_then(|d| d.principal.clone()),
        approval_sealed: promoted_details.as_ref().is_some_and(|d| d.sealed),
        promoted: promoted_details.is_some_and(|d| d.promoted),
        torn_down,
        failure,
        executions: Vec::new(),
        components,
        rto_watch: None,
    })
}

/// The run in plain sentences for the end-of-run notification: how it ended (the failed
/// phase, the error's name and message), RTO and RPO against their targets, what
/// happened to the staging, and where the receipts are.
/// The run in plain sentences; `held` is where the run's next execution would start
/// when this one held it.
fn notice(summary: &RunSummary, held: Option<Phase>, receipts: &S3Uri) -> String {
    let run = format!("drpilot {} {}", summary.mode, summary.run_id);
    let outcome = match (&summary.status, &summary.failure) {
        (RunStatus::Succeeded, _) if summary.promoted => {
            format!("{run} succeeded: the backup was promoted into root/.")
        }
        (RunStatus::Succeeded, _) => format!("{run} succeeded; nothing was promoted."),
        (RunStatus::Failed, Some(f)) => format!(
            "{run} FAILED in {}: {}: {}.",
            f.phase.map_or("the run", |p| p.as_str()),
            f.error,
            readable_cause(&f.cause)
        ),
        (RunStatus::Failed, None) => format!("{run} FAILED."),
    };
    let staging = match held {
        _ if summary.torn_down => "Staging deleted.".to_owned(),
        Some(next) => format!(
            "Staging and run lock held for the run's next step: drpilot resume {run_id} (from {next}), or drpilot resume {run_id} --from teardown to finish.",
            run_id = summary.run_id
        ),
        None if summary.dry_run => "Staging untouched (dry run).".to_owned(),
        None => "Staging untouched.".to_owned(),
    };
    format!(
        "{outcome} RTO {}, RPO {}. {staging} Receipts: {receipts}",
        summary.rto.describe(),
        summary.rpo.describe()
    )
}

fn failed_here(request: &TeardownRequest, phase: Phase) -> bool {
    request.failure.as_ref().is_some_and(|f| f.phase == phase)
}

/// The receipt for a phase that left none: failed (per the Catch), or skipped with why.
fn synthesize(known: &Known, request: &TeardownRequest, phase: Phase) -> PhaseReceipt {
    let clock = PhaseClock::start(&known.run_id, phase, 1).dry_run(known.input.dry_run);
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

/// Teardown's answer to an execution without a valid input: there is no profile, so
/// nowhere to write and nothing to undo.
fn without_input(request: &TeardownRequest, failure: Option<Failure>) -> TeardownOutput {
    warn!(
        ?failure,
        "teardown without a usable input: nothing to clean up"
    );
    TeardownOutput::untouched(request.execution.name.clone().unwrap_or_default(), failure)
}

/// The run a later execution asked bringup to continue, when bringup refused it: that run
/// is not this execution's to change (its receipts, summary, staging and lock stand).
fn refused_at_bringup(
    request: &TeardownRequest,
    record: Option<&(RunRecord, String)>,
    (name, arn): (Option<&str>, Option<&str>),
) -> Option<String> {
    if request.run.is_some() {
        return None;
    }
    record
        .filter(|(r, _)| !r.executions.iter().any(|e| e.is(name, arn)))
        .map(|(r, _)| r.run_id.clone())
}

/// Fails the run's summary when a resource a component created is still there, naming
/// every one, and answers the error teardown then ends with.
fn fail_on_leftovers(components: &[ComponentReceipt], summary: &mut RunSummary) -> Result<()> {
    let left: Vec<String> = components
        .iter()
        .flat_map(|c| c.created_resources.iter().map(move |r| (c, r)))
        .filter(|(_, r)| r.state != ResourceState::Deleted)
        .map(|(c, r)| {
            format!(
                "{} of component {} ({})",
                r.resource.describe(),
                c.name,
                r.detail.as_deref().unwrap_or("not deleted")
            )
        })
        .collect();
    if left.is_empty() {
        return Ok(());
    }
    let error = Error::new(
        ErrorKind::ServiceError,
        format!("teardown could not delete: {}", left.join("; ")),
    );
    if summary.failure.is_none() {
        summary.failure = Some(Failure {
            phase: Some(Phase::Teardown),
            error: error.kind.name().to_owned(),
            cause: error.message.clone(),
        });
    }
    summary.status = RunStatus::Failed;
    Err(error)
}

/// Writes how this execution ended into its entry of the run record (when the record
/// lists it) and answers the record's executions, for the summary.
async fn record_outcome(
    store: &ReceiptStore,
    (mut record, etag): (RunRecord, String),
    (name, arn): (Option<&str>, Option<&str>),
    summary: &RunSummary,
    finished_at: DateTime<Utc>,
) -> Result<Vec<ExecutionEntry>> {
    if let Some(entry) = record.execution_mut(name, arn) {
        entry.outcome = Some(ExecutionOutcome {
            status: summary.status,
            failure: summary.failure.clone(),
            torn_down: summary.torn_down,
            finished_at,
        });
        store.put_record(&record, Some(&etag)).await?;
    }
    Ok(record.executions)
}

#[cfg(test)]
mod tests {
    //! `summarize` is pure: RTO, RPO and the run's outcome from receipts alone.

    use super::*;
    use drpilot_shared::parity::ParityCounts;
    use serde_json::json;

    const KICKOFF: &str = "2026-01-01T00:00:00Z";

    fn at(seconds_after_kickoff: i64) -> DateTime<Utc> {
        KICKOFF.parse::<DateTime<Utc>>().unwrap()
            + chrono::TimeDelta::seconds(seconds_after_kickoff)
    }

    fn known() -> Known {
        Known {
            run_id: "run-1".into(),
            input: RunInput::drill("test"),
            trigger: Some(Trigger::manual()),
            execution_arn: None,
            kickoff_at: at(0),
            backup_uri: Some("s3://backup-store/prod/backups/b1/".parse().unwrap()),
            // Two hours before kickoff: RPO 7,200 s.
            backup_created_at: Some(at(-7_200)),
        }
    }

    fn profile() -> Profile {
        let text = drpilot_testkit::test_profile().to_string();
        Profile::from_json("test", &text).unwrap()
    }

    fn receipt(phase: Phase, status: PhaseStatus, finished: i64, details: Value) -> PhaseReceipt {
        PhaseReceipt {
            run_id: "run-1".into(),
            phase,
            status,
            reason: (status != PhaseStatus::Success).then(|| format!("{phase} {status:?}")),
            started_at: at(finished - 1),
            finished_at: at(finished),
            duration_ms: 1_000,
            attempt: 1,
            details,
            dry_run: false,
        }
    }

    fn uri(text: &str) -> S3Uri {
        text.parse().unwrap()
    }

    fn parity(delta: u64) -> Value {
        serde_json::to_value(ParityDetails {
            delta,
            counts: ParityCounts {
                delta,
                ..Default::default()
            },
            report: uri("s3://target-data/r/report.json"),
            differences: uri("s3://target-data/r/differences.jsonl"),
        })
        .unwrap()
    }

    fn promoted(approver: &str) -> Value {
        serde_json::to_value(PromoteDetails {
            promoted: true,
            approver: Some(approver.into()),
            ticket: Some("CHG-1".into()),
            principal: None,
            principal_verified: false,
            sealed: true,
            bypass: false,
            objects_copied: 3,
            bytes_copied: 30,
            objects_identical: 0,
            drift_objects: 0,
            drift_deleted: 0,
            parity_before: ParityCounts::default(),
            parity_after: ParityCounts::default(),
            audit_record: uri("s3://target-data/audit/promotions/p.json"),
            pointer: uri("s3://target-data/audit/published.json"),
            generation: 1,
            copy_seconds: 1.0,
            time_to_promotion_seconds: 42.0,
        })
        .unwrap()
    }

    fn through_parity() -> Vec<PhaseReceipt> {
        vec![
            receipt(Phase::Bringup, PhaseStatus::Success, 2, json!({})),
            receipt(Phase::Restore, PhaseStatus::Success, 20, json!({})),
            receipt(Phase::Validate, PhaseStatus::Success, 30, json!({})),
            receipt(Phase::ParityReport, PhaseStatus::Success, 35, parity(4)),
        ]
    }

    #[test]
    fn a_promoted_run_measures_rto_to_promotion_and_rpo_to_the_backup() {
        let mut receipts = through_parity();
        receipts.push(receipt(
            Phase::Promote,
            PhaseStatus::Success,
            42,
            promoted("alice"),
        ));
        let request = TeardownRequest::default();
        let summary =
            summarize(&known(), &request, &profile(), &receipts, &[], true, at(50)).unwrap();
        assert_eq!(summary.status, RunStatus::Succeeded);
        assert_eq!(summary.rto_seconds, Some(42.0));
        assert_eq!(summary.rpo_seconds, Some(7_200.0));
        assert_eq!(summary.parity_delta, Some(4));
        assert!(summary.promoted && summary.torn_down);
        assert_eq!(summary.approver.as_deref(), Some("alice"));
        assert_eq!(summary.ticket.as_deref(), Some("CHG-1"));
        assert_eq!(summary.phases.len(), 5);
        assert_eq!(summary.failure, None);
        assert_eq!(summary.rto.met, Some(true));
    }

    #[test]
    fn without_a_promotion_rto_ends_at_validation_and_a_denial_counts_as_an_intervention() {
        let mut receipts = through_parity();
        receipts.push(receipt(Phase::Promote, PhaseStatus::Skipped, 36, json!({})));
        let request = TeardownRequest {
            approval: Some(ApprovalOutcome {
                approved: false,
                approver: Some("bob".into()),
                reason: Some("not today".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let summary = summarize(
            &known(),
            &request,
            &profile(),
            &receipts,
            &[],
            false,
            at(40),
        )
        .unwrap();
        assert_eq!(summary.status, RunStatus::Succeeded);
        assert_eq!(summary.rto_seconds, Some(30.0));
        assert!(!summary.promoted && !summary.torn_down);
        assert_eq!(summary.manual_interventions, 1);
        assert_eq!(summary.approver.as_deref(), Some("bob"));
    }

    #[test]
    fn the_notice_is_plain_sentences_with_the_receipts() {
        let mut receipts = through_parity();
        receipts.push(receipt(
            Phase::Promote,
            PhaseStatus::Success,
            42,
            promoted("alice"),
        ));
        let request = TeardownRequest::default();
        let summary =
            summarize(&known(), &request, &profile(), &receipts, &[], true, at(50)).unwrap();
        let dir = uri("s3://target-data/drpilot/receipts/runs/run-1/");
        assert_eq!(
            notice(&summary, None, &dir),
            "drpilot drill run-1 succeeded: the backup was promoted into root/. RTO 42.0 s (target 3600 s, met), RPO 7200.0 s (target 86400 s, met). Staging deleted. Receipts: s3://target-data/drpilot/receipts/runs/run-1/"
        );
        let failed = RunSummary {
            status: RunStatus::Failed,
            failure: Some(Failure {
                phase: Some(Phase::Restore),
                error: "ContractError".into(),
                cause: r#"{"errorType":"ContractError","errorMessage":"state.tar.zst: missing"}"#
                    .into(),
            }),
            ..summary
        };
        let held = RunSummary {
            torn_down: false,
            ..failed.clone()
        };
        let text = notice(&held, Some(Phase::Restore), &dir);
        assert!(
            text.contains("held for the run's next step: drpilot resume run-1 (from restore)"),
            "{text}"
        );
        let text = notice(&failed, None, &dir);
        assert!(
            text.starts_with(
                "drpilot drill run-1 FAILED in restore: ContractError: state.tar.zst: missing."
            ),
            "{text}"
        );
        assert!(!text.contains('{'), "{text}");
    }

    #[test]
    fn a_caught_failure_fails_the_run_and_leaves_rto_unmeasured() {
        let receipts = vec![
            receipt(Phase::Bringup, PhaseStatus::Success, 2, json!({})),
            receipt(
                Phase::Restore,
                PhaseStatus::Failed,
                5,
                json!({"error": "ContractError"}),
            ),
        ];
        let request = TeardownRequest {
            failure: Some(CaughtFailure {
                phase: Phase::Restore,
                error: "ContractError".into(),
                cause: "missing artifact".into(),
            }),
            ..Default::default()
        };
        let summary =
            summarize(&known(), &request, &profile(), &receipts, &[], true, at(9)).unwrap();
        assert_eq!(summary.status, RunStatus::Failed);
        assert_eq!(summary.rto_seconds, None);
        assert_eq!(summary.rto.met, None);
        let failure = summary.failure.unwrap();
        assert_eq!(failure.phase, Some(Phase::Restore));
        assert_eq!(failure.cause, "missing artifact");
    }

    #[test]
    fn a_failed_receipt_without_a_catch_still_fails_the_run_by_its_error_name() {
        let mut receipts = through_parity();
        receipts[2] = receipt(
            Phase::Validate,
            PhaseStatus::Failed,
            30,
            json!({"error": "IntegrityError"}),
        );
        let summary = summarize(
            &known(),
            &TeardownRequest::default(),
            &profile(),
            &receipts,
            &[],
            true,
            at(40),
        )
        .unwrap();
        assert_eq!(summary.status, RunStatus::Failed);
        let failure = summary.failure.unwrap();
        assert_eq!(failure.phase, Some(Phase::Validate));
        assert_eq!(failure.error, "IntegrityError");
    }

    #[test]
    fn a_promote_receipt_of_the_wrong_shape_is_an_integrity_error_naming_it() {
        let mut receipts = through_parity();
        receipts.push(receipt(
            Phase::Promote,
            PhaseStatus::Success,
            42,
            json!({"promoted": true}),
        ));
        let err = summarize(
            &known(),
            &TeardownRequest::default(),
            &profile(),
            &receipts,
            &[],
            true,
            at(50),
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::IntegrityError);
        assert!(err.message.contains("promote receipt"), "{err}");
    }
}
