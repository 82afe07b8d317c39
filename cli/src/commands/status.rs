//! `drpilot status`: a run's steps so far.

use crate::commands::start::{print_outcome, step_line};
use crate::history::{fetch, Progress};
use crate::{CliError, Ctx};

/// `drpilot status`: the run's steps so far.
pub async fn status(ctx: &Ctx, run_id: &str) -> Result<Progress, CliError> {
    let (arn, _) = ctx.any_execution_arn(run_id).await?;
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
        ctx.out.say(format!(
            "  waiting for approval: drpilot approve {run_id} --approver NAME --ticket ID"
        ));
    }
    if progress.finished() {
        print_outcome(ctx, run_id, &progress);
    }
    Ok(progress)
}
