use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use drpilot_cli::local::{self, DrillOptions};
use drpilot_cli::{
    approve, deny, parse_since, receipts, report, resume, runs, start, status, CliError, Ctx,
    ExitStatus, Out, ResumeFlags, StartFlags,
};

/// drpilot: prove you can restore, and restore for real when it burns.
#[derive(Parser)]
#[command(name = "drpilot", version, about)]
struct Cli {
    /// Print results as JSON (for scripts) instead of human-readable lines.
    #[arg(long, global = true)]
    json: bool,
    /// The state machine to drive: a name or an ARN (default: drpilot-drill).
    #[arg(long, global = true, env = "DRPILOT_STATE_MACHINE")]
    state_machine: Option<String>,
    /// The failback state machine: a name or an ARN (default: drpilot-failback).
    #[arg(long, global = true, env = "DRPILOT_FAILBACK_STATE_MACHINE")]
    failback_state_machine: Option<String>,
    /// The approve function `approve`/`deny` call: a name, an ARN or its Function URL
    /// (default: drpilot-approve; on the local stack the served `approve`).
    #[arg(long, global = true, env = "DRPILOT_APPROVE_FUNCTION")]
    approve_function: Option<String>,
    /// Talk to the local stack (moto on 127.0.0.1:4599) instead of AWS.
    #[arg(long, global = true)]
    local: bool,
    /// On an error, also show its full chain of causes (the AWS SDK's detail).
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a run and follow it to the end (or to the approval, with --no-wait).
    Start {
        #[arg(long)]
        profile: String,
        /// Execution input (JSON); --profile and --backup-uri override it.
        #[arg(long)]
        input: Option<PathBuf>,
        #[arg(long)]
        backup_uri: Option<String>,
        /// Return once started instead of following the run.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        flags: StartFlags,
    },
    /// Continue a run in a new execution: from the phase that failed (or the first one
    /// not done, or --from PHASE), reusing its held staging, receipts and lock.
    Resume {
        run: String,
        /// Return once started instead of following the run.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        flags: ResumeFlags,
    },
    /// Return the data from the DR site to the primary after a recovery promoted it:
    /// preflight, divergence, two confirmations, copy back, teardown.
    Failback(drpilot_cli::FailbackArgs),
    /// A run's phases so far (its latest execution; RUN.N names one).
    Status { run: String },
    /// Approve a waiting run's promotion.
    Approve {
        run: String,
        #[arg(long)]
        approver: String,
        #[arg(long)]
        ticket: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Decline a waiting run's promotion (the run tears down without promoting).
    Deny {
        run: String,
        #[arg(long)]
        reason: String,
    },
    /// A run's phase receipts.
    Receipts { run: String },
    /// One line per run (newest first): mode, trigger, status, RTO/RPO, promoted.
    Runs {
        /// Only this profile's runs (default: every stored profile).
        #[arg(long)]
        profile: Option<String>,
        /// Only runs started at or after this date (2026-11-01) or time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
    /// Everything an auditor takes away for a period, as one zip: each run's receipts,
    /// summary, approvals, audit-record copies and report, an index.csv (the shape of an
    /// AWS Backup restore job report) and controls.json.
    Evidence {
        #[arg(long)]
        profile: String,
        /// Runs started at or after this date (2026-01-01) or time (RFC 3339).
        #[arg(long)]
        since: String,
        /// Runs started before this date or time (default: now).
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Readiness between drills: what the hourly check last found for a profile (backup
    /// age, contract, encryption, lock, last drill, predicted recovery); exit 1 when not
    /// ready.
    Readiness {
        #[arg(long)]
        profile: String,
        /// Check now (invoke the readiness function) instead of reading the last report.
        #[arg(long)]
        check: bool,
        /// The readiness function --check invokes (default: drpilot-readiness; on the
        /// local stack the served `readiness`).
        #[arg(long, env = "DRPILOT_READINESS_FUNCTION")]
        readiness_function: Option<String>,
    },
    /// A run's auditor report (summary, evidence, approval, targets, trend), optionally as
    /// one self-contained HTML page.
    Report {
        run: String,
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Backups: make one from a directory, or verify one in S3 without restoring it.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// The local stack: up, down, or a full drill on it.
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Make a contract backup of a directory (state.tar.zst, manifests.tar.zst,
    /// metadata.json), optionally publishing it under a backups prefix.
    Make(drpilot_cli::commands::backup::MakeArgs),
    /// Check a backup in place (contract, sizes, SHA-256, archive structure) and, with
    /// --profile, its age against the RPO target; writes nothing.
    Verify {
        /// The backup's location, s3://bucket/prefix/.
        uri: String,
        #[arg(long)]
        profile: Option<String>,
    },
}

#[derive(Subcommand)]
enum LocalCommand {
    /// Start moto and cargo lambda watch, and provision what a run of the demo profile
    /// needs (buckets, profile, topic, state machine, a demo backup).
    Up,
    /// Stop them.
    Down,
    /// Run a full DR drill on the local stack.
    Drill {
        /// Approve promotion without asking (required when stdin is not a terminal).
        #[arg(long)]
        auto_approve: bool,
        /// How many objects the generated demo backup holds.
        #[arg(long, default_value_t = 3000)]
        objects: usize,
        /// Where to write the HTML report (default .local/reports/<run>.html).
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

/// Runs the command `cli` names and answers its exit status. Longer than 100 lines on
/// purpose: a dispatch table with one short arm per command (each calls its command's
/// module, prints the result and says what success is), read best as one match; command
/// groups with several arms have their own function ([`local_command`], [`backup_command`]).
async fn run(cli: Cli) -> Result<ExitStatus, CliError> {
    let out = Out { json: cli.json };
    let endpoint = cli.local.then_some(local::ENDPOINT);
    let ctx = || async {
        let mut ctx = Ctx::new(endpoint, cli.state_machine.clone(), out).await;
        ctx.failback_state_machine
            .clone_from(&cli.failback_state_machine);
        ctx.approve_function.clone_from(&cli.approve_function);
        ctx
    };
    match &cli.command {
        Command::Start {
            profile,
            input,
            backup_uri,
            no_wait,
            flags,
        } => {
            let progress = start(
                &ctx().await,
                profile,
                input.as_deref(),
                backup_uri.as_deref(),
                !no_wait,
                None,
                flags,
            )
            .await?;
            out.result(&progress);
            Ok(ExitStatus::success_if(
                progress.succeeded() || (*no_wait && !progress.finished()),
            ))
        }
        Command::Resume {
            run,
            no_wait,
            flags,
        } => {
            let progress = resume(&ctx().await, run, flags, !no_wait, None).await?;
            out.result(&progress);
            Ok(ExitStatus::success_if(
                progress.succeeded() || (*no_wait && !progress.finished()),
            ))
        }
        Command::Failback(args) => {
            let progress = drpilot_cli::failback(&ctx().await, args).await?;
            out.result(&progress);
            Ok(ExitStatus::success_if(
                progress.succeeded() || (args.no_wait && !progress.progress.finished()),
            ))
        }
        Command::Status { run } => {
            let progress = status(&ctx().await, run).await?;
            out.result(&progress);
            Ok(ExitStatus::success_if(
                progress.succeeded() || !progress.finished(),
            ))
        }
        Command::Approve {
            run,
            approver,
            ticket,
            comment,
        } => {
            let approval = approve(&ctx().await, run, approver, ticket, comment.as_deref()).await?;
            out.result(&approval);
            Ok(ExitStatus::Success)
        }
        Command::Deny { run, reason } => {
            deny(&ctx().await, run, reason).await?;
            out.result(&serde_json::json!({"run": run, "denied": true, "reason": reason}));
            Ok(ExitStatus::Success)
        }
        Command::Receipts { run } => {
            let records = receipts(&ctx().await, run).await?;
            out.result(&records);
            Ok(ExitStatus::Success)
        }
        Command::Runs { profile, since } => {
            let since = since.as_deref().map(parse_since).transpose()?;
            let lines = runs(&ctx().await, profile.as_deref(), since).await?;
            out.result(&lines);
            Ok(ExitStatus::Success)
        }
        Command::Evidence {
            profile,
            since,
            until,
            out: path,
        } => {
            let (since, until) = parse_window(since, until.as_deref())?;
            let ctx = ctx().await;
            let pack = Box::pin(drpilot_cli::evidence(&ctx, profile, since, until, path)).await?;
            out.result(&pack);
            Ok(ExitStatus::Success)
        }
        Command::Readiness {
            profile,
            check,
            readiness_function,
        } => {
            let report = drpilot_cli::readiness(
                &ctx().await,
                profile,
                *check,
                readiness_function.as_deref(),
            )
            .await?;
            out.result(&report);
            Ok(ExitStatus::success_if(report.ready))
        }
        Command::Report { run, html } => {
            match report(&ctx().await, run, html.as_deref()).await? {
                drpilot_cli::Report::Run(audit) => out.result(&audit),
                drpilot_cli::Report::Failback(records) => out.result(&records.failback),
            }
            Ok(ExitStatus::Success)
        }
        Command::Backup { command } => backup_command(&ctx().await, command, out).await,
        Command::Local { command } => local_command(command, out).await,
    }
}

/// `drpilot local …`: the local stack's commands.
async fn local_command(command: &LocalCommand, out: Out) -> Result<ExitStatus, CliError> {
    match command {
        LocalCommand::Up => local::up(out).await.map(|()| ExitStatus::Success),
        LocalCommand::Down => local::down().map(|()| ExitStatus::Success),
        LocalCommand::Drill {
            auto_approve,
            objects,
            report,
        } => {
            if !auto_approve && !std::io::stdin().is_terminal() {
                return Err(CliError::Usage(
                    "stdin is not a terminal, so nobody can answer the approval prompt: pass --auto-approve".into(),
                ));
            }
            let options = DrillOptions {
                auto_approve: *auto_approve,
                objects: *objects,
                report: report.clone(),
            };
            Box::pin(local::drill(&options, out))
                .await
                .map(ExitStatus::success_if)
        }
    }
}

/// `drpilot backup …`: making a backup from a directory, and checking one.
async fn backup_command(
    ctx: &Ctx,
    command: &BackupCommand,
    out: Out,
) -> Result<ExitStatus, CliError> {
    match command {
        BackupCommand::Make(args) => {
            let made = drpilot_cli::commands::backup::make(ctx, args).await?;
            out.result(&made);
            Ok(ExitStatus::Success)
        }
        BackupCommand::Verify { uri, profile } => {
            let (check, status) =
                drpilot_cli::commands::backup::verify(ctx, uri, profile.as_deref()).await?;
            out.result(&check);
            Ok(status)
        }
    }
}

/// `--since` and `--until` of `drpilot evidence`, read alike.
fn parse_window(
    since: &str,
    until: Option<&str>,
) -> Result<(DateTime<Utc>, Option<DateTime<Utc>>), CliError> {
    let until = until
        .map(|u| {
            parse_since(u).map_err(|e| CliError::Usage(e.to_string().replace("--since", "--until")))
        })
        .transpose()?;
    Ok((parse_since(since)?, until))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (json, verbose) = (cli.json, cli.verbose);
    let status = match Box::pin(run(cli)).await {
        Ok(status) => status,
        Err(err) => {
            if json {
                let _ = writeln!(
                    std::io::stdout(),
                    "{}",
                    serde_json::json!({"error": err.report(verbose)})
                );
            } else {
                eprintln!("drpilot: {}", err.report(verbose));
            }
            ExitStatus::Error
        }
    };
    status.into()
}
