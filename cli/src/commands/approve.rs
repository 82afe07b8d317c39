//! `drpilot approve` and `drpilot deny`: answer a waiting run's approval through its task
//! token.

use chrono::Utc;
use serde_json::{json, Value};

use crate::history::fetch;
use crate::{CliError, Ctx, DENIED};

/// Finds the waiting approval's task token, or says why there is none.
async fn waiting_token(ctx: &Ctx, run_id: &str) -> Result<String, CliError> {
    let (arn, _) = ctx.any_execution_arn(run_id).await?;
    let progress = fetch(&ctx.sfn, &arn).await?;
    progress.waiting_token.ok_or_else(|| {
        CliError::Usage(format!(
            "run {run_id} is not waiting for an approval (status {})",
            progress.status
        ))
    })
}

/// `drpilot approve`: answers the approval with approver, ticket and time; promote
/// writes them into the audit record.
pub async fn approve(
    ctx: &Ctx,
    run_id: &str,
    approver: &str,
    ticket: &str,
    comment: Option<&str>,
) -> Result<Value, CliError> {
    if approver.trim().is_empty() || ticket.trim().is_empty() {
        return Err(CliError::Usage(
            "--approver and --ticket must not be empty".into(),
        ));
    }
    let token = waiting_token(ctx, run_id).await?;
    let approval = json!({
        "approver": approver.trim(),
        "ticket": ticket.trim(),
        "approved_at": Utc::now(),
        "comment": comment,
    });
    ctx.sfn
        .send_task_success()
        .task_token(token)
        .output(approval.to_string())
        .send()
        .await
        .map_err(|e| CliError::aws("SendTaskSuccess", e))?;
    ctx.out.say(format!(
        "approved run {run_id} as {approver} (ticket {ticket})"
    ));
    Ok(approval)
}

/// `drpilot deny`: fails the approval task; the run skips promote and tears down.
pub async fn deny(ctx: &Ctx, run_id: &str, reason: &str) -> Result<(), CliError> {
    let token = waiting_token(ctx, run_id).await?;
    ctx.sfn
        .send_task_failure()
        .task_token(token)
        .error(DENIED)
        .cause(reason)
        .send()
        .await
        .map_err(|e| CliError::aws("SendTaskFailure", e))?;
    ctx.out.say(format!("denied run {run_id}: {reason}"));
    Ok(())
}
