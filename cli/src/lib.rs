//! The operator CLI (`drpilot`, docs/contracts.md): start runs and follow them, approve or
//! deny promotion, read receipts and reports, and run the local drill. Human-readable by
//! default, `--json` for scripts; the exit code is 0 only on success.

pub mod history;
pub mod html;
pub mod local;

use std::io::Write;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use chrono::Utc;
use drpilot_shared::input::{normalize, TriggerDefaults};
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::receipt::{PhaseReceipt, ReceiptStore, RunSummary};
use drpilot_shared::{AwsClients, S3Uri};
use serde::Serialize;
use serde_json::{json, Value};

use crate::history::{fetch, readable_cause, Progress};

/// The state machine the CLI drives when none is named: the name the SAM template and the
/// local drill give it.
pub const DEFAULT_STATE_MACHINE: &str = "drpilot-drill";
/// The error `drpilot deny` fails the approval task with.
pub const DENIED: &str = "ApprovalDenied";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Aws(String),
    #[error("{0}")]
    Drpilot(#[from] drpilot_shared::Error),
    #[error("run {run} {status}")]
    RunFailed { run: String, status: String },
    #[error("{0}")]
    Io(String),
}

impl CliError {
    pub fn aws<E: std::error::Error + 'static>(what: &str, err: E) -> Self {
        Self::Aws(format!(
            "{what} failed: {}",
            aws_sdk_s3::error::DisplayErrorContext(&err)
        ))
    }
}

/// Where output goes and in which form.
#[derive(Clone, Copy, Debug)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// A line for people (suppressed in `--json` mode, where only the result is printed).
    pub fn say(&self, line: impl AsRef<str>) {
        if !self.json {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{}", line.as_ref());
            let _ = stdout.flush();
        }
    }

    /// The command's result: JSON in `--json` mode, else nothing (the lines said it).
    pub fn result(&self, value: &impl Serialize) {
        if self.json {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(
                stdout,
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        }
    }
}

/// The AWS clients and the state machine the CLI works with.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub aws: AwsClients,
    pub sfn: aws_sdk_sfn::Client,
    pub sns: aws_sdk_sns::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub state_machine: Option<String>,
    pub out: Out,
}

/// Dummy credentials the local emulator accepts.
pub fn local_config_loader(endpoint: &str) -> aws_config::ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .test_credentials()
}

impl Ctx {
    /// From the environment (credentials chain, region, `AWS_ENDPOINT_URL`), or against
    /// `endpoint` with the emulator's dummy credentials.
    pub async fn new(endpoint: Option<&str>, state_machine: Option<String>, out: Out) -> Self {
        let config = match endpoint {
            Some(endpoint) => local_config_loader(endpoint).load().await,
            None => aws_config::defaults(BehaviorVersion::latest()).load().await,
        };
        Self {
            sfn: aws_sdk_sfn::Client::new(&config),
            sns: aws_sdk_sns::Client::new(&config),
            sqs: aws_sdk_sqs::Client::new(&config),
            aws: AwsClients::from_config(config),
            state_machine,
            out,
        }
    }

    /// The state machine's ARN: as given (an ARN, or a name to look up), else the one
    /// named [`DEFAULT_STATE_MACHINE`].
    pub async fn state_machine_arn(&self) -> Result<String, CliError> {
        let wanted = self
            .state_machine
            .clone()
            .unwrap_or_else(|| DEFAULT_STATE_MACHINE.to_owned());
        if wanted.starts_with("arn:") {
            return Ok(wanted);
        }
        let mut pages = self.sfn.list_state_machines().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| CliError::aws("ListStateMachines", e))?;
            if let Some(m) = page.state_machines().iter().find(|m| m.name() == wanted) {
                return Ok(m.state_machine_arn().to_owned());
            }
        }
        Err(CliError::Usage(format!(
            "no state machine named {wanted:?}; pass --state-machine NAME|ARN or set DRPILOT_STATE_MACHINE"
        )))
    }

    /// `arn:…:stateMachine:NAME` + run → `arn:…:execution:NAME:RUN`.
    pub async fn execution_arn(&self, run: &str) -> Result<String, CliError> {
        if run.starts_with("arn:") {
            return Ok(run.to_owned());
        }
        let machine = self.state_machine_arn().await?;
        Ok(format!(
            "{}:{run}",
            machine.replacen(":stateMachine:", ":execution:", 1)
        ))
    }
}

/// A new run id: sortable by time, unique enough for one state machine.
pub fn new_run_id(mode: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{mode}-{}-{}",
        Utc::now().format("%Y%m%d-%H%M%S"),
        &suffix[..6]
    )
}

/// `drpilot start`: validates the input here (the same checks bringup makes), starts the
/// execution named after the run id, and follows it unless `wait` is false.
pub async fn start(
    ctx: &Ctx,
    profile: &str,
    input_file: Option<&std::path::Path>,
    backup_uri: Option<&str>,
    wait: bool,
    approver: Option<&Approver>,
) -> Result<Progress, CliError> {
    let mut input: Value = match input_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Usage(format!("--input {}: {e}", path.display())))?;
            serde_json::from_str(&text).map_err(|e| {
                CliError::Usage(format!("--input {}: not JSON: {e}", path.display()))
            })?
        }
        None => json!({}),
    };
    let Some(object) = input.as_object_mut() else {
        return Err(CliError::Usage("--input: expected a JSON object".into()));
    };
    object.insert("profile".into(), json!(profile));
    object.entry("mode").or_insert(json!("drill"));
    if let Some(uri) = backup_uri {
        object.insert("backup_uri".into(), json!(uri));
    }
    // The same normalisation bringup makes: the run's settings, and `trigger` beside them.
    let checked = normalize(&input, &TriggerDefaults::default())?.input;
    let run_id = match &checked.run_id {
        Some(id) => id.clone(),
        None => {
            let id = new_run_id(checked.mode.as_str());
            input["run_id"] = json!(id);
            id
        }
    };
    let machine = ctx.state_machine_arn().await?;
    let started = ctx
        .sfn
        .start_execution()
        .state_machine_arn(&machine)
        .name(&run_id)
        .input(input.to_string())
        .send()
        .await
        .map_err(|e| CliError::aws("StartExecution", e))?;
    ctx.out.say(format!(
        "started {} run {run_id} (profile {profile})\n  execution {}",
        checked.mode,
        started.execution_arn()
    ));
    if !wait {
        return fetch(&ctx.sfn, started.execution_arn()).await;
    }
    follow(ctx, started.execution_arn(), &run_id, approver).await
}

/// Who approves when a followed run asks (the local drill's prompt or `--auto-approve`).
#[derive(Clone, Debug)]
pub enum Approver {
    Auto { approver: String, ticket: String },
    Prompt,
}

/// Polls the execution, printing each state as it starts and ends, until it finishes.
pub async fn follow(
    ctx: &Ctx,
    execution_arn: &str,
    run_id: &str,
    approver: Option<&Approver>,
) -> Result<Progress, CliError> {
    let mut printed: Vec<(String, bool)> = Vec::new();
    let mut told_about_approval = false;
    loop {
        let progress = fetch(&ctx.sfn, execution_arn).await?;
        for step in &progress.steps {
            let done = step.exited_at.is_some();
            let seen = printed
                .iter()
                .find(|(s, _)| *s == step.state)
                .map(|(_, d)| *d);
            match (seen, done) {
                (None, false) => {
                    ctx.out.say(format!("  … {:<14} running", step.phase));
                    printed.push((step.state.clone(), false));
                }
                (Some(false), true) | (None, true) => {
                    ctx.out.say(step_line(step));
                    printed.retain(|(s, _)| *s != step.state);
                    printed.push((step.state.clone(), true));
                }
                _ => {}
            }
        }
        if progress.waiting_for_approval && !told_about_approval {
            told_about_approval = true;
            match approver {
                Some(Approver::Auto { approver, ticket }) => {
                    ctx.out.say(format!(
                        "  approving as {approver} (ticket {ticket}), --auto-approve"
                    ));
                    approve(
                        ctx,
                        run_id,
                        approver,
                        ticket,
                        Some("auto-approved by the local drill"),
                    )
                    .await?;
                }
                Some(Approver::Prompt) => {
                    if let Some(message) = &progress.approval_message {
                        ctx.out.say(indent(message));
                    }
                    prompt_and_answer(ctx, run_id).await?;
                }
                None => {
                    ctx.out.say(format!(
                        "  waiting for approval: drpilot approve {run_id} --approver NAME --ticket ID   (or: drpilot deny {run_id} --reason TEXT)"
                    ));
                }
            }
        }
        if progress.finished() {
            print_outcome(ctx, run_id, &progress);
            return Ok(progress);
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn step_line(step: &history::Step) -> String {
    let seconds = step
        .seconds()
        .map(|s| format!("{s:>7.2} s"))
        .unwrap_or_default();
    match &step.failed {
        Some(why) => format!("  ✗ {:<14} {seconds}  {why}", step.phase),
        None => format!("  ✓ {:<14} {seconds}", step.phase),
    }
}

async fn prompt_and_answer(ctx: &Ctx, run_id: &str) -> Result<(), CliError> {
    let ask = |q: &str| -> Result<String, CliError> {
        let mut stdout = std::io::stdout().lock();
        let _ = write!(stdout, "{q}");
        let _ = stdout.flush();
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| CliError::Io(format!("reading the answer: {e}")))?;
        Ok(line.trim().to_owned())
    };
    let answer = ask("  promote staging into root/? [y/N] ")?;
    if answer.eq_ignore_ascii_case("y") || answer.eq_ignore_ascii_case("yes") {
        let approver = ask("  approver: ")?;
        let ticket = ask("  ticket: ")?;
        approve(ctx, run_id, &approver, &ticket, None)
            .await
            .map(drop)
    } else {
        let reason = ask("  reason for declining: ")?;
        deny(
            ctx,
            run_id,
            if reason.is_empty() {
                "declined at the prompt"
            } else {
                &reason
            },
        )
        .await
    }
}

fn print_outcome(ctx: &Ctx, run_id: &str, progress: &Progress) {
    let out = &progress.output;
    match progress.status.as_str() {
        "SUCCEEDED" => {
            let promoted = out.as_ref().is_some_and(|o| o["promoted"] == true);
            ctx.out.say(format!(
                "run {run_id} SUCCEEDED{}",
                if promoted {
                    ", promoted"
                } else {
                    ", not promoted"
                }
            ));
        }
        status => {
            ctx.out.say(format!(
                "run {run_id} {status}: {} {}",
                progress.error.as_deref().unwrap_or(""),
                readable_cause(progress.cause.as_deref().unwrap_or(""))
            ));
        }
    }
    if let Some(o) = out {
        let secs = |v: &Value| {
            v.as_f64()
                .map_or("not measured".to_owned(), |s| format!("{s:.1} s"))
        };
        ctx.out.say(format!(
            "  RTO {}   RPO {}   summary {}",
            secs(&o["rto_seconds"]),
            secs(&o["rpo_seconds"]),
            o["summary"].as_str().unwrap_or("not written")
        ));
    }
}

/// Finds the waiting approval's task token, or says why there is none.
async fn waiting_token(ctx: &Ctx, run_id: &str) -> Result<String, CliError> {
    let arn = ctx.execution_arn(run_id).await?;
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

/// `drpilot status`: the run's steps so far.
pub async fn status(ctx: &Ctx, run_id: &str) -> Result<Progress, CliError> {
    let arn = ctx.execution_arn(run_id).await?;
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

/// A run's receipts and summary, found through bringup's output (profile → receipts).
#[derive(Clone, Debug, Serialize)]
pub struct RunRecords {
    pub run_id: String,
    pub receipts_location: S3Uri,
    pub phases: Vec<PhaseReceipt>,
    pub summary: Option<RunSummary>,
}

pub async fn records(ctx: &Ctx, run_id: &str) -> Result<RunRecords, CliError> {
    let arn = ctx.execution_arn(run_id).await?;
    let progress = fetch(&ctx.sfn, &arn).await?;
    let profile_name = progress
        .run
        .as_ref()
        .and_then(|r| r["input"]["profile"].as_str().map(str::to_owned))
        .ok_or_else(|| {
            CliError::Usage(format!(
                "run {run_id} has no run context (bringup did not succeed), so no receipts to read"
            ))
        })?;
    let profile = ProfileSource::from_env(ctx.aws.ssm.clone())
        .load(&profile_name)
        .await?;
    let store = ReceiptStore::new(ctx.aws.s3.clone(), profile.receipts.clone());
    Ok(RunRecords {
        run_id: run_id.to_owned(),
        receipts_location: store.run_dir(run_id)?,
        phases: store.phases(run_id).await?,
        summary: store.get_summary(run_id).await?,
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
        ctx.out.say(format!(
            "  {:<14} {:<8} {:>8} ms  attempt {}  {}",
            r.phase.as_str(),
            format!("{:?}", r.status).to_lowercase(),
            r.duration_ms,
            r.attempt,
            r.reason.as_deref().unwrap_or("")
        ));
    }
    if records.summary.is_none() {
        ctx.out
            .say("  (no run summary yet: teardown has not finished)");
    }
    Ok(records)
}

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
        std::fs::write(path, html::render(summary, &records.phases))
            .map_err(|e| CliError::Io(format!("writing {}: {e}", path.display())))?;
        ctx.out
            .say(format!("HTML report written to {}", path.display()));
    }
    Ok(records)
}
