//! `drpilot evidence --profile P --since DATE [--until DATE] --out FILE.zip`: one file an
//! auditor takes away for a period: every run's receipts, summary, approval records and
//! audit-record copies as stored (under Object Lock), its report (HTML and JSON), an
//! `index.csv` with one line per run in the shape of an AWS Backup restore job report, and
//! `controls.json` with the control figures SOC 2 / ISO 27001 reviews ask for.
//!
//! Objects are streamed into the archive as they are read: memory holds one part of one
//! object at a time, however large a run's difference lists are.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use drpilot_shared::history::{self, Finding};
use drpilot_shared::input::Mode;
use drpilot_shared::objects::key_pages;
use drpilot_shared::profile::{Profile, ProfileSource};
use drpilot_shared::receipt::{PhaseStatus, RunStatus};
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::summary::RunSummary;
use drpilot_shared::{Phase, S3Uri};
use serde::Serialize;

use crate::zipfile::{csv_line, entry_name, ZipWriter};

use crate::audit::{self, AuditReport};
use crate::html;
use crate::{CliError, Ctx};

/// The columns of an AWS Backup restore job report (the fields of a restore job), then
/// drpilot's own.
pub const INDEX_COLUMNS: [&str; 27] = [
    "Report Time Period Start",
    "Report Time Period End",
    "Account ID",
    "Region",
    "Restore Job ID",
    "Job Status",
    "Status Message",
    "Resource Type",
    "Resource ARN",
    "Recovery Point ARN",
    "Backup Vault Name",
    "Creation Date",
    "Completion Date",
    "Backup Size in Bytes",
    "Percent Done",
    "IAM Role ARN",
    "Created Resource ARN",
    "Recovery Point Creation Date",
    "Validation Status",
    "Validation Status Message",
    "Mode",
    "RTO Seconds",
    "RTO Target Seconds",
    "RPO Seconds",
    "RPO Target Seconds",
    "Approver",
    "Evidence",
];

/// `controls.json`.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Controls {
    pub profile: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub generated_at: DateTime<Utc>,
    pub runs: usize,
    pub drills: usize,
    pub recoveries: usize,
    /// Since the last successful drill finished (any time before the period's end);
    /// `null` when there never was one.
    pub days_since_last_successful_drill: Option<f64>,
    /// The period cut into windows of the profile's `drill_interval_days`: the share of
    /// windows with a successful drill (a missed window is a drill not on schedule).
    pub drill_windows: usize,
    pub drill_windows_on_time: usize,
    pub drills_on_schedule_percent: Option<f64>,
    /// Of the runs that measured it, the share that met its target.
    pub rto_met_percent: Option<f64>,
    pub rpo_met_percent: Option<f64>,
    /// Of the runs whose validate ran, the share that verified the backup.
    pub backup_verification_success_rate: Option<f64>,
    /// Records whose version history drpilot could not have written (rewritten or
    /// deleted after the fact): each is in `evidence-findings.json`. Zero is the only
    /// figure that lets the rest be trusted.
    #[serde(default)]
    pub evidence_findings: usize,
}

/// What `drpilot evidence` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct EvidencePack {
    pub out: PathBuf,
    pub runs: Vec<String>,
    /// The failbacks of the period (they write the primary site): each one's receipts,
    /// confirmations, audit record copy and summary, under `failbacks/<run>/`.
    pub failbacks: Vec<String>,
    pub files: usize,
    pub bytes: u64,
    pub controls: Controls,
    /// `evidence-findings.json`.
    pub findings: Vec<Finding>,
}

pub async fn evidence(
    ctx: &Ctx,
    profile_name: &str,
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
    out: &Path,
) -> Result<EvidencePack, CliError> {
    let until = until.unwrap_or_else(Utc::now);
    check_request(since, until, out)?;
    let profile = ProfileSource::from_env(ctx.aws.ssm.clone())
        .load(profile_name)
        .await?;
    let store = ReceiptStore::new(ctx.aws.s3.clone(), profile.receipts.clone());
    let all: Vec<RunSummary> = store
        .summaries()
        .await?
        .into_iter()
        .filter(|s| s.profile == profile_name)
        .collect();
    let in_period: Vec<&RunSummary> = all
        .iter()
        .filter(|s| s.kickoff_at >= since && s.kickoff_at < until)
        .collect();

    // Written beside the target and renamed at the end: a failed export leaves no
    // half-written file under the name asked for.
    let partial = out.with_extension("zip.partial");
    let mut pack = Pack::create(&partial)?;
    let mut index = csv_line(&INDEX_COLUMNS.map(str::to_owned));
    let mut runs = Vec::new();
    for summary in &in_period {
        let report = Box::pin(pack.add_run(ctx, &store, summary, &all)).await?;
        index.push_str(&csv_line(&index_row(
            &profile, since, until, summary, &report,
        )));
        runs.push(summary.run_id.clone());
    }
    let mut failbacks = Vec::new();
    for failback in store.failback_summaries().await? {
        if failback.profile != profile_name
            || failback.kickoff_at < since
            || failback.kickoff_at >= until
        {
            continue;
        }
        let run_dir = store.run_dir(&failback.run_id)?;
        let into = format!("failbacks/{}/", failback.run_id);
        Box::pin(pack.copy_prefix(&ctx.aws.s3, &run_dir, &into)).await?;
        failbacks.push(failback.run_id);
    }
    let findings = period_findings(ctx, &store, &all, &runs, &failbacks).await?;
    let mut controls = controls(&profile, profile_name, &all, &in_period, since, until);
    controls.evidence_findings = findings.len();
    pack.add_json("evidence-findings.json", &findings)?;
    pack.add("index.csv", index.as_bytes())?;
    pack.add_json("controls.json", &controls)?;
    let files = pack.finish(&partial, out)?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    for finding in &findings {
        ctx.out.say(format!(
            "EVIDENCE FINDING run {} {}: {}",
            finding.run_id, finding.key, finding.why
        ));
    }
    ctx.out.say(format!(
        "evidence of profile {profile_name} from {} to {}: {} runs, {} failbacks, {files} files, {bytes} bytes in {}",
        since.format("%Y-%m-%d"),
        until.format("%Y-%m-%d %H:%M UTC"),
        runs.len(),
        failbacks.len(),
        out.display()
    ));
    Ok(EvidencePack {
        out: out.to_owned(),
        runs,
        failbacks,
        files,
        bytes,
        controls,
        findings,
    })
}

/// The period and the archive's name, checked before anything is read.
fn check_request(since: DateTime<Utc>, until: DateTime<Utc>, out: &Path) -> Result<(), CliError> {
    if until <= since {
        return Err(CliError::Usage(format!(
            "--until: {until} is not after --since {since}"
        )));
    }
    if out.extension().and_then(|e| e.to_str()) != Some("zip") {
        return Err(CliError::Usage(format!(
            "--out: expected a path ending in .zip, got {}",
            out.display()
        )));
    }
    Ok(())
}

/// The version history's findings for the export: those of the period's runs and
/// failbacks, and of any run whose summary no longer reads (deleted: it has no period to
/// be out of).
async fn period_findings(
    ctx: &Ctx,
    store: &ReceiptStore,
    all: &[RunSummary],
    runs: &[String],
    failbacks: &[String],
) -> Result<Vec<Finding>, CliError> {
    let summarized: std::collections::BTreeSet<&str> =
        all.iter().map(|s| s.run_id.as_str()).collect();
    Ok(history::findings(&ctx.aws.s3, &store.runs_dir(), None)
        .await?
        .into_iter()
        .filter(|(run_id, _)| {
            runs.contains(run_id)
                || failbacks.contains(run_id)
                || !summarized.contains(run_id.as_str())
        })
        .flat_map(|(_, found)| found)
        .collect())
}

/// The archive being written, and how many files it holds.
struct Pack {
    zip: ZipWriter<std::io::BufWriter<std::fs::File>>,
    files: usize,
}

impl Pack {
    fn create(path: &Path) -> Result<Self, CliError> {
        let file = std::fs::File::create(path)
            .map_err(|e| CliError::Io(format!("creating {}: {e}", path.display())))?;
        Ok(Self {
            zip: ZipWriter::new(std::io::BufWriter::new(file), Utc::now()),
            files: 0,
        })
    }

    fn add(&mut self, name: &str, bytes: &[u8]) -> Result<(), CliError> {
        self.zip
            .start_file(name)
            .map_err(|e| CliError::Io(format!("adding {name}: {e}")))?;
        self.zip
            .write_all(bytes)
            .map_err(|e| CliError::Io(format!("adding {name}: {e}")))?;
        self.files += 1;
        Ok(())
    }

    fn add_json<T: Serialize>(&mut self, name: &str, value: &T) -> Result<(), CliError> {
        let json = serde_json::to_vec_pretty(value)
            .map_err(|e| CliError::Encoding(format!("encoding {name}: {e}")))?;
        self.add(name, &json)
    }

    /// A run's records under `runs/<run>/`, with its report as HTML and JSON beside them;
    /// returns the report (the index's row reads it).
    async fn add_run(
        &mut self,
        ctx: &Ctx,
        store: &ReceiptStore,
        summary: &RunSummary,
        all: &[RunSummary],
    ) -> Result<AuditReport, CliError> {
        let run_dir = store.run_dir(&summary.run_id)?;
        let into = format!("runs/{}/", summary.run_id);
        Box::pin(self.copy_prefix(&ctx.aws.s3, &run_dir, &into)).await?;
        let phases = store.phases(&summary.run_id).await?;
        let report = Box::pin(audit::gather(&ctx.aws.s3, store, summary, &phases, all)).await?;
        let page = html::render_audit(&report, &phases)?;
        self.add(&format!("{into}report.html"), page.as_bytes())?;
        self.add_json(&format!("{into}report.json"), &report)?;
        Ok(report)
    }

    /// Every object under `prefix`, streamed into the archive under `into`.
    async fn copy_prefix(
        &mut self,
        s3: &aws_sdk_s3::Client,
        prefix: &S3Uri,
        into: &str,
    ) -> Result<(), CliError> {
        let mut pages = key_pages(s3, prefix);
        while let Some(keys) = pages.next().await {
            let keys = keys.map_err(|e| CliError::aws(&format!("ListObjectsV2 {prefix}"), e))?;
            for key in &keys {
                // Keys are anyone's who can write under the run's prefix: named safely.
                let name = entry_name(&format!(
                    "{into}{}",
                    key.strip_prefix(&prefix.key).unwrap_or(key)
                ));
                let mut body = s3
                    .get_object()
                    .bucket(&prefix.bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| {
                        CliError::aws(&format!("GetObject s3://{}/{key}", prefix.bucket), e)
                    })?
                    .body;
                self.zip
                    .start_file(&name)
                    .map_err(|e| CliError::Io(format!("adding {name}: {e}")))?;
                while let Some(chunk) = body.try_next().await.map_err(|e| {
                    CliError::Io(format!("reading s3://{}/{key}: {e}", prefix.bucket))
                })? {
                    self.zip
                        .write_all(&chunk)
                        .map_err(|e| CliError::Io(format!("adding {name}: {e}")))?;
                }
                self.files += 1;
            }
        }
        Ok(())
    }

    /// The archive finished and moved from `partial` to `out`; returns how many files it
    /// holds.
    fn finish(self, partial: &Path, out: &Path) -> Result<usize, CliError> {
        let writer = self
            .zip
            .finish()
            .map_err(|e| CliError::Io(format!("finishing {}: {e}", partial.display())))?;
        writer
            .into_inner()
            .map_err(|e| CliError::Io(format!("writing {}: {e}", partial.display())))?;
        std::fs::rename(partial, out).map_err(|e| {
            CliError::Io(format!(
                "moving {} to {}: {e}",
                partial.display(),
                out.display()
            ))
        })?;
        Ok(self.files)
    }
}

fn index_row(
    profile: &Profile,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    s: &RunSummary,
    report: &AuditReport,
) -> Vec<String> {
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let num = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.1}"));
    let validation = s.phases.iter().find(|p| p.phase == Phase::Validate);
    let (validation_status, validation_message) = match validation.map(|p| p.status) {
        Some(PhaseStatus::Success) => ("SUCCESSFUL", String::new()),
        Some(PhaseStatus::Failed) => (
            "FAILED",
            validation
                .and_then(|p| p.reason.clone())
                .unwrap_or_default(),
        ),
        Some(PhaseStatus::Skipped) => ("SKIPPED", String::new()),
        Some(PhaseStatus::Running) | None => ("", String::new()),
    };
    let done = s
        .phases
        .iter()
        .filter(|p| p.status == PhaseStatus::Success)
        .count();
    vec![
        time(since),
        time(until),
        profile.account_id.clone(),
        profile.region.clone(),
        s.run_id.clone(),
        match s.status {
            RunStatus::Succeeded => "COMPLETED".into(),
            RunStatus::Failed => "FAILED".into(),
        },
        s.failure
            .as_ref()
            .map(|f| format!("{}: {}", f.error, crate::history::readable_cause(&f.cause)))
            .unwrap_or_default(),
        "S3".into(),
        format!(
            "arn:aws:s3:::{}/{}",
            profile.target.bucket,
            profile.target.root().key
        ),
        s.backup_uri
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        s.backup_uri
            .as_ref()
            .map(|u| u.bucket.clone())
            .unwrap_or_default(),
        time(s.kickoff_at),
        time(s.finished_at),
        report
            .backup
            .archive_bytes
            .map(|b| b.to_string())
            .unwrap_or_default(),
        format!("{:.0}", 100.0 * done as f64 / s.phases.len().max(1) as f64),
        s.execution_arn.clone().unwrap_or_default(),
        if s.promoted {
            format!(
                "arn:aws:s3:::{}/{}",
                profile.target.bucket,
                profile.target.root().key
            )
        } else {
            String::new()
        },
        s.backup_created_at.map(time).unwrap_or_default(),
        validation_status.into(),
        validation_message,
        s.mode.to_string(),
        num(s.rto_seconds),
        s.rto.target_seconds.to_string(),
        num(s.rpo_seconds),
        s.rpo.target_seconds.to_string(),
        s.approver.clone().unwrap_or_default(),
        report.evidence.location.to_string(),
    ]
}

fn controls(
    profile: &Profile,
    name: &str,
    all: &[RunSummary],
    in_period: &[&RunSummary],
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Controls {
    let successful_drill =
        |s: &RunSummary| s.mode == Mode::Drill && s.status == RunStatus::Succeeded && !s.dry_run;
    let last = all
        .iter()
        .filter(|s| successful_drill(s) && s.finished_at <= until)
        .map(|s| s.finished_at)
        .max();
    let interval = Duration::days(i64::from(profile.drill_interval_days));
    let mut windows = 0usize;
    let mut on_time = 0usize;
    let mut start = since;
    while start < until {
        let end = (start + interval).min(until);
        windows += 1;
        if in_period
            .iter()
            .any(|s| successful_drill(s) && s.finished_at >= start && s.finished_at < end)
        {
            on_time += 1;
        }
        start = end;
    }
    let percent = |hits: usize, of: usize| (of > 0).then(|| 100.0 * hits as f64 / of as f64);
    let measured = |f: &dyn Fn(&RunSummary) -> Option<bool>| {
        let seen: Vec<bool> = in_period.iter().filter_map(|s| f(s)).collect();
        percent(seen.iter().filter(|m| **m).count(), seen.len())
    };
    let validations: Vec<PhaseStatus> = in_period
        .iter()
        .filter_map(|s| s.phases.iter().find(|p| p.phase == Phase::Validate))
        .map(|p| p.status)
        .filter(|s| *s != PhaseStatus::Skipped)
        .collect();
    Controls {
        profile: name.to_owned(),
        period_start: since,
        period_end: until,
        generated_at: Utc::now(),
        runs: in_period.len(),
        drills: in_period.iter().filter(|s| s.mode == Mode::Drill).count(),
        recoveries: in_period
            .iter()
            .filter(|s| s.mode == Mode::Recovery)
            .count(),
        days_since_last_successful_drill: last
            .map(|at| (until.min(Utc::now()) - at).num_seconds() as f64 / 86_400.0),
        drill_windows: windows,
        drill_windows_on_time: on_time,
        drills_on_schedule_percent: percent(on_time, windows),
        rto_met_percent: measured(&|s| s.rto.met),
        rpo_met_percent: measured(&|s| s.rpo.met),
        backup_verification_success_rate: (!validations.is_empty()).then(|| {
            validations
                .iter()
                .filter(|s| **s == PhaseStatus::Success)
                .count() as f64
                / validations.len() as f64
        }),
        evidence_findings: 0,
    }
}
