//! What an auditor reads about one run without us: who started it, what backup (with its
//! artifacts' hashes), what was restored and verified, the parity differences, the
//! components, the approval with its principal and seal, the audit record, each target
//! met or missed, how long the evidence is retained, and the profile's recent runs as a
//! trend against the targets. `drpilot report` prints it as JSON and renders it in the
//! HTML page ([`crate::html`]); `drpilot evidence` packs it for a period.

use chrono::{DateTime, Utc};
use drpilot_shared::details::{ParityDetails, PromoteDetails, RestoreDetails, ValidateDetails};
use drpilot_shared::input::{Mode, Trigger};
use drpilot_shared::receipt::{PhaseReceipt, PhaseStatus, RunStatus};
use drpilot_shared::stage::Phase;
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::summary::RunSummary;
use drpilot_shared::time::{utc, Objective};
use drpilot_shared::S3Uri;
use serde::Serialize;
use serde_json::Value;

use crate::CliError;

/// How many parity differences the report lists (the rest are behind the link).
pub const FIRST_DIFFERENCES: usize = 100;
/// How many of the profile's runs the trend shows.
pub const TREND_RUNS: usize = 20;

#[derive(Clone, Debug, Serialize)]
pub struct AuditReport {
    pub run_id: String,
    pub profile: String,
    pub mode: Mode,
    pub status: RunStatus,
    pub dry_run: bool,
    pub trigger: TriggerFacts,
    pub backup: BackupFacts,
    pub restored: Option<Restored>,
    pub verified: Option<Verified>,
    pub parity: Option<ParityFacts>,
    pub approval: ApprovalFacts,
    pub audit_record: Option<S3Uri>,
    pub rto: Objective,
    pub rpo: Objective,
    /// Every target of the run, met or missed (the run's RTO and RPO, each component's).
    pub targets: Vec<TargetFacts>,
    pub evidence: EvidenceFacts,
    pub trend: Vec<TrendPoint>,
    pub summary: RunSummary,
}

#[derive(Clone, Debug, Serialize)]
pub struct TriggerFacts {
    pub kind: String,
    /// A manual start's caller, a schedule's or alarm's ARN.
    pub source: Option<String>,
    /// A manual start's caller was proven by STS (bringup checked the starter's signed
    /// request), not just named by the input.
    pub verified: bool,
    pub alarm_name: Option<String>,
    pub fired_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackupFacts {
    pub uri: Option<S3Uri>,
    pub backup_id: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub state_sha256: Option<String>,
    pub manifests_sha256: Option<String>,
    pub archive_bytes: Option<u64>,
    pub git_sha: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Restored {
    pub objects: u64,
    pub bytes: u64,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    /// Objects the manifests list, and how many of them validate found as listed.
    pub expected: u64,
    pub objects: u64,
    pub differences: u64,
    /// Every object re-read and hashed (`full_validation`), not only the stored hashes.
    pub rehashed: bool,
    pub checks_passed: usize,
    pub checks: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ParityFacts {
    pub delta: u64,
    /// The first [`FIRST_DIFFERENCES`] differences.
    pub first_differences: Vec<Value>,
    /// All of them.
    pub all_differences: S3Uri,
}

#[derive(Clone, Debug, Serialize)]
pub struct ApprovalFacts {
    pub approver: Option<String>,
    pub ticket: Option<String>,
    /// The IAM principal the approve function saw.
    pub principal: Option<String>,
    pub principal_verified: bool,
    /// promote verified the approve function's seal.
    pub sealed: bool,
    pub bypass: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetFacts {
    pub name: String,
    pub measured_seconds: Option<f64>,
    pub target_seconds: u64,
    pub met: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvidenceFacts {
    /// The run's receipts, summary, approvals and audit copy.
    pub location: S3Uri,
    /// The summary's Object Lock retain-until date (`null`: no lock on it).
    pub retained_until: Option<DateTime<Utc>>,
    pub lock_mode: Option<String>,
    /// Records whose version history drpilot could not have written (rewritten or
    /// deleted after the fact, [`drpilot_shared::history`]); empty when there are none.
    pub findings: Vec<drpilot_shared::history::Finding>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrendPoint {
    pub run_id: String,
    pub kickoff_at: DateTime<Utc>,
    pub mode: Mode,
    pub status: RunStatus,
    pub rto_seconds: Option<f64>,
    pub rto_target_seconds: u64,
    pub rpo_seconds: Option<f64>,
    pub rpo_target_seconds: u64,
}

/// Gathers the report of the run `summary` sums up, from its receipts in `store`; the
/// trend comes from `history` (the location's summaries, [`ReceiptStore::summaries`], read
/// once by a caller that reports many runs).
pub async fn gather(
    s3: &aws_sdk_s3::Client,
    store: &ReceiptStore,
    summary: &RunSummary,
    phases: &[PhaseReceipt],
    history: &[RunSummary],
) -> Result<AuditReport, CliError> {
    let details = |phase: Phase| {
        phases
            .iter()
            .find(|r| r.phase == phase && r.status == PhaseStatus::Success)
    };
    let restore = details(Phase::Restore).and_then(|r| r.details::<RestoreDetails>().ok());
    let validate = details(Phase::Validate).and_then(|r| r.details::<ValidateDetails>().ok());
    let parity = details(Phase::ParityReport).and_then(|r| r.details::<ParityDetails>().ok());
    let promote = details(Phase::Promote).and_then(|r| r.details::<PromoteDetails>().ok());
    let parity = match parity {
        Some(p) => Some(ParityFacts {
            delta: p.delta,
            first_differences: first_lines(s3, &p.differences, FIRST_DIFFERENCES).await?,
            all_differences: p.differences,
        }),
        None => None,
    };
    let summary_uri = store.summary_uri(&summary.run_id)?;
    let (retained_until, lock_mode) = lock_of(s3, &summary_uri).await?;
    let targets = targets(summary);
    let trend = trend(summary, history);
    Ok(AuditReport {
        run_id: summary.run_id.clone(),
        profile: summary.profile.clone(),
        mode: summary.mode,
        status: summary.status,
        dry_run: summary.dry_run,
        trigger: trigger_facts(summary.trigger.as_ref()),
        backup: BackupFacts {
            uri: summary.backup_uri.clone(),
            backup_id: restore.as_ref().map(|r| r.backup_id.clone()),
            created_at: summary.backup_created_at,
            state_sha256: restore.as_ref().map(|r| r.archive_sha256.clone()),
            manifests_sha256: restore.as_ref().map(|r| r.manifests_sha256.clone()),
            archive_bytes: restore.as_ref().map(|r| r.archive_bytes),
            git_sha: restore.as_ref().and_then(|r| r.git_sha.clone()),
        },
        restored: restore.as_ref().map(|r| Restored {
            objects: r.objects,
            bytes: r.bytes,
            seconds: r.seconds,
        }),
        verified: validate.as_ref().map(|v| Verified {
            expected: v.tally.expected_objects,
            objects: v.tally.verified,
            differences: v.differences,
            rehashed: v.full,
            checks_passed: v.checks.iter().filter(|c| c.passed).count(),
            checks: v.checks.len(),
        }),
        parity,
        approval: ApprovalFacts {
            approver: summary.approver.clone(),
            ticket: summary.ticket.clone(),
            principal: summary.approver_principal.clone(),
            principal_verified: promote.as_ref().is_some_and(|p| p.principal_verified),
            sealed: summary.approval_sealed,
            bypass: promote.as_ref().is_some_and(|p| p.bypass),
        },
        audit_record: promote.map(|p| p.audit_record),
        rto: summary.rto.clone(),
        rpo: summary.rpo.clone(),
        targets,
        evidence: EvidenceFacts {
            location: store.run_dir(&summary.run_id)?,
            retained_until,
            lock_mode,
            findings: drpilot_shared::history::findings(
                s3,
                &store.runs_dir(),
                Some(&summary.run_id),
            )
            .await?
            .remove(&summary.run_id)
            .unwrap_or_default(),
        },
        trend,
        summary: summary.clone(),
    })
}

/// The run's RTO and RPO against their targets, and each component's.
fn targets(summary: &RunSummary) -> Vec<TargetFacts> {
    let mut targets = vec![target("RTO", &summary.rto), target("RPO", &summary.rpo)];
    for c in &summary.components {
        targets.push(TargetFacts {
            name: format!("component {} RTO", c.name),
            measured_seconds: c.rto_seconds,
            target_seconds: c.rto_target_seconds,
            met: c.rto_met,
        });
        if let Some(rpo_target) = c.rpo_target_seconds {
            targets.push(TargetFacts {
                name: format!("component {} RPO", c.name),
                measured_seconds: c.rpo_seconds,
                target_seconds: rpo_target,
                met: c.rpo_seconds.map(|s| s <= rpo_target as f64),
            });
        }
    }
    targets
}

/// The profile's last [`TREND_RUNS`] runs up to this one (dry runs left out).
fn trend(summary: &RunSummary, history: &[RunSummary]) -> Vec<TrendPoint> {
    let trend = history
        .iter()
        .filter(|s| {
            s.profile == summary.profile && !s.dry_run && s.kickoff_at <= summary.kickoff_at
        })
        .map(|s| TrendPoint {
            run_id: s.run_id.clone(),
            kickoff_at: s.kickoff_at,
            mode: s.mode,
            status: s.status,
            rto_seconds: s.rto_seconds,
            rto_target_seconds: s.rto.target_seconds,
            rpo_seconds: s.rpo_seconds,
            rpo_target_seconds: s.rpo.target_seconds,
        })
        .collect::<Vec<_>>();
    trend[trend.len().saturating_sub(TREND_RUNS)..].to_vec()
}

fn target(name: &str, o: &Objective) -> TargetFacts {
    TargetFacts {
        name: name.to_owned(),
        measured_seconds: o.seconds,
        target_seconds: o.target_seconds,
        met: o.met,
    }
}

fn trigger_facts(trigger: Option<&Trigger>) -> TriggerFacts {
    match trigger {
        Some(Trigger::Manual {
            source, verified, ..
        }) => TriggerFacts {
            kind: "manual".into(),
            source: source.clone(),
            verified: *verified,
            alarm_name: None,
            fired_at: None,
        },
        Some(Trigger::Schedule { source, fired_at }) => TriggerFacts {
            kind: "schedule".into(),
            source: source.clone(),
            verified: false,
            alarm_name: None,
            fired_at: *fired_at,
        },
        Some(Trigger::Alarm {
            source,
            alarm_name,
            fired_at,
            ..
        }) => TriggerFacts {
            kind: "alarm".into(),
            source: source.clone(),
            verified: false,
            alarm_name: Some(alarm_name.clone()),
            fired_at: *fired_at,
        },
        None => TriggerFacts {
            kind: "unknown".into(),
            source: None,
            verified: false,
            alarm_name: None,
            fired_at: None,
        },
    }
}

/// The Object Lock on the object at `uri`: its retain-until date and mode.
async fn lock_of(
    s3: &aws_sdk_s3::Client,
    uri: &S3Uri,
) -> Result<(Option<DateTime<Utc>>, Option<String>), CliError> {
    let head = s3
        .head_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .send()
        .await
        .map_err(|e| CliError::aws(&format!("HeadObject {uri}"), e))?;
    Ok((
        head.object_lock_retain_until_date().and_then(utc),
        head.object_lock_mode().map(|m| m.as_str().to_owned()),
    ))
}

/// The first `n` JSON lines of the object at `uri`, read from its first bytes only.
async fn first_lines(
    s3: &aws_sdk_s3::Client,
    uri: &S3Uri,
    n: usize,
) -> Result<Vec<Value>, CliError> {
    // A difference line is a key and a few numbers; 256 KiB holds far more than `n`.
    let got = s3
        .get_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .range("bytes=0-262143")
        .send()
        .await;
    let object = match got {
        Ok(object) => object,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(Vec::new()),
        // An empty object cannot satisfy a range.
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(CliError::aws(&format!("GetObject {uri}"), e)),
    };
    let bytes = object
        .body
        .collect()
        .await
        .map_err(|e| CliError::Io(format!("reading {uri}: {e}")))?
        .into_bytes();
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .take(n)
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The trend as two inline SVG charts (RTO, RPO) on a log scale: one bar per run, green
/// when it met the target, red when not, grey when not measured, with the target as a
/// dashed line.
pub fn trend_svg(trend: &[TrendPoint], current: &str) -> String {
    let chart = |id: &str,
                 label: &str,
                 value: &dyn Fn(&TrendPoint) -> Option<f64>,
                 target: &dyn Fn(&TrendPoint) -> u64| {
        let (w, h, left, bottom, top) = (460.0_f64, 180.0_f64, 52.0, 28.0, 16.0);
        let max = trend
            .iter()
            .flat_map(|p| [value(p).unwrap_or(0.0), target(p) as f64])
            .fold(1.0_f64, f64::max)
            * 1.1;
        // A log scale: a 2 s drill beside a 900 s target must still show.
        let y = |v: f64| top + (h - top - bottom) * (1.0 - (1.0 + v).ln() / (1.0 + max).ln());
        let slot = (w - left - 8.0) / trend.len().max(1) as f64;
        let mut svg = format!(
            r#"<svg class="trend" id="{id}" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{label} of the last {} runs against the target"><title>{label} of the last {} runs against the target</title>"#,
            trend.len(),
            trend.len()
        );
        svg.push_str(&format!(
            r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#9aa3af"/><text x="4" y="{}" font-size="11" fill="#5b6472">{:.0} s</text><text x="4" y="{}" font-size="11" fill="#5b6472">0</text><text x="{left}" y="12" font-size="12" font-weight="600" fill="#1d2430">{label}</text>"##,
            h - bottom,
            w - 8.0,
            h - bottom,
            top + 4.0,
            max,
            h - bottom
        ));
        for (i, p) in trend.iter().enumerate() {
            let x = left + slot * i as f64 + slot * 0.15;
            let bar = slot * 0.7;
            let t = target(p) as f64;
            let (fill, text) = match value(p) {
                Some(v) if v <= t => ("#1a9c5b", format!("{v:.1} s, met")),
                Some(v) => ("#d0342c", format!("{v:.1} s, MISSED")),
                None => ("#c3c9d2", "not measured".to_owned()),
            };
            let v = value(p).unwrap_or(max * 0.02);
            let stroke = if p.run_id == current {
                r##" stroke="#1d2430" stroke-width="2""##
            } else {
                ""
            };
            svg.push_str(&format!(
                r#"<rect class="run" x="{x:.1}" y="{:.1}" width="{bar:.1}" height="{:.1}" fill="{fill}"{stroke}><title>{} ({}): {text}; target {t:.0} s</title></rect>"#,
                y(v),
                (h - bottom - y(v)).max(1.0),
                escape(&p.run_id),
                p.kickoff_at.format("%Y-%m-%d"),
            ));
            svg.push_str(&format!(
                r##"<line class="target" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#3b73d9" stroke-dasharray="4 3"/>"##,
                x - slot * 0.15,
                y(t),
                x + bar + slot * 0.15,
                y(t)
            ));
        }
        svg.push_str(&format!(
            r##"<text x="{}" y="{}" font-size="11" fill="#5b6472" text-anchor="end">{} runs · dashed: target · log scale</text></svg>"##,
            w - 8.0,
            h - 8.0,
            trend.len()
        ));
        svg
    };
    let rto = chart("rto-trend", "RTO", &|p| p.rto_seconds, &|p| {
        p.rto_target_seconds
    });
    let rpo = chart("rpo-trend", "RPO", &|p| p.rpo_seconds, &|p| {
        p.rpo_target_seconds
    });
    format!("{rto}{rpo}")
}

/// Run ids are checked names, but the chart is HTML: escape anyway.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
