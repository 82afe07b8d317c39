//! `drpilot resume RUN [--from PHASE]`: the run's next execution, from the phase that
//! failed (or the first one not done), reusing what its earlier executions left — the held
//! staging, the receipts, the lock, the backup and the kickoff RTO is measured from.

use std::str::FromStr;

use drpilot_shared::input::{normalize, RunInput, TriggerDefaults};
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::receipt::{PhaseReceipt, RunStatus};
use drpilot_shared::resume;
use drpilot_shared::stage::Phase;
use drpilot_shared::store::ReceiptStore;
use serde_json::Value;

use crate::commands::start::{launch, not_running, Approver, AttemptFlags, StartFlags};
use crate::history::Progress;
use crate::{CliError, Ctx};

/// The flags of `drpilot resume`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ResumeFlags {
    /// The phase to start from (default: the one that failed, or the first not done).
    #[arg(long)]
    pub from: Option<String>,
    /// The last phase before teardown (default: the previous execution's, when it is not
    /// before --from; otherwise every phase).
    #[arg(long)]
    pub stop_after: Option<String>,
    /// Keep the staging and the lock afterwards (default: as the previous execution did;
    /// `--from teardown` always tears down).
    #[arg(long)]
    pub hold: bool,
    /// Required when the drill may go on to promote staging into root/.
    #[arg(long)]
    pub allow_full_drill: bool,
    #[command(flatten)]
    pub attempts: AttemptFlags,
}

/// What `drpilot resume` will start: the input of the run's next execution, and why it
/// starts where it does.
#[derive(Clone, Debug)]
pub struct Plan {
    pub input: Value,
    pub from: Phase,
    pub why: String,
    pub number: u32,
}

/// `drpilot resume`: plans the run's next execution from its latest one and its
/// receipts, then starts it and follows it unless `wait` is false.
pub async fn resume(
    ctx: &Ctx,
    run_id: &str,
    flags: &ResumeFlags,
    wait: bool,
    approver: Option<&Approver>,
) -> Result<Progress, CliError> {
    let plan = plan(ctx, run_id, flags).await?;
    ctx.out.say(format!(
        "resuming run {run_id} from {}: {}",
        plan.from, plan.why
    ));
    launch(ctx, run_id, plan.number, &plan.input, wait, approver).await
}

/// The next execution of `run_id`, checked as `drpilot start` checks its input.
pub async fn plan(ctx: &Ctx, run_id: &str, flags: &ResumeFlags) -> Result<Plan, CliError> {
    let (from, stop_after) = phases_asked(run_id, flags)?;
    let executions = ctx.run_executions(run_id).await?;
    let Some(latest) = executions.last() else {
        return Err(CliError::Usage(format!(
            "no execution of run {run_id} in this state machine: start it with `drpilot start --run-id {run_id}`"
        )));
    };
    not_running(latest, run_id)?;
    let started_with = latest.input.as_ref().ok_or_else(|| {
        CliError::Usage(format!(
            "execution {} has no readable input to continue from",
            latest.name
        ))
    })?;
    let latest_input = normalize(started_with, &TriggerDefaults::default())?.input;
    let profile = ProfileSource::from_env(ctx.aws.ssm.clone())
        .load(&latest_input.profile)
        .await?;
    let store = ReceiptStore::new(ctx.aws.s3.clone(), profile.receipts.clone());
    let receipts = store.phases(run_id).await?;
    // The settings to carry on with are those of the run's own latest execution: one
    // that bringup refused (it is not in the run record) changed nothing.
    let record = store.get_record(run_id).await?.map(|(record, _)| record);
    let last_of_run = record
        .as_ref()
        .and_then(|r| r.executions.last())
        .and_then(|entry| {
            executions
                .iter()
                .rev()
                .find(|e| entry.is(Some(&e.name), Some(&e.arn)))
        })
        .and_then(|e| e.input.as_ref());
    let previous = match last_of_run {
        Some(input) => normalize(input, &TriggerDefaults::default())?.input,
        None => latest_input,
    };

    let (from, why) = where_to_resume(&store, run_id, &receipts, from, previous.dry_run).await?;
    let stop_after = stop_after.unwrap_or(if previous.stop_after >= from {
        previous.stop_after
    } else {
        Phase::Teardown
    });
    let next = RunInput {
        run_id: Some(run_id.to_owned()),
        start_at: from,
        stop_after,
        // --hold with --from teardown was refused above.
        teardown: from == Phase::Teardown || (!flags.hold && previous.teardown),
        ..previous
    };
    let mut input = serde_json::to_value(&next)
        .map_err(|e| CliError::Usage(format!("the resumed input cannot be encoded: {e}")))?;
    if let Some(object) = input.as_object_mut() {
        flags.attempts.apply(object)?;
    }
    let checked = normalize(&input, &TriggerDefaults::default())?.input;
    StartFlags {
        allow_full_drill: flags.allow_full_drill,
        ..StartFlags::default()
    }
    .check(&checked)?;
    Ok(Plan {
        input,
        from,
        why,
        number: latest.number + 1,
    })
}

/// `--from` and `--stop-after`, refused when they cannot resume this run.
fn phases_asked(
    run_id: &str,
    flags: &ResumeFlags,
) -> Result<(Option<Phase>, Option<Phase>), CliError> {
    let phase = |flag: &str, text: &Option<String>| -> Result<Option<Phase>, CliError> {
        text.as_deref()
            .map(|t| {
                Phase::from_str(t).map_err(|e| CliError::Usage(format!("{flag}: {}", e.message)))
            })
            .transpose()
    };
    let from = phase("--from", &flags.from)?;
    let stop_after = phase("--stop-after", &flags.stop_after)?;
    if from == Some(Phase::Bringup) {
        return Err(CliError::Usage(format!(
            "--from bringup: run {run_id} was brought up once and keeps its backup and kickoff; resume from restore to restore it again, or start a new run"
        )));
    }
    if from == Some(Phase::Teardown) && flags.hold {
        return Err(CliError::Usage(
            "--from teardown finishes the run: it cannot be combined with --hold".into(),
        ));
    }
    Ok((from, stop_after))
}

/// The phase to resume from and why: `from` when it may run (its earlier phases are
/// done), else where the receipts say the run stopped; a run that finished has nothing
/// to resume.
async fn where_to_resume(
    store: &ReceiptStore,
    run_id: &str,
    receipts: &[PhaseReceipt],
    from: Option<Phase>,
    dry_run: bool,
) -> Result<(Phase, String), CliError> {
    Ok(match from {
        Some(from) => {
            // What bringup would refuse, refused here before anything starts.
            if let Some(blocked) = resume::blocker(receipts, from).filter(|_| !dry_run) {
                return Err(CliError::Usage(format!(
                    "--from {from}: {from} cannot run in run {run_id} yet: {}; resume from {} instead",
                    blocked.why, blocked.run_first
                )));
            }
            (from, "as asked (--from)".to_owned())
        }
        None => {
            if let Some(summary) = store.get_summary(run_id).await? {
                if summary.status == RunStatus::Succeeded && summary.torn_down {
                    return Err(CliError::Usage(format!(
                        "run {run_id} finished: it succeeded and was torn down at {}; nothing to resume (--from PHASE runs a phase again)",
                        summary.finished_at.to_rfc3339()
                    )));
                }
            }
            let point = resume::resume_point(receipts);
            (point.run_first, point.why)
        }
    })
}
