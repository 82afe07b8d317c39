//! A run across executions. A run (its staging, receipts and lock) may take several
//! executions of the state machine, named `<run_id>.<n>`: the first brings it up, each
//! later one continues it from a phase (`drpilot resume`, or `drpilot start --run-id`
//! with `--start-at`). This module holds the one rule for what must have
//! happened before a phase may run — which bringup and the phases enforce and
//! `drpilot resume` uses to choose where to start.

use chrono::{DateTime, Utc};

use crate::details::TeardownDetails;
use crate::receipt::{PhaseReceipt, PhaseStatus};
use crate::stage::Phase;

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
