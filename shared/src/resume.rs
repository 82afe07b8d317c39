//! A run across executions. A run (its staging, receipts and lock) may take several
//! executions of the state machine, named `<run_id>.<n>`: the first brings it up, each
//! later one continues it from a phase (`drpilot resume`, or `drpilot start --run-id`
//! with `--start-at`). This module holds the execution names, the run record bringup
//! keeps at `<receipts>/runs/<run_id>/run.json`, and the one rule for what must have
//! happened before a phase may run — which bringup and the phases enforce and
//! `drpilot resume` uses to choose where to start.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backup::BackupRef;
use crate::details::TeardownDetails;
use crate::input::{Mode, Phase, RunInput, Trigger};
use crate::receipt::{Failure, PhaseReceipt, PhaseStatus, RunStatus};

/// An execution's name, read as the run it belongs to and its number in that run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionName {
    pub run_id: String,
    /// `n` of `<run_id>.<n>`; `None` for a name without one (an execution started by an
    /// EventBridge rule, or by hand from the console), which is the run's first.
    pub number: Option<u32>,
}

impl ExecutionName {
    /// The name of execution `number` of `run_id`.
    pub fn format(run_id: &str, number: u32) -> String {
        format!("{run_id}.{number}")
    }

    /// `<run_id>.<n>` → (`run_id`, `n`); any other name is a run id of its own. Run ids
    /// contain no `.`, so the split is unambiguous.
    pub fn parse(name: &str) -> Self {
        if let Some((run_id, number)) = name.rsplit_once('.') {
            if let Ok(number) = number.parse::<u32>() {
                // Only the canonical spelling: no sign, no leading zero, not 0.
                if !run_id.is_empty() && number > 0 && Self::format(run_id, number) == name {
                    return Self {
                        run_id: run_id.to_owned(),
                        number: Some(number),
                    };
                }
            }
        }
        Self {
            run_id: name.to_owned(),
            number: None,
        }
    }

    /// The number this execution has in its run (an unnumbered name counts as the first).
    pub fn ordinal(&self) -> u32 {
        self.number.unwrap_or(1)
    }
}

/// `<receipts>/runs/<run_id>/run.json`: what the run is (written by its first bringup,
/// never changed after) and every execution that worked on it (appended by bringup, the
/// outcome filled in by teardown).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub profile: String,
    pub mode: Mode,
    /// What started the run (its first execution).
    pub trigger: Trigger,
    /// The first execution's start: RTO and RPO are measured from here, however many
    /// executions the run takes.
    pub kickoff_at: DateTime<Utc>,
    pub backup: BackupRef,
    /// The publish pointer's generation when the run's first execution took the lock.
    #[serde(default)]
    pub published_generation: u64,
    pub executions: Vec<ExecutionEntry>,
}

/// One execution of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionEntry {
    pub name: Option<String>,
    pub arn: Option<String>,
    pub started_at: DateTime<Utc>,
    pub start_at: Phase,
    pub stop_after: Phase,
    /// `teardown: false`: the staging and the lock stay with the run afterwards.
    pub hold: bool,
    pub dry_run: bool,
    /// Who or what started this execution.
    pub trigger: Trigger,
    /// How it ended; `null` until its teardown has run.
    pub outcome: Option<ExecutionOutcome>,
}

impl ExecutionEntry {
    pub fn new(
        name: Option<String>,
        arn: Option<String>,
        started_at: DateTime<Utc>,
        input: &RunInput,
        trigger: Trigger,
    ) -> Self {
        Self {
            name,
            arn,
            started_at,
            start_at: input.start_at,
            stop_after: input.stop_after,
            hold: !input.teardown,
            dry_run: input.dry_run,
            trigger,
            outcome: None,
        }
    }

    /// The phases it was asked to run, and whether it held the run: `restore..validate,
    /// held`.
    pub fn window(&self) -> String {
        format!(
            "{}..{}{}{}",
            self.start_at,
            self.stop_after,
            if self.hold { ", held" } else { "" },
            if self.dry_run { ", dry run" } else { "" }
        )
    }

    /// How it ended, in words: `succeeded`, `failed (IntegrityError in restore)`, or
    /// `not finished`.
    pub fn ended(&self) -> String {
        match &self.outcome {
            None => "not finished".to_owned(),
            Some(o) => match &o.failure {
                Some(f) => format!(
                    "{} ({} in {})",
                    o.status.as_str(),
                    f.error,
                    f.phase.map_or("bringup", |p| p.as_str())
                ),
                None => o.status.as_str().to_owned(),
            },
        }
    }

    /// Whether this entry is the execution named `name` / `arn`.
    pub fn is(&self, name: Option<&str>, arn: Option<&str>) -> bool {
        match (arn, &self.arn) {
            (Some(a), Some(b)) => a == b,
            _ => name.is_some() && name == self.name.as_deref(),
        }
    }
}

/// What teardown found at the end of one execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionOutcome {
    pub status: RunStatus,
    pub failure: Option<Failure>,
    pub torn_down: bool,
    pub finished_at: DateTime<Utc>,
}

impl RunRecord {
    /// The entry of the execution named `name` / `arn`, if it is one of this run's.
    pub fn execution_mut(
        &mut self,
        name: Option<&str>,
        arn: Option<&str>,
    ) -> Option<&mut ExecutionEntry> {
        self.executions.iter_mut().find(|e| e.is(name, arn))
    }
}

/// The phases that build on each other's work, in order: each needs the one before it
/// to have succeeded, after the one before that, and the staging restore made to still
/// be there.
const CHAIN: [Phase; 4] = [
    Phase::Restore,
    Phase::Validate,
    Phase::ParityReport,
    Phase::Promote,
];

/// Why a phase cannot run yet, and which phase to run first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    pub run_first: Phase,
    pub why: String,
}

/// What must happen before `phase` may run in a run whose receipts are `receipts` (any
/// order; missing phases have none): `None` when it may run now. Bringup, restore,
/// components and teardown need nothing; validate needs a successful restore whose
/// staging teardown has not deleted since; parity-report needs that and a validate after
/// it; promote needs that, a parity-report after the validate, and the components
/// verified. A dry run's receipts prove nothing here.
pub fn blocker(receipts: &[PhaseReceipt], phase: Phase) -> Option<Blocker> {
    let needed = CHAIN.iter().position(|p| *p == phase)?;
    first_undone(receipts, needed).or_else(|| {
        (phase == Phase::Promote)
            .then(|| components_undone(receipts))
            .flatten()
    })
}

/// Whether `phase` builds on an earlier phase's work (so [`blocker`] has something to
/// check): validate, parity-report and promote.
pub fn builds_on_earlier(phase: Phase) -> bool {
    CHAIN
        .iter()
        .position(|p| *p == phase)
        .is_some_and(|i| i > 0)
}

/// Where a continued run picks up, and why: the first phase of restore, components,
/// validate, parity-report, promote that is not done (see [`blocker`]), or teardown when
/// all of them are.
pub fn resume_point(receipts: &[PhaseReceipt]) -> Blocker {
    let chain = first_undone(receipts, CHAIN.len());
    let components = components_undone(receipts);
    match (chain, components) {
        (Some(chain), Some(components)) if components.run_first < chain.run_first => components,
        (Some(chain), _) => chain,
        (None, components) => components.unwrap_or_else(|| Blocker {
            run_first: Phase::Teardown,
            why: "every phase before teardown is done".to_owned(),
        }),
    }
}

/// Components run beside the S3 restore and build on nothing; promotion needs them
/// verified (a profile without components records a success with none).
fn components_undone(receipts: &[PhaseReceipt]) -> Option<Blocker> {
    let receipt = receipts.iter().find(|r| r.phase == Phase::Components);
    match receipt.filter(|r| r.status == PhaseStatus::Success && !r.dry_run) {
        Some(_) => None,
        None => Some(Blocker {
            run_first: Phase::Components,
            why: format!("components has not succeeded ({})", state_of(receipt)),
        }),
    }
}

/// The first of `CHAIN[..upto]` that is not done, and why.
fn first_undone(receipts: &[PhaseReceipt], upto: usize) -> Option<Blocker> {
    let find = |phase: Phase| receipts.iter().find(|r| r.phase == phase);
    let mut previous: Option<&PhaseReceipt> = None;
    for phase in CHAIN.into_iter().take(upto) {
        let Some(receipt) = find(phase).filter(|r| r.status == PhaseStatus::Success && !r.dry_run)
        else {
            return Some(Blocker {
                run_first: phase,
                why: format!("{phase} has not succeeded ({})", state_of(find(phase))),
            });
        };
        if let Some(before) = previous.filter(|b| receipt.finished_at < b.finished_at) {
            return Some(Blocker {
                run_first: phase,
                why: format!(
                    "{phase}'s success ({}) is older than the {} it builds on ({})",
                    receipt.finished_at.to_rfc3339(),
                    before.phase,
                    before.finished_at.to_rfc3339()
                ),
            });
        }
        if phase == Phase::Restore && upto > 1 {
            if let Some(deleted_at) = staging_deleted_after(find(Phase::Teardown), receipt) {
                return Some(Blocker {
                    run_first: Phase::Restore,
                    why: format!(
                        "teardown deleted the staging at {} (after restore staged it at {})",
                        deleted_at.to_rfc3339(),
                        receipt.finished_at.to_rfc3339()
                    ),
                });
            }
        }
        previous = Some(receipt);
    }
    None
}

/// When teardown deleted the staging `restore` made, if it did.
fn staging_deleted_after(
    teardown: Option<&PhaseReceipt>,
    restore: &PhaseReceipt,
) -> Option<DateTime<Utc>> {
    let teardown = teardown?;
    let details = teardown.details::<TeardownDetails>().ok()?;
    (details.staged_objects_deleted.is_some() && teardown.finished_at >= restore.finished_at)
        .then_some(teardown.finished_at)
}

fn state_of(receipt: Option<&PhaseReceipt>) -> String {
    match receipt {
        None => "it never ran".to_owned(),
        Some(r) if r.dry_run => "only a dry run of it".to_owned(),
        Some(r) => match (r.status, r.error_name(), &r.reason) {
            (PhaseStatus::Failed, Some(name), _) => format!("it failed with {name}"),
            (PhaseStatus::Failed, None, _) => "it failed".to_owned(),
            (_, _, Some(reason)) => format!("it was skipped: {reason}"),
            _ => "it was skipped".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receipt::PhaseClock;
    use serde_json::json;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn receipt(phase: Phase, status: PhaseStatus, finished: i64) -> PhaseReceipt {
        let mut r = PhaseClock::start("r", phase, 1).finish(status, None, json!({}));
        r.finished_at = at(finished);
        r
    }

    fn torn_down(finished: i64, deleted: Option<u64>) -> PhaseReceipt {
        let mut r = receipt(Phase::Teardown, PhaseStatus::Success, finished);
        r.details = serde_json::to_value(TeardownDetails {
            staging: "s3://target/_staging/r/".parse().unwrap(),
            held: deleted.is_none(),
            staged_objects_deleted: deleted,
            lock: "released".into(),
            summary: "s3://target/r/runs/r/drill.summary.json".parse().unwrap(),
            metrics_published: true,
            execution: Some("r.1".into()),
        })
        .unwrap();
        r
    }

    #[test]
    fn execution_names_carry_the_run_and_its_number() {
        assert_eq!(ExecutionName::format("dr-1", 3), "dr-1.3");
        let parsed = ExecutionName::parse("dr-1.3");
        assert_eq!((parsed.run_id.as_str(), parsed.number), ("dr-1", Some(3)));
        for plain in [
            "dr-1",
            "0f3a-uuid",
            "dr-1.",
            "dr-1.x",
            "dr-1.0",
            ".2",
            "dr-1.+2",
            "dr-1.02",
        ] {
            let parsed = ExecutionName::parse(plain);
            assert_eq!(parsed.run_id, plain, "{plain}");
            assert_eq!(parsed.ordinal(), 1, "{plain}");
        }
    }

    #[test]
    fn a_phase_needs_the_chain_before_it() {
        use PhaseStatus::*;
        assert_eq!(blocker(&[], Phase::Restore), None);
        assert_eq!(blocker(&[], Phase::Teardown), None);
        let b = blocker(&[], Phase::Validate).unwrap();
        assert_eq!(b.run_first, Phase::Restore);
        assert!(b.why.contains("never ran"), "{}", b.why);

        let mut failed = receipt(Phase::Restore, Failed, 10);
        failed.details = json!({"error": "IntegrityError"});
        let b = blocker(&[failed], Phase::Validate).unwrap();
        assert!(b.why.contains("IntegrityError"), "{}", b.why);

        let restored = receipt(Phase::Restore, Success, 10);
        assert_eq!(
            blocker(std::slice::from_ref(&restored), Phase::Validate),
            None
        );
        let b = blocker(std::slice::from_ref(&restored), Phase::ParityReport).unwrap();
        assert_eq!(b.run_first, Phase::Validate);

        // A validate older than the restore it should have checked is not done.
        let stale = receipt(Phase::Validate, Success, 5);
        let b = blocker(&[restored.clone(), stale], Phase::ParityReport).unwrap();
        assert_eq!(b.run_first, Phase::Validate);
        assert!(b.why.contains("older"), "{}", b.why);

        let validated = receipt(Phase::Validate, Success, 20);
        let all = [restored.clone(), validated.clone()];
        assert_eq!(blocker(&all, Phase::ParityReport), None);
        // Components restore beside the data: not done, they come before parity-report.
        assert_eq!(resume_point(&all).run_first, Phase::Components);
        let all = [
            restored.clone(),
            receipt(Phase::Components, Success, 12),
            validated.clone(),
        ];
        assert_eq!(resume_point(&all).run_first, Phase::ParityReport);
    }

    #[test]
    fn a_deleted_staging_sends_the_run_back_to_restore() {
        use PhaseStatus::*;
        let restored = receipt(Phase::Restore, Success, 10);
        let validated = receipt(Phase::Validate, Success, 20);
        let held = [restored.clone(), validated.clone(), torn_down(30, None)];
        assert_eq!(blocker(&held, Phase::ParityReport), None);
        let deleted = [restored.clone(), validated, torn_down(30, Some(3))];
        let b = blocker(&deleted, Phase::ParityReport).unwrap();
        assert_eq!(b.run_first, Phase::Restore);
        assert!(b.why.contains("deleted the staging"), "{}", b.why);
        assert_eq!(resume_point(&deleted).run_first, Phase::Restore);
        // A restore after that teardown staged it again.
        let again = [torn_down(30, Some(3)), receipt(Phase::Restore, Success, 40)];
        assert_eq!(blocker(&again, Phase::Validate), None);
    }

    #[test]
    fn dry_run_receipts_prove_nothing() {
        let mut dry = receipt(Phase::Restore, PhaseStatus::Success, 10);
        dry.dry_run = true;
        let b = blocker(&[dry], Phase::Validate).unwrap();
        assert!(b.why.contains("dry run"), "{}", b.why);
    }

    #[test]
    fn everything_done_resumes_at_teardown() {
        use PhaseStatus::*;
        let mut done: Vec<_> = CHAIN
            .iter()
            .enumerate()
            .map(|(i, p)| receipt(*p, Success, 10 * (i as i64 + 1)))
            .collect();
        // Promotion needs the components verified too.
        assert_eq!(resume_point(&done).run_first, Phase::Components);
        let b = blocker(&done, Phase::Promote).unwrap();
        assert_eq!(b.run_first, Phase::Components);
        assert!(b.why.contains("never ran"), "{}", b.why);
        done.push(receipt(Phase::Components, Success, 12));
        assert_eq!(resume_point(&done).run_first, Phase::Teardown);
        assert_eq!(blocker(&done, Phase::Promote), None);
        let restored_only = [done[0].clone(), done[4].clone()];
        assert_eq!(resume_point(&restored_only).run_first, Phase::Validate);
        // A failed component is where the run picks up, before validate.
        let mut failed = receipt(Phase::Components, Failed, 12);
        failed.details = json!({"error": "IntegrityError"});
        assert_eq!(
            resume_point(&[done[0].clone(), failed]).run_first,
            Phase::Components
        );
    }
}
