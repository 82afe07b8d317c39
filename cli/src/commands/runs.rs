//! `drpilot runs`: one line per run — id, mode, trigger, status, RTO and RPO against their
//! targets, promoted; for a failback its DR run, divergence counts and confirmations —
//! newest first, read from the run summaries teardown writes under
//! each profile's receipts location.

use chrono::{DateTime, NaiveDate, Utc};
use drpilot_shared::failback::{DivergenceCounts, FailbackSummary};
use drpilot_shared::input::Mode;
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::receipt::RunStatus;
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::time::Objective;
use serde::Serialize;

use crate::{CliError, Ctx};

/// One run, as `drpilot runs` lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunLine {
    pub run_id: String,
    pub profile: String,
    /// `null` for a run without a summary (still running, or teardown never finished).
    pub mode: Option<Mode>,
    pub trigger: Option<&'static str>,
    /// `succeeded`, `failed`, `held` / `failed, held` (its latest execution kept the
    /// staging and lock for the next), or `unfinished` when there is no summary.
    pub status: &'static str,
    pub kickoff_at: Option<DateTime<Utc>>,
    pub rto: Option<Objective>,
    pub rpo: Option<Objective>,
    pub promoted: Option<bool>,
    /// A failback run's figures (`null` for drills and recoveries).
    pub failback: Option<FailbackLine>,
}

/// What `drpilot runs` shows of a failback.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailbackLine {
    pub dr_run_id: String,
    pub dry_run: bool,
    /// How the sites changed since the DR run's baseline (`null` before divergence ran).
    pub divergence: Option<DivergenceCounts>,
    /// Who confirmed (approvers, or the literal confirmations).
    pub confirmations: Vec<String>,
    pub objects_copied: u64,
    pub generation: Option<u64>,
}

impl RunLine {
    fn of_failback(s: FailbackSummary, profile: String) -> Self {
        Self {
            run_id: s.run_id,
            profile,
            mode: s.mode,
            trigger: Some("manual"),
            status: s.status.as_str(),
            kickoff_at: Some(s.kickoff_at),
            rto: None,
            rpo: None,
            promoted: None,
            failback: Some(FailbackLine {
                dr_run_id: s.dr_run_id,
                dry_run: s.dry_run,
                divergence: s.divergence,
                confirmations: s.confirmations.into_iter().map(|c| c.approver).collect(),
                objects_copied: s.objects_copied,
                generation: s.generation,
            }),
        }
    }
}

impl RunLine {
    /// A run with receipts but no summary: still running, or teardown never finished.
    pub fn unfinished(run_id: String, profile: String) -> Self {
        Self {
            run_id,
            profile,
            mode: None,
            trigger: None,
            status: "unfinished",
            kickoff_at: None,
            rto: None,
            rpo: None,
            promoted: None,
            failback: None,
        }
    }
}

/// `--since`: an RFC 3339 time, or a date (midnight UTC).
pub fn parse_since(text: &str) -> Result<DateTime<Utc>, CliError> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--since: expected a date (2026-11-01) or an RFC 3339 time (2026-11-01T08:00:00Z), got {text:?}"
            ))
        })
}

/// The runs of `profile` (every stored profile when `None`) that started at or after
/// `since`, newest first; runs without a summary come last.
pub async fn runs(
    ctx: &Ctx,
    profile: Option<&str>,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<RunLine>, CliError> {
    let source = ProfileSource::from_env(ctx.aws.ssm.clone());
    let profiles = match profile {
        Some(name) => vec![(name.to_owned(), source.load(name).await?)],
        None => source.load_all().await?,
    };
    let mut lines = Vec::new();
    for (name, profile) in profiles {
        let store = ReceiptStore::new(ctx.aws.s3.clone(), profile.receipts.clone());
        for run_id in store.run_ids().await? {
            let line = match store.get_summary(&run_id).await? {
                Some(s) => RunLine {
                    run_id,
                    profile: name.clone(),
                    mode: Some(s.mode),
                    trigger: s.trigger.as_ref().map(|t| t.kind()),
                    // A run its latest execution held waits for its next one.
                    status: match (s.status, s.executions.last().is_some_and(|e| e.hold)) {
                        (RunStatus::Succeeded, true) => "held",
                        (RunStatus::Failed, true) => "failed, held",
                        (status, false) => status.as_str(),
                    },
                    kickoff_at: Some(s.kickoff_at),
                    rto: Some(s.rto),
                    rpo: Some(s.rpo),
                    promoted: Some(s.promoted),
                    failback: None,
                },
                None => match store.get_failback_summary(&run_id).await? {
                    Some(s) => RunLine::of_failback(s, name.clone()),
                    None => RunLine::unfinished(run_id, name.clone()),
                },
            };
            let recent = match (since, line.kickoff_at) {
                (Some(since), Some(at)) => at >= since,
                // A run without a summary has no known start: shown unless filtered.
                (Some(_), None) => false,
                (None, _) => true,
            };
            if recent {
                lines.push(line);
            }
        }
    }
    // Newest first; `None` (no summary) sorts last.
    lines.sort_by_key(|line| std::cmp::Reverse(line.kickoff_at));
    for line in &lines {
        ctx.out.say(describe(line));
    }
    if lines.is_empty() {
        ctx.out.say("no runs");
    }
    Ok(lines)
}

/// One line for people.
pub fn describe(line: &RunLine) -> String {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    if let Some(f) = &line.failback {
        let counts = f
            .divergence
            .as_ref()
            .map_or("divergence not measured".to_owned(), |d| {
                format!(
                    "DR changed {}, primary changed {}, primary lost {}, divergent {}",
                    d.dr_changed, d.primary_changed, d.primary_missing, d.divergent
                )
            });
        let confirmed = if f.confirmations.is_empty() {
            "-".to_owned()
        } else {
            f.confirmations.join(", ")
        };
        return format!(
            "{}  {:<11} failback{} {:<10} of {}  {counts}  confirmed by {confirmed}  copied {}  (profile {})",
            or_dash(line.kickoff_at.map(|t| t.format("%Y-%m-%d %H:%M").to_string())),
            line.status,
            if f.dry_run { " (dry run)" } else { "" },
            line.run_id,
            f.dr_run_id,
            f.objects_copied,
            line.profile
        );
    }
    format!(
        "{}  {:<11} {:<8} {:<9} {:<10} RTO {}  RPO {}  promoted {}  (profile {})",
        or_dash(
            line.kickoff_at
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        ),
        line.status,
        or_dash(line.mode.map(|m| m.to_string())),
        line.trigger.unwrap_or("-"),
        line.run_id,
        or_dash(line.rto.as_ref().map(Objective::describe)),
        or_dash(line.rpo.as_ref().map(Objective::describe)),
        or_dash(line.promoted.map(|p| p.to_string())),
        line.profile
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_date_or_a_time() {
        assert_eq!(
            parse_since("2026-11-01").unwrap().to_rfc3339(),
            "2026-11-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_since("2026-11-01T08:30:00+01:00")
                .unwrap()
                .to_rfc3339(),
            "2026-11-01T07:30:00+00:00"
        );
        let err = parse_since("last week").unwrap_err().to_string();
        assert!(
            err.contains("--since") && err.contains("last week"),
            "{err}"
        );
    }

    #[test]
    fn an_unfinished_run_is_a_line_of_dashes() {
        let line = RunLine::unfinished("r-1".into(), "p".into());
        let text = describe(&line);
        assert!(text.starts_with("-  unfinished"), "{text}");
        assert!(
            text.contains("r-1") && text.contains("(profile p)"),
            "{text}"
        );
    }
}
