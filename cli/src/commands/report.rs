//! `drpilot report`: a run's summary in words, and optionally one self-contained HTML
//! page.

use crate::commands::receipts::{records, RunRecords};
use crate::html;
use crate::{CliError, Ctx};

/// `drpilot report`: the summary in words, and optionally one self-contained HTML page.
pub async fn report(
    ctx: &Ctx,
    run_id: &str,
    html_file: Option<&std::path::Path>,
) -> Result<RunRecords, CliError> {
    let records = records(ctx, run_id).await?;
    let Some(summary) = &records.summary else {
        return Err(CliError::Usage(format!(
            "run {run_id} has no summary yet (teardown writes it at the end of the run)"
        )));
    };
    for line in html::text_report(summary) {
        ctx.out.say(line);
    }
    if let Some(path) = html_file {
        std::fs::write(path, html::render(summary, &records.phases)?)
            .map_err(|e| CliError::Io(format!("writing {}: {e}", path.display())))?;
        ctx.out
            .say(format!("HTML report written to {}", path.display()));
    }
    Ok(records)
}
