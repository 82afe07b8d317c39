//! `drpilot start`: start a run and follow it to the end, answering the approval when
//! asked to (the local drill's `--auto-approve` or prompt).

use std::io::Write;
use std::time::Duration;

use drpilot_shared::input::{new_run_id, normalize, Mode, Promotion, RunInput, TriggerDefaults};
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::record::ExecutionName;
use drpilot_shared::Phase;
use serde_json::{json, Value};

use crate::commands::approve::{approve, deny, prove_identity};
use crate::history::{self, fetch, readable_cause, ExecutionState, Progress};
use crate::{CliError, Ctx, RunExecution};

/// The flags of `drpilot start` that mirror the runbook's steps; each overrides the same
/// setting of `--input`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct StartFlags {
    /// `drill` (the default) or `recovery`.
    #[arg(long)]
    pub mode: Option<String>,
    /// The first phase to run (bringup always runs).
    #[arg(long)]
    pub start_at: Option<String>,
    /// The last phase to run before teardown.
    #[arg(long)]
    pub stop_after: Option<String>,
    /// Keep the staging after the run (`teardown: false`).
    #[arg(long)]
    pub hold: bool,
    /// Only validate: `--start-at validate --stop-after validate`.
    #[arg(long)]
    pub validate_only: bool,
    /// Verify what each phase would do; write nothing but receipts.
    #[arg(long)]
    pub dry_run: bool,
    /// With --allow-promote-bypass, a drill promotes without waiting for an approval.
    #[arg(long)]
    pub auto_promote: bool,
    /// Allows --auto-promote's bypass (drills only).
    #[arg(long)]
    pub allow_promote_bypass: bool,
    /// The run's id (default: <mode>-<time>-<random>).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Required for a drill that may promote staging into root/.
    #[arg(long)]
    pub allow_full_drill: bool,
    #[command(flatten)]
    pub attempts: AttemptFlags,
}

/// How often a phase may try again after a transient failure (`max_attempts`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AttemptFlags {
    /// Attempts a phase gets at a transient failure, the first included (1-3; default 3).
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Never retry a phase: `--max-attempts 1`.
    #[arg(long)]
    pub no_retry: bool,
}

impl AttemptFlags {
    /// Writes `max_attempts` into the input; both flags at once is a usage error.
    pub fn apply(&self, input: &mut serde_json::Map<String, Value>) -> Result<(), CliError> {
        match (self.max_attempts, self.no_retry) {
            (Some(n), true) => Err(CliError::Usage(format!(
                "--no-retry means one attempt: it cannot be combined with --max-attempts {n}"
            ))),
            (Some(n), false) => {
                input.insert("max_attempts".into(), json!(n));
                Ok(())
            }
            (None, true) => {
                input.insert("max_attempts".into(), json!(1));
                Ok(())
            }
            (None, false) => Ok(()),
        }
    }
}

impl StartFlags {
    /// The flags of a run that may go all the way to promotion (the local drill).
    pub fn full_drill() -> Self {
        Self {
            allow_full_drill: true,
            ..Self::default()
        }
    }

    /// Writes the flags into the input object; combinations that contradict each other
    /// are usage errors naming the flags.
    pub fn apply(&self, input: &mut serde_json::Map<String, Value>) -> Result<(), CliError> {
        if self.validate_only && (self.start_at.is_some() || self.stop_after.is_some()) {
            return Err(CliError::Usage(
                "--validate-only runs validate alone: it cannot be combined with --start-at or --stop-after".into(),
            ));
        }
        self.attempts.apply(input)?;
        let mut set = |key: &str, value: Value| {
            input.insert(key.to_owned(), value);
        };
        if let Some(mode) = &self.mode {
            set("mode", json!(mode));
        }
        if let Some(run_id) = &self.run_id {
            set("run_id", json!(run_id));
        }
        if self.validate_only {
            set("start_at", json!("validate"));
            set("stop_after", json!("validate"));
        }
        if let Some(phase) = &self.start_at {
            set("start_at", json!(phase));
        }
        if let Some(phase) = &self.stop_after {
            set("stop_after", json!(phase));
        }
        if self.hold {
            set("teardown", json!(false));
        }
        for (flag, key) in [
            (self.dry_run, "dry_run"),
            (self.auto_promote, "auto_promote"),
            (self.allow_promote_bypass, "allow_promote_bypass"),
        ] {
            if flag {
                set(key, json!(true));
            }
        }
        Ok(())
    }

    /// Refuses what the flags cannot mean for this (checked) input: `--auto-promote` in a
    /// recovery, and a drill that may promote without `--allow-full-drill`.
    pub fn check(&self, input: &RunInput) -> Result<(), CliError> {
        if self.auto_promote && input.mode == Mode::Recovery {
            return Err(CliError::Usage(
                "--auto-promote is for drills: a recovery always waits for an approval with approver and ticket".into(),
            ));
        }
        if input.mode == Mode::Drill
            && input.promotion() != Promotion::Skip
            && !self.allow_full_drill
        {
            return Err(CliError::Usage(
                "this drill may promote staging into root/: pass --allow-full-drill, or stop before promotion (--stop-after parity-report, --validate-only, --dry-run)".into(),
            ));
        }
        Ok(())
    }
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
    flags: &StartFlags,
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
    flags.apply(object)?;
    // A manual start: `launch` proves who started it (the two-person rule holds the
    // approver apart from them); an input that names its own trigger keeps it.
    object.entry("trigger").or_insert(json!({"kind": "manual"}));
    // The same normalisation bringup makes: the run's settings, and `trigger` beside them.
    let checked = normalize(&input, &TriggerDefaults::default())?.input;
    flags.check(&checked)?;
    // The profile must exist (and be valid) before a run is started for it: the error
    // names the SSM parameter it looked for.
    ProfileSource::from_env(ctx.aws.ssm.clone())
        .load(&checked.profile)
        .await?;
    let run_id = match &checked.run_id {
        Some(id) => id.clone(),
        None => {
            let id = new_run_id(checked.mode);
            input["run_id"] = json!(id);
            id
        }
    };
    // A run id that exists continues that run: from a phase after bringup, and never
    // while another execution of it runs.
    let executions = ctx.run_executions(&run_id).await?;
    if let Some(latest) = executions.last() {
        not_running(latest, &run_id)?;
        if checked.start_at == Phase::Bringup {
            return Err(CliError::Usage(format!(
                "run {run_id} exists (execution {} {}): continue it with `drpilot resume {run_id}` or `--start-at PHASE`, or leave out --run-id for a new run",
                latest.name, latest.state
            )));
        }
    }
    let number = executions.last().map_or(1, |e| e.number + 1);
    launch(ctx, &run_id, number, &input, wait, approver).await
}

/// Refuses to add an execution to a run while one of its executions is running.
pub(crate) fn not_running(latest: &RunExecution, run_id: &str) -> Result<(), CliError> {
    if latest.state == ExecutionState::Running {
        return Err(CliError::Usage(format!(
            "execution {} of run {run_id} is still running: follow it with `drpilot status {run_id}`, or stop it first",
            latest.name
        )));
    }
    Ok(())
}

/// Starts execution `number` of `run_id` (`<run_id>.<number>`) with `input`, and follows
/// it unless `wait` is false.
pub(crate) async fn launch(
    ctx: &Ctx,
    run_id: &str,
    number: u32,
    input: &Value,
    wait: bool,
    approver: Option<&Approver>,
) -> Result<Progress, CliError> {
    let machine = ctx.state_machine_arn().await?;
    let name = ExecutionName::format(run_id, number);
    // A manual start carries the caller's proof of identity, bound to this execution:
    // bringup has STS check it and records who started the run (a resume is proven by
    // whoever resumes).
    let mut input = input.clone();
    if input["trigger"]["kind"] == "manual" {
        let digest = drpilot_shared::identity::start_digest(&name);
        let proof = prove_identity(&ctx.aws.config, &digest).await?;
        input["trigger"]["proof"] = json!(proof);
        if let Some(trigger) = input["trigger"].as_object_mut() {
            trigger.remove("verified");
        }
    }
    let execution = ctx.start_execution(&machine, &name, &input).await?;
    ctx.out.say(format!(
        "started {} run {run_id} (profile {}), execution {number}\n  execution {}",
        input["mode"].as_str().unwrap_or("drill"),
        input["profile"].as_str().unwrap_or_default(),
        &execution
    ));
    if !wait {
        return fetch(&ctx.sfn, &execution).await;
    }
    follow(ctx, &execution, run_id, approver).await
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
    let mut printed: Vec<(&'static str, bool)> = Vec::new();
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
                    printed.push((step.state, false));
                }
                (Some(false), true) | (None, true) => {
                    ctx.out.say(step_line(step));
                    printed.retain(|(s, _)| *s != step.state);
                    printed.push((step.state, true));
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

pub(crate) fn step_line(step: &history::Step) -> String {
    let seconds = step
        .seconds()
        .map(|s| format!("{s:>7.2} s"))
        .unwrap_or_default();
    match (&step.failed, &step.skipped) {
        (Some(why), _) => format!("  ✗ {:<14} {seconds}  {why}", step.phase),
        (None, Some(why)) => format!("  – {:<14} {seconds}  skipped: {why}", step.phase),
        (None, None) => format!("  ✓ {:<14} {seconds}", step.phase),
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

pub(crate) fn print_outcome(ctx: &Ctx, run_id: &str, progress: &Progress) {
    let output = progress.output.as_ref();
    if progress.succeeded() {
        let promoted = output.is_some_and(|o| o.promoted);
        ctx.out.say(format!(
            "run {run_id} SUCCEEDED, {}",
            if promoted { "promoted" } else { "not promoted" }
        ));
    } else {
        ctx.out.say(format!(
            "run {run_id} {}: {} {}",
            progress.status,
            progress.error.as_deref().unwrap_or(""),
            readable_cause(progress.cause.as_deref().unwrap_or(""))
        ));
    }
    if let Some(o) = output {
        let secs = |v: Option<f64>| v.map_or("not measured".to_owned(), |s| format!("{s:.1} s"));
        ctx.out.say(format!(
            "  RTO {}   RPO {}   summary {}",
            secs(o.rto_seconds),
            secs(o.rpo_seconds),
            o.summary
                .as_ref()
                .map_or("not written".to_owned(), ToString::to_string)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input_with(flags: &StartFlags) -> Result<RunInput, CliError> {
        let mut input = json!({"profile": "p", "mode": "drill"});
        flags.apply(input.as_object_mut().unwrap())?;
        let checked = normalize(&input, &TriggerDefaults::default())?.input;
        flags.check(&checked)?;
        Ok(checked)
    }

    #[test]
    fn the_runbook_flags_become_the_input() {
        let hold = StartFlags {
            run_id: Some("dr-1".into()),
            stop_after: Some("bringup".into()),
            hold: true,
            ..Default::default()
        };
        let input = input_with(&hold).unwrap();
        assert_eq!(input.run_id.as_deref(), Some("dr-1"));
        assert!(!input.teardown);
        assert_eq!(input.promotion(), Promotion::Skip);
        let validate = StartFlags {
            validate_only: true,
            ..Default::default()
        };
        let input = input_with(&validate).unwrap();
        assert_eq!(input.start_at.as_str(), "validate");
        assert_eq!(input.stop_after.as_str(), "validate");
        let dry = StartFlags {
            dry_run: true,
            ..Default::default()
        };
        assert!(input_with(&dry).unwrap().dry_run);
    }

    #[test]
    fn a_drill_that_may_promote_needs_allow_full_drill() {
        let err = input_with(&StartFlags::default()).unwrap_err().to_string();
        assert!(err.contains("--allow-full-drill"), "{err}");
        assert!(input_with(&StartFlags::full_drill()).is_ok());
    }

    #[test]
    fn contradicting_flags_are_usage_errors_naming_them() {
        let both = StartFlags {
            validate_only: true,
            start_at: Some("restore".into()),
            ..Default::default()
        };
        let err = input_with(&both).unwrap_err();
        assert!(matches!(err, CliError::Usage(_)));
        assert!(
            err.to_string().contains("--validate-only") && err.to_string().contains("--start-at")
        );
        let recovery = StartFlags {
            mode: Some("recovery".into()),
            auto_promote: true,
            ..Default::default()
        };
        let err = input_with(&recovery).unwrap_err().to_string();
        assert!(err.contains("--auto-promote"), "{err}");
        let bad_phase = StartFlags {
            stop_after: Some("nowhere".into()),
            ..StartFlags::full_drill()
        };
        let err = input_with(&bad_phase).unwrap_err().to_string();
        assert!(err.contains("stop_after"), "{err}");
    }
}
