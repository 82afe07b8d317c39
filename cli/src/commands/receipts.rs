//! `drpilot receipts`: every phase receipt of a run, found through bringup's output
//! (profile → receipts location).

use drpilot_shared::component::ComponentReceipt;
use drpilot_shared::failback::{FailbackInput, FailbackReceipt, FailbackSummary};
use drpilot_shared::input::{normalize, TriggerDefaults};
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::receipt::{PhaseReceipt, PhaseStatus};
use drpilot_shared::record::{ExecutionName, RunRecord};
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::summary::RunSummary;
use drpilot_shared::S3Uri;
use serde::Serialize;

use crate::history::fetch;
use crate::{CliError, Ctx};

/// A run's receipts and summary, found through bringup's output (profile → receipts).
#[derive(Clone, Debug, Serialize)]
pub struct RunRecords {
    pub run_id: String,
    /// The profile's receipts location (every run's).
    pub receipts: S3Uri,
    pub receipts_location: S3Uri,
    pub phases: Vec<PhaseReceipt>,
    pub summary: Option<RunSummary>,
    /// The run record: what the run is and every execution that worked on it.
    pub record: Option<RunRecord>,
    /// Each component's receipt (its restore, verdict, RTO/RPO and cleanup).
    pub components: Vec<ComponentReceipt>,
    /// A failback run's step receipts and summary.
    pub failback_steps: Vec<FailbackReceipt>,
    pub failback: Option<FailbackSummary>,
}

pub async fn records(ctx: &Ctx, run: &str) -> Result<RunRecords, CliError> {
    let (arn, _) = ctx.any_execution_arn(run).await?;
    let progress = fetch(&ctx.sfn, &arn).await?;
    let run_id = &ExecutionName::parse(run).run_id;
    // The profile, from bringup's run context, else from the execution's input (a
    // drill's or a failback's).
    let profile_name = match (&progress.run, &progress.input) {
        (Some(context), _) => context.input.profile.clone(),
        (None, Some(input)) => match normalize(input, &TriggerDefaults::default()) {
            Ok(normalized) => normalized.input.profile,
            Err(err) => FailbackInput::from_json(input)
                .map_err(|_| err)?
                .profile,
        },
        (None, None) => {
            return Err(CliError::Usage(format!(
                "run {run_id}: its execution has neither a run context nor a readable input, so no receipts to read"
            )))
        }
    };
    let profile = ProfileSource::from_env(ctx.aws.ssm.clone())
        .load(&profile_name)
        .await?;
    let store = ReceiptStore::new(ctx.aws.s3.clone(), profile.receipts.clone());
    Ok(RunRecords {
        run_id: run_id.to_owned(),
        receipts: profile.receipts.clone(),
        receipts_location: store.run_dir(run_id)?,
        phases: store.phases(run_id).await?,
        summary: store.get_summary(run_id).await?,
        record: store.get_record(run_id).await?.map(|(record, _)| record),
        components: store.components(run_id).await?,
        failback_steps: store.failback_steps(run_id).await?,
        failback: store.get_failback_summary(run_id).await?,
    })
}

/// `drpilot receipts`: every phase receipt of the run.
pub async fn receipts(ctx: &Ctx, run_id: &str) -> Result<RunRecords, CliError> {
    let records = records(ctx, run_id).await?;
    ctx.out.say(format!(
        "receipts of run {run_id} in {}",
        records.receipts_location
    ));
    for r in &records.phases {
        ctx.out.say(receipt_line(
            r.phase.as_str(),
            r.status,
            r.duration_ms,
            r.attempt,
            r.reason.as_deref(),
        ));
    }
    for c in &records.components {
        let cleanup: Vec<String> = c
            .created_resources
            .iter()
            .map(|r| format!("{} {:?}", r.resource.describe(), r.state).to_lowercase())
            .collect();
        ctx.out.say(format!(
            "  component {:<16} {:<13} {:<9} polls {:<4} {}{}",
            c.name,
            c.kind,
            c.status.as_str(),
            c.polls,
            c.reason.as_deref().unwrap_or(""),
            if cleanup.is_empty() {
                String::new()
            } else {
                format!(" [{}]", cleanup.join(", "))
            }
        ));
    }
    for r in &records.failback_steps {
        ctx.out.say(receipt_line(
            r.phase.as_str(),
            r.status,
            r.duration_ms,
            r.attempt,
            r.reason.as_deref(),
        ));
    }
    for e in records.record.iter().flat_map(|r| &r.executions) {
        ctx.out.say(format!(
            "  execution {:<20} {:<28} {}",
            e.name.as_deref().unwrap_or("-"),
            e.window(),
            e.ended()
        ));
    }
    if records.summary.is_none() && records.failback.is_none() {
        ctx.out
            .say("  (no run summary yet: teardown has not finished)");
    }
    Ok(records)
}

/// One receipt, a drill phase's or a failback step's, as `drpilot receipts` lists it.
fn receipt_line(
    name: &str,
    status: PhaseStatus,
    duration_ms: u64,
    attempt: u32,
    reason: Option<&str>,
) -> String {
    format!(
        "  {name:<14} {:<8} {duration_ms:>8} ms  attempt {attempt}  {}",
        status.as_str(),
        reason.unwrap_or("")
    )
}
