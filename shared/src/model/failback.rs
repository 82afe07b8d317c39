//! Failback: returning the live data from the DR site (the profile's target, where a
//! recovery promoted a backup) to the primary site (the profile's `primary`). Its input,
//! what travels between its steps, what each step records, its audit record and its
//! summary, as types the failback function writes and the CLI reads.
//!
//! A failback is a run of its own (`failback-...`), with receipts under
//! `<receipts>/runs/<run_id>/failback/<step>.json` and a summary at
//! `<receipts>/runs/<run_id>/failback.summary.json`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backup::BackupRef;
use crate::error::{decode_value, Error, Result};
use crate::input::{Mode, NameRule};
use crate::parity::ParityCounts;
use crate::receipt::{PhaseReceipt, RunStatus};
use crate::s3uri::S3Uri;
use crate::stage::FailbackStep;

/// The first of a drill's two literal confirmations.
pub const FIRST_CONFIRMATION: &str = "FAILBACK";

/// The second literal confirmation of a drill failing back `dr_run_id`.
pub fn second_confirmation(dr_run_id: &str) -> String {
    format!("CONFIRM-{dr_run_id}")
}

/// The failback execution input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailbackInput {
    /// Names the failback run; defaults to the execution name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub profile: String,
    /// The run whose promotion made the DR site live.
    pub dr_run_id: String,
    /// `drill` or `recovery`: must be the DR run's mode when given (a failback is what
    /// its DR run was). Only a drill's failback may confirm with the literals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Drills only: `FAILBACK` and `CONFIRM-<dr_run_id>` instead of two approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm2: Option<String>,
    /// Run every check and write the plan; copy nothing, take no lock.
    #[serde(default)]
    pub dry_run: bool,
    /// Keys changed on both sites: the DR site's version wins (the primary's is
    /// overwritten or deleted), recorded with `approver` and `ticket`.
    #[serde(default)]
    pub discard_divergent: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

impl FailbackInput {
    /// Parses the execution input strictly: unknown fields, wrong types and bad values
    /// are `InputError`s naming the field.
    pub fn from_json(value: &Value) -> Result<Self> {
        if !value.is_object() {
            return Err(Error::input("input: expected a JSON object"));
        }
        let input: FailbackInput =
            decode_value("input", value).map_err(|e| Error::input(e.to_string()).with_source(e))?;
        input.validate()?;
        Ok(input)
    }

    /// The checks serde cannot express. Every error names its field.
    pub fn validate(&self) -> Result<()> {
        let named = |field: &str, rule: NameRule, value: &str| {
            rule.check(value)
                .map_err(|why| Error::input(format!("{field}: {why}")))
        };
        named("profile", NameRule::PROFILE, &self.profile)?;
        named("dr_run_id", NameRule::RUN_ID, &self.dr_run_id)?;
        if let Some(run_id) = &self.run_id {
            named("run_id", NameRule::RUN_ID, run_id)?;
            NameRule::check_run_kind(run_id, true)
                .map_err(|why| Error::input(format!("run_id: {why}")))?;
            if run_id == &self.dr_run_id {
                return Err(Error::input(
                    "run_id: a failback is a run of its own; it cannot reuse dr_run_id",
                ));
            }
        }
        match (&self.confirm1, &self.confirm2) {
            (Some(_), None) => {
                return Err(Error::input(
                    "confirm2: missing; give both literal confirmations or neither (then two approvers confirm)",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::input(
                    "confirm1: missing; give both literal confirmations or neither (then two approvers confirm)",
                ))
            }
            _ => {}
        }
        let given = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        if self.discard_divergent {
            if !given(&self.approver) {
                return Err(Error::input(
                    "approver: discard_divergent needs the approver who accepts losing the primary's divergent writes",
                ));
            }
            if !given(&self.ticket) {
                return Err(Error::input(
                    "ticket: discard_divergent needs the ticket that records the decision",
                ));
            }
        } else if self.approver.is_some() || self.ticket.is_some() {
            return Err(Error::input(
                "approver/ticket: only meaningful with discard_divergent (the confirmations name their own approvers)",
            ));
        }
        Ok(())
    }

    /// Whether the input carries the literal confirmations (checked against the DR run
    /// by [`Self::check_literals`]).
    pub fn has_literals(&self) -> bool {
        self.confirm1.is_some()
    }

    /// The literal confirmations, when given, are exactly `FAILBACK` and
    /// `CONFIRM-<dr_run_id>`, and only in a drill.
    pub fn check_literals(&self, mode: Mode) -> Result<()> {
        let (Some(first), Some(second)) = (&self.confirm1, &self.confirm2) else {
            return Ok(());
        };
        if mode != Mode::Drill {
            return Err(Error::input(format!(
                "confirm1: literal confirmations are for drills; failing back the {mode} {} needs two approvers (drpilot approve RUN --approver NAME --ticket ID, twice)",
                self.dr_run_id
            )));
        }
        if first != FIRST_CONFIRMATION {
            return Err(Error::input(format!(
                "confirm1: expected the literal {FIRST_CONFIRMATION:?}, got {first:?}"
            )));
        }
        let expected = second_confirmation(&self.dr_run_id);
        if second != &expected {
            return Err(Error::input(format!(
                "confirm2: expected the literal {expected:?}, got {second:?}"
            )));
        }
        Ok(())
    }
}

/// The promotion a failback undoes, as preflight found it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrPromotion {
    pub run_id: String,
    pub mode: Mode,
    pub audit_record: S3Uri,
    pub promoted_at: DateTime<Utc>,
    /// The backup it promoted: its manifests are the baseline both sites started from.
    pub backup: BackupRef,
}

/// Preflight's output: everything the later steps need.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailbackRun {
    pub run_id: String,
    pub input: FailbackInput,
    /// The DR run's mode.
    pub mode: Mode,
    pub execution_arn: Option<String>,
    pub kickoff_at: DateTime<Utc>,
    pub dr: DrPromotion,
    /// The DR site's `root/` (copied from) and the primary's (copied into).
    pub dr_root: S3Uri,
    pub primary_root: S3Uri,
    pub primary_region: String,
    /// The publish pointer's generation preflight found (the DR run's promotion, or a
    /// later one of this failback after a crash); copy-back publishes the next.
    pub published_generation: u64,
    /// The input's literal confirmations were accepted: the state machine skips the two
    /// approvals.
    pub literal_confirmations: bool,
}

/// One preflight check and its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightCheck {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// preflight's receipt details (also on a failed receipt: the checks that ran).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightDetails {
    pub checks: Vec<PreflightCheck>,
}

/// How the keys of the two sites compare with the baseline (the promoted backup).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DivergenceCounts {
    pub baseline_objects: u64,
    /// Keys as the baseline on both sites.
    pub unchanged: u64,
    /// Changed (written, deleted or added) on the DR site only: copied back.
    pub dr_changed: u64,
    /// Changed on the primary only (written or added): left as the primary has them.
    pub primary_changed: u64,
    /// Gone from the primary while the DR site still holds the baseline's version (a
    /// site that lost data): restored from the DR site.
    #[serde(default)]
    pub primary_missing: u64,
    /// Changed on both sites to the same content: nothing to do.
    pub both_same: u64,
    /// Changed on both sites differently: refused unless `discard_divergent`.
    pub divergent: u64,
    /// In the DR `root/` before the promotion and not in the backup (drift the
    /// promotion left alone): not the primary's business, not copied.
    pub dr_drift: u64,
}

/// divergence's receipt details (also on a `DivergenceError` receipt).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DivergenceDetails {
    pub counts: DivergenceCounts,
    /// Every key that is not unchanged, one JSON line each with its class and the
    /// action copy-back takes: the plan.
    pub report: S3Uri,
    /// The first divergent keys and primary-only changes (all of them are in the report).
    pub divergent_keys: Vec<String>,
    pub primary_changed_keys: Vec<String>,
    pub discard_divergent: bool,
    pub approver: Option<String>,
    pub ticket: Option<String>,
}

/// One confirmation of a failback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// An approver's name, or `literal` for a drill's literal confirmation.
    pub approver: String,
    pub ticket: Option<String>,
    #[serde(default)]
    pub approved_at: Option<DateTime<Utc>>,
    /// `approval` (a task token answered) or `literal`.
    pub kind: String,
    /// The IAM principal that confirmed through the approve function (`null` locally).
    #[serde(default)]
    pub principal: Option<String>,
    /// The principal is AWS's word.
    #[serde(default)]
    pub verified: bool,
}

/// copy-back's receipt details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyBackDetails {
    pub confirmations: Vec<Confirmation>,
    pub objects_copied: u64,
    pub bytes_copied: u64,
    pub objects_deleted: u64,
    /// Divergent keys where the DR site's version replaced the primary's.
    pub divergent_overwritten: u64,
    /// The recount after the copy: DR-side changes still not on the primary (0).
    pub remaining: DivergenceCounts,
    /// The DR `root/` against the primary's after the copy (differences left are the
    /// primary's own changes and the DR site's drift).
    pub parity_after: ParityCounts,
    pub audit_record: S3Uri,
    pub pointer: S3Uri,
    pub generation: u64,
    pub copy_seconds: f64,
}

/// One step's receipt: a phase receipt whose `phase` is the failback step.
pub type FailbackReceipt = PhaseReceipt<FailbackStep>;

/// `<receipts>/runs/<run_id>/failback.summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailbackSummary {
    pub run_id: String,
    pub kind: String,
    pub dr_run_id: String,
    pub profile: String,
    pub mode: Option<Mode>,
    pub status: RunStatus,
    pub dry_run: bool,
    pub execution_arn: Option<String>,
    pub kickoff_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub steps: Vec<FailbackReceipt>,
    pub divergence: Option<DivergenceCounts>,
    pub divergence_report: Option<S3Uri>,
    pub confirmations: Vec<Confirmation>,
    pub objects_copied: u64,
    pub generation: Option<u64>,
    pub audit_record: Option<S3Uri>,
    pub lock: String,
    pub failure: Option<FailbackFailure>,
}

/// A step's failure, as the state machine's Catch reports it to teardown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailbackFailure {
    /// The step that failed; `confirm` for a confirmation denied or timed out.
    pub step: String,
    pub error: String,
    #[serde(default)]
    pub cause: String,
}

/// `kind` of a [`FailbackSummary`].
pub const SUMMARY_KIND: &str = "failback";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(extra: Value) -> Result<FailbackInput> {
        let mut value = json!({"profile": "p", "dr_run_id": "dr-1"});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            value[k] = v;
        }
        FailbackInput::from_json(&value)
    }

    fn message(r: Result<FailbackInput>) -> String {
        r.map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn a_step_receipt_is_a_phase_receipt_and_earlier_ones_still_read() -> Result<()> {
        use crate::receipt::{PhaseClock, PhaseStatus};
        let written = PhaseClock::start("fb-1", FailbackStep::CopyBack, 2)
            .succeeded(&json!({"objects_copied": 3}))?;
        let value = serde_json::to_value(&written).map_err(|e| Error::internal(e.to_string()))?;
        assert_eq!(value["phase"], "copy-back");
        assert!(value.get("dry_run").is_none(), "dry_run only when true");
        // As failback wrote its receipts before they were phase receipts.
        let earlier = json!({
            "run_id": "fb-1", "step": "divergence", "status": "failed",
            "reason": "DivergenceError: 2 keys", "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:00:01Z", "duration_ms": 1000, "attempt": 1,
            "dry_run": false, "details": {"error": "DivergenceError"}
        });
        let read: FailbackReceipt =
            serde_json::from_value(earlier).map_err(|e| Error::internal(e.to_string()))?;
        assert_eq!(read.phase, FailbackStep::Divergence);
        assert_eq!(read.status, PhaseStatus::Failed);
        assert_eq!(read.error_name(), Some("DivergenceError"));
        Ok(())
    }

    #[test]
    fn inputs_are_checked_naming_the_field() {
        assert!(input(json!({})).is_ok());
        assert!(message(input(json!({"confirm1": "FAILBACK"}))).contains("confirm2"));
        assert!(message(input(json!({"confirm2": "CONFIRM-dr-1"}))).contains("confirm1"));
        assert!(message(input(json!({"discard_divergent": true}))).contains("approver"));
        assert!(
            message(input(json!({"discard_divergent": true, "approver": "a"}))).contains("ticket")
        );
        assert!(input(json!({"discard_divergent": true, "approver": "a", "ticket": "T"})).is_ok());
        assert!(message(input(json!({"approver": "a"}))).contains("discard_divergent"));
        assert!(message(input(json!({"dr_run_id": "a/b"}))).contains("dr_run_id"));
        assert!(message(input(json!({"run_id": "dr-1"}))).contains("run_id"));
        // Failbacks and drills/recoveries keep apart ids.
        assert!(message(input(json!({"run_id": "dr-2"}))).contains("begins with \"failback-\""));
        assert!(input(json!({"run_id": "failback-2"})).is_ok());
        assert!(crate::input::RunInput::from_json(
            &json!({"profile": "p", "mode": "drill", "run_id": "failback-2"})
        )
        .unwrap_err()
        .message
        .contains("is a failback's run id"));
        assert!(message(input(json!({"colour": "red"}))).contains("colour"));
    }

    #[test]
    fn literal_confirmations_are_exact_and_for_drills_only() {
        let ok = input(json!({"confirm1": "FAILBACK", "confirm2": "CONFIRM-dr-1"})).unwrap();
        assert!(ok.check_literals(Mode::Drill).is_ok());
        let err = ok.check_literals(Mode::Recovery).unwrap_err().to_string();
        assert!(err.contains("confirm1") && err.contains("drills"), "{err}");
        let wrong = input(json!({"confirm1": "failback", "confirm2": "CONFIRM-dr-1"})).unwrap();
        assert!(wrong
            .check_literals(Mode::Drill)
            .unwrap_err()
            .to_string()
            .contains("confirm1"));
        let wrong = input(json!({"confirm1": "FAILBACK", "confirm2": "CONFIRM-dr-2"})).unwrap();
        assert!(wrong
            .check_literals(Mode::Drill)
            .unwrap_err()
            .to_string()
            .contains("confirm2"));
    }
}
