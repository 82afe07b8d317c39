//! `drpilot status`: a run's steps so far.

use crate::commands::start::{print_outcome, step_line};
use crate::history::{fetch, Progress};
use crate::{CliError, Ctx};

/// `drpilot status`: the run's steps so far.
pub async fn status(ctx: &Ctx, run_id: &str) -> Result<Progress, CliError> {
    let (arn, found_in) = ctx.any_execution_arn(run_id).await?;
    let is_failback = found_in.state_machine != ctx.state_machine;
    let progress = fetch(&ctx.sfn, &arn).await?;
    ctx.out.say(format!("run {run_id}: {}", progress.status));
    for step in &progress.steps {
        if step.exited_at.is_some() {
            ctx.out.say(step_line(step));
        } else {
            ctx.out.say(format!("  … {:<14} running", step.phase));
        }
    }
    if progress.waiting_for_approval {
        let what = if is_failback {
            "a confirmation (two different approvers)"
        } else {
            "approval"
        };
        ctx.out.say(format!(
            "  waiting for {what}: drpilot approve {run_id} --approver NAME --ticket ID"
        ));
    }
    if progress.finished() && is_failback {
        ctx.out.say(format!(
            "failback {run_id} {} (drpilot report {run_id} for its summary)",
            progress.status
        ));
    } else if progress.finished() {
        print_outcome(ctx, run_id, &progress);
    }
    Ok(progress)
}
