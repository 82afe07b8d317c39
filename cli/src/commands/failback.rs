//! `drpilot failback`: starts a failback of a DR run (the failback state machine) and
//! follows it like `start` follows a drill, telling the operator each time it waits for
//! a confirmation (`drpilot approve`, twice, by two approvers).

use std::time::Duration;

use drpilot_shared::failback::{FailbackInput, FailbackSummary};
use drpilot_shared::input::new_id;
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::record::ExecutionName;
use drpilot_shared::store::ReceiptStore;
use serde::Serialize;
use serde_json::{json, Value};

use crate::commands::start::step_line;
use crate::history::{fetch, Progress};
use crate::{CliError, Ctx};

/// The flags of `drpilot failback`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct FailbackArgs {
    /// The run whose promotion made the DR site live.
    #[arg(long = "dr-run")]
    pub dr_run: String,
    /// The profile (default: the one the DR run belongs to).
    #[arg(long)]
    pub profile: Option<String>,
    /// Drills only: the literal FAILBACK (with --confirm2) instead of two approvals.
    #[arg(long)]
    pub confirm1: Option<String>,
    /// Drills only: the literal CONFIRM-<dr run id>.
    #[arg(long)]
    pub confirm2: Option<String>,
    /// Run every check and write the plan; copy nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keys changed on both sites: keep the DR site's version (needs --approver, --ticket).
    #[arg(long)]
    pub discard_divergent: bool,
    #[arg(long)]
    pub approver: Option<String>,
    #[arg(long)]
    pub ticket: Option<String>,
    /// drill or recovery (default: the DR run's mode).
    #[arg(long)]
    pub mode: Option<String>,
    /// The failback's run id (default: failback-<UTC time>-<random>).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Return once started instead of following the failback.
    #[arg(long)]
    pub no_wait: bool,
}

/// How a followed failback ended.
#[derive(Clone, Debug, Serialize)]
pub struct FailbackProgress {
    pub run_id: String,
    pub progress: Progress,
    /// The summary, once teardown wrote it.
    pub summary: Option<FailbackSummary>,
}

impl FailbackProgress {
    pub fn succeeded(&self) -> bool {
        self.progress.succeeded()
    }
}

impl FailbackArgs {
    /// The execution input these flags make, checked as the failback function checks it.
    pub fn input(&self, profile: &str, run_id: &str) -> Result<Value, CliError> {
        let mut input = json!({
            "run_id": run_id,
            "profile": profile,
            "dr_run_id": self.dr_run,
            "dry_run": self.dry_run,
            "discard_divergent": self.discard_divergent,
        });
        for (field, value) in [
            ("confirm1", &self.confirm1),
            ("confirm2", &self.confirm2),
            ("approver", &self.approver),
            ("ticket", &self.ticket),
            ("mode", &self.mode),
        ] {
            if let Some(v) = value {
                input[field] = json!(v);
            }
        }
        FailbackInput::from_json(&input)
            .map_err(|e| CliError::Usage(flag_names(&e.to_string())))?;
        Ok(input)
    }
}

/// An input error in the flags' own spelling (`dr_run_id` is `--dr-run`).
fn flag_names(message: &str) -> String {
    message
        .replace("dr_run_id", "--dr-run")
        .replace("discard_divergent", "--discard-divergent")
        .replace("confirm1", "--confirm1")
        .replace("confirm2", "--confirm2")
        .replace("run_id:", "--run-id:")
        .replace("approver:", "--approver:")
        .replace("ticket:", "--ticket:")
}

/// `drpilot failback`: starts the failback and follows it unless `--no-wait`.
pub async fn failback(ctx: &Ctx, args: &FailbackArgs) -> Result<FailbackProgress, CliError> {
    let ctx = ctx.failback();
    let profile = match &args.profile {
        Some(p) => p.clone(),
        None => profile_of(&ctx, &args.dr_run).await?,
    };
    let run_id = args.run_id.clone().unwrap_or_else(|| new_id("failback"));
    let input = args.input(&profile, &run_id)?;
    let machine = ctx.state_machine_arn().await?;
    let name = ExecutionName::format(&run_id, 1);
    let execution = ctx.start_execution(&machine, &name, &input).await?;
    ctx.out.say(format!(
        "started failback {run_id} of DR run {} (profile {profile}){}\n  execution {}",
        args.dr_run,
        if args.dry_run { ", dry run" } else { "" },
        &execution
    ));
    let progress = if args.no_wait {
        fetch(&ctx.sfn, &execution).await?
    } else {
        follow(&ctx, &execution, &run_id).await?
    };
    let summary = if progress.finished() {
        summary_of(&ctx, &profile, &run_id).await?
    } else {
        None
    };
    if let Some(s) = &summary {
        print_summary(&ctx, s);
    }
    Ok(FailbackProgress {
        run_id,
        progress,
        summary,
    })
}

/// The profile whose receipts hold `dr_run`.
async fn profile_of(ctx: &Ctx, dr_run: &str) -> Result<String, CliError> {
    let source = ProfileSource::from_env(ctx.aws.ssm.clone());
    for (name, profile) in source.load_all().await? {
        let store = ReceiptStore::new(ctx.aws.s3.clone(), profile.receipts.clone());
        if store.get_record(dr_run).await?.is_some() {
            return Ok(name);
        }
    }
    Err(CliError::Usage(format!(
        "--dr-run: no stored profile has a run {dr_run}; name its profile with --profile"
    )))
}

async fn summary_of(
    ctx: &Ctx,
    profile: &str,
    run_id: &str,
) -> Result<Option<FailbackSummary>, CliError> {
    let profile = ProfileSource::from_env(ctx.aws.ssm.clone())
        .load(profile)
        .await?;
    let store = ReceiptStore::new(ctx.aws.s3.clone(), profile.receipts.clone());
    Ok(store.get_failback_summary(run_id).await?)
}

/// Polls the failback, printing each step as it ends and each confirmation it waits for.
async fn follow(ctx: &Ctx, execution_arn: &str, run_id: &str) -> Result<Progress, CliError> {
    let mut printed = Vec::new();
    let mut told: Option<String> = None;
    loop {
        let progress = fetch(&ctx.sfn, execution_arn).await?;
        for (i, step) in progress.steps.iter().enumerate() {
            if step.exited_at.is_some() && !printed.contains(&i) {
                ctx.out.say(step_line(step));
                printed.push(i);
            }
        }
        if progress.waiting_for_approval && told != progress.waiting_token {
            told.clone_from(&progress.waiting_token);
            let which = progress
                .steps
                .last()
                .map_or("a confirmation".to_owned(), |s| s.phase.to_string());
            ctx.out.say(format!(
                "  waiting for {which}: drpilot approve {run_id} --approver NAME --ticket ID   (two different approvers; or: drpilot deny {run_id} --reason TEXT)"
            ));
        }
        if progress.finished() {
            ctx.out.say(format!(
                "failback {run_id} {}{}",
                progress.status,
                progress
                    .error
                    .as_ref()
                    .map(|e| format!(
                        ": {e} {}",
                        crate::history::readable_cause(progress.cause.as_deref().unwrap_or(""))
                    ))
                    .unwrap_or_default()
            ));
            return Ok(progress);
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

fn print_summary(ctx: &Ctx, s: &FailbackSummary) {
    for line in crate::html::failback_text(s) {
        ctx.out.say(line);
    }
}
