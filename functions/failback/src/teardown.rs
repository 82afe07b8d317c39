//! teardown: always runs. Releases the lock (if this failback took it), records the
//! failure a Catch passed in, and writes the summary from the steps' receipts.

use chrono::Utc;
use drpilot_shared::failback::{
    CopyBackDetails, DivergenceDetails, FailbackFailure, FailbackInput, FailbackReceipt,
    FailbackRun, FailbackSummary, SUMMARY_KIND,
};
use drpilot_shared::lock::{Released, RunLock};
use drpilot_shared::profile::Profile;
use drpilot_shared::receipt::{PhaseStatus, RunStatus};
use drpilot_shared::run::ExecutionInfo;
use drpilot_shared::stage::FailbackStep;
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::time::seconds;
use drpilot_shared::{ErrorKind, Result, S3Uri};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::warn;

use crate::preflight::run_id;
use crate::{Failback, StepClock};

/// What the state machine's last Choice reads.
#[derive(Clone, Debug, Serialize)]
pub struct FailbackTeardownOutput {
    pub run_id: Option<String>,
    pub status: RunStatus,
    pub summary: Option<S3Uri>,
    pub lock: String,
    pub failure: Option<FailbackFailure>,
}

impl Failback {
    pub(crate) async fn teardown(
        &self,
        run: Option<&FailbackRun>,
        raw: &Value,
        execution: &ExecutionInfo,
        failure: Option<FailbackFailure>,
    ) -> Result<FailbackTeardownOutput> {
        // An input preflight refused leaves nothing to clean up or to write to.
        let untouched =
            |failure: Option<FailbackFailure>, run_id: Option<String>| FailbackTeardownOutput {
                run_id,
                status: RunStatus::Failed,
                summary: None,
                lock: "not touched: the input was refused".into(),
                failure,
            };
        let input = match run {
            Some(r) => r.input.clone(),
            None => match FailbackInput::from_json(raw) {
                Ok(input) => input,
                Err(_) => return Ok(untouched(failure, None)),
            },
        };
        let Ok(run_id) = run.map_or_else(|| run_id(&input, execution), |r| Ok(r.run_id.clone()))
        else {
            return Ok(untouched(failure, None));
        };
        // A profile that is not there (or not valid) leaves nothing this failback could
        // have taken; any other failure to read it (throttling) is retried, since the
        // lock may be this failback's.
        let profile = match self.profiles.load(&input.profile).await {
            Ok(profile) => profile,
            Err(err) if err.kind == ErrorKind::InputError => {
                return Ok(untouched(failure, Some(run_id)))
            }
            Err(err) => return Err(err),
        };
        let store = ReceiptStore::new(self.clients.s3.clone(), profile.receipts.clone());
        let clock = StepClock::start(&run_id, FailbackStep::Teardown, 1, input.dry_run);
        let lock = if input.dry_run {
            "not taken (dry run)".to_owned()
        } else {
            self.release_lock(&profile, &run_id).await?
        };
        let summary_uri = store.failback_summary_uri(&run_id)?;
        clock
            .end(
                &store,
                Ok::<_, drpilot_shared::phase::Failed<Value>>((
                    (),
                    json!({"lock": lock, "summary": summary_uri}),
                )),
            )
            .await?;
        let steps = store.failback_steps(&run_id).await?;
        let summary = summarize(
            &run_id,
            run,
            &input,
            execution,
            steps,
            &lock,
            failure.clone(),
        );
        let status = summary.status;
        let summary_uri = store.put_failback_summary(&summary).await?;
        Ok(FailbackTeardownOutput {
            run_id: Some(run_id),
            status,
            summary: Some(summary_uri),
            lock,
            failure,
        })
    }

    /// Releases the lock if it is this failback's; says what happened to it.
    async fn release_lock(&self, profile: &Profile, run_id: &str) -> Result<String> {
        let lock = RunLock::new(self.clients.s3.clone(), profile.target.lock());
        Ok(match lock.release(run_id).await? {
            Released::Released => format!("{} released", lock.uri()),
            Released::NotHeld | Released::KeptForRun => {
                format!("{} not held by this failback", lock.uri())
            }
            Released::OwnedByOther { owner } => {
                warn!(run_id, owner, "the lock belongs to another run; left alone");
                format!("{} held by run {owner}: left alone", lock.uri())
            }
        })
    }
}

/// The failback's summary from its steps' receipts.
fn summarize(
    run_id: &str,
    run: Option<&FailbackRun>,
    input: &FailbackInput,
    execution: &ExecutionInfo,
    steps: Vec<FailbackReceipt>,
    lock: &str,
    failure: Option<FailbackFailure>,
) -> FailbackSummary {
    let succeeded = |step: FailbackStep| {
        steps
            .iter()
            .find(|r| r.phase == step && r.status == PhaseStatus::Success)
    };
    let divergence: Option<DivergenceDetails> = steps
        .iter()
        .find(|r| r.phase == FailbackStep::Divergence)
        .and_then(|r| serde_json::from_value(r.details.clone()).ok());
    let copied: Option<CopyBackDetails> = succeeded(FailbackStep::CopyBack)
        .and_then(|r| serde_json::from_value(r.details.clone()).ok());
    let kickoff_at = run
        .map(|r| r.kickoff_at)
        .or(execution.start_time)
        .or_else(|| steps.first().map(|s| s.started_at))
        .unwrap_or_else(Utc::now);
    let finished_at = Utc::now();
    let status = if failure.is_some() {
        RunStatus::Failed
    } else {
        RunStatus::Succeeded
    };
    FailbackSummary {
        run_id: run_id.to_owned(),
        kind: SUMMARY_KIND.into(),
        dr_run_id: input.dr_run_id.clone(),
        profile: input.profile.clone(),
        mode: run.map(|r| r.mode).or(input.mode),
        status,
        dry_run: input.dry_run,
        execution_arn: execution.arn.clone(),
        kickoff_at,
        finished_at,
        duration_seconds: seconds(finished_at - kickoff_at),
        steps,
        divergence: divergence.as_ref().map(|d| d.counts.clone()),
        divergence_report: divergence.map(|d| d.report),
        confirmations: copied
            .as_ref()
            .map(|c| c.confirmations.clone())
            .unwrap_or_default(),
        objects_copied: copied.as_ref().map_or(0, |c| c.objects_copied),
        generation: copied.as_ref().map(|c| c.generation),
        audit_record: copied.map(|c| c.audit_record),
        lock: lock.to_owned(),
        failure,
    }
}
