//! `drpilot report`: a run's (or a failback's) summary in words, and optionally one self-contained HTML
//! page.

use drpilot_shared::store::ReceiptStore;

use crate::audit::{self, AuditReport};
use crate::commands::receipts::{records, RunRecords};
use crate::html;
use crate::{CliError, Ctx};

/// `drpilot report`: the summary in words, and optionally one self-contained HTML page.
pub async fn report(
    ctx: &Ctx,
    run_id: &str,
    html_file: Option<&std::path::Path>,
) -> Result<Report, CliError> {
    let records = records(ctx, run_id).await?;
    if let (None, Some(failback)) = (&records.summary, &records.failback) {
        for line in html::failback_text(failback) {
            ctx.out.say(line);
        }
        if let Some(path) = html_file {
            write(path, &html::render_failback(failback)?)?;
            ctx.out
                .say(format!("HTML report written to {}", path.display()));
        }
        return Ok(Report::Failback(Box::new(records)));
    }
    let Some(summary) = &records.summary else {
        return Err(CliError::Usage(format!(
            "run {run_id} has no summary yet (teardown writes it at the end of the run)"
        )));
    };
    for line in html::text_report(summary) {
        ctx.out.say(line);
    }
    let store = ReceiptStore::new(ctx.aws.s3.clone(), records.receipts.clone());
    let history = store.summaries().await?;
    let audit = Box::pin(audit::gather(
        &ctx.aws.s3,
        &store,
        summary,
        &records.phases,
        &history,
    ))
    .await?;
    for line in html::audit_text(&audit) {
        ctx.out.say(line);
    }
    if let Some(path) = html_file {
        write(path, &html::render_audit(&audit, &records.phases)?)?;
        ctx.out
            .say(format!("HTML report written to {}", path.display()));
    }
    Ok(Report::Run(Box::new(audit)))
}

/// What `drpilot report` found: a run's auditor report, or a failback's records.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum Report {
    Run(Box<AuditReport>),
    Failback(Box<RunRecords>),
}

fn write(path: &std::path::Path, page: &str) -> Result<(), CliError> {
    std::fs::write(path, page).map_err(|e| CliError::Io(format!("writing {}: {e}", path.display())))
}
