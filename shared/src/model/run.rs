//! What travels between the phases through the state machine: small, so step outputs stay
//! far below Step Functions' 256 KiB (large results go to S3 and travel as URIs).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backup::BackupRef;
use crate::input::{Promotion, RunInput, Trigger};
use crate::plan::{Continuation, RangeStatus};
use crate::profile::Profile;
use crate::receipt::{Failure, PhaseReceipt, PhaseStatus, RunStatus};
use crate::s3uri::S3Uri;
use crate::stage::Phase;
use crate::store::ReceiptStore;

/// The execution, as the state machine's context object describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionInfo {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arn: Option<String>,
    #[serde(default)]
    pub start_time: Option<DateTime<Utc>>,
}

impl ExecutionInfo {
    /// Its name and ARN, as a run record's entries are matched against them
    /// ([`crate::record::ExecutionEntry::is`]).
    pub fn name_and_arn(&self) -> (Option<&str>, Option<&str>) {
        (self.name.as_deref(), self.arn.as_deref())
    }
}

/// Bringup's output: everything later phases need to know about the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunContext {
    pub run_id: String,
    pub input: RunInput,
    pub trigger: Trigger,
    pub execution_arn: Option<String>,
    /// When the run started (the execution's start): RTO and RPO are measured from here.
    pub kickoff_at: DateTime<Utc>,
    pub backup: BackupRef,
    /// What the approval gate does (the state machine reads `promotion`).
    pub promotion: Promotion,
    /// The publish pointer's generation when the run started: promote refuses to
    /// publish over a later one (see [`crate::published`]).
    #[serde(default)]
    pub published_generation: u64,
    /// The plan of the heavy phases (written by bringup; absent in a run context from
    /// before plans, which runs every phase inline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<crate::plan::PlanRef>,
}

impl RunContext {
    pub fn receipts(&self, s3: &aws_sdk_s3::Client, profile: &Profile) -> ReceiptStore {
        ReceiptStore::new(s3.clone(), profile.receipts.clone())
    }
}

/// The request every phase after bringup receives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseRequest {
    pub run: RunContext,
    /// Step Functions' retry count for this state (0 on the first try).
    #[serde(default)]
    pub retry_count: u32,
    /// A child of the phase's fan-out: the range it works on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<crate::plan::PlanItem>,
    /// The phase's reducer, after its fan-out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce: Option<crate::plan::Reduce>,
    /// A range's child again: where its last pass stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<Continuation>,
}

impl PhaseRequest {
    /// A request for the whole phase (or its preparation, when the plan fans out).
    pub fn new(run: RunContext, retry_count: u32) -> Self {
        Self {
            run,
            retry_count,
            range: None,
            reduce: None,
            continuation: None,
        }
    }

    /// Which step of the phase this request asks for ([`crate::plan::step`]).
    pub fn step(&self) -> crate::error::Result<crate::plan::Step> {
        if self.continuation.is_some() && self.range.is_none() {
            return Err(crate::error::Error::input(
                "continuation: only a range's child is invoked again where it stopped",
            ));
        }
        crate::plan::step(
            self.run.plan.as_ref(),
            self.range.as_ref(),
            self.reduce.as_ref(),
        )
    }

    /// 1-based attempt number, as receipts record it.
    pub fn attempt(&self) -> u32 {
        self.retry_count.saturating_add(1)
    }
}

/// What a phase returns to the state machine: its outcome, where its receipt is, and a
/// few headline facts (never a large list: those go to S3 and appear here as URIs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseOutput {
    pub run_id: String,
    pub phase: Phase,
    pub status: PhaseStatus,
    pub reason: Option<String>,
    pub receipt: S3Uri,
    pub details: serde_json::Value,
    /// The phase's work went to the plan's ranges: the state machine runs them and then
    /// the reducer, which writes the receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fan_out: Option<FanOut>,
}

/// What a range's child answers the Map: its result is in S3 once it is done; until
/// then, where it stopped, for the Map to invoke it again with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RangeOutput {
    pub run_id: String,
    pub phase: Phase,
    pub index: u32,
    pub status: RangeStatus,
    pub result: S3Uri,
    /// `Some` when the pass stopped at its deadline with work left (no result written).
    #[serde(default)]
    pub continuation: Option<Continuation>,
}

/// What a heavy phase's function answers: a phase step's output, or a range child's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StepOutput {
    Phase(PhaseOutput),
    Range(RangeOutput),
}

/// A phase prepared for its fan-out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanOut {
    pub ranges: u32,
    pub started_at: DateTime<Utc>,
}

/// The most of a receipt's details a phase's output carries into the state machine.
/// Step Functions holds a state's output to 256 KiB, and an output past it ends the
/// execution where no `Catch` reaches (`States.DataLimitExceeded`), teardown included; so
/// lists that grow with the backup (a sharded restore's shards) stay in the receipt,
/// whose location the output carries.
pub const OUTPUT_DETAILS_MAX_BYTES: usize = 16 * 1024;

/// A field of the details kept in a bounded output: at most this many bytes as JSON.
const OUTPUT_FIELD_MAX_BYTES: usize = 1024;

/// `details` as a phase's output carries them: whole when small, else each top-level
/// field of at most [`OUTPUT_FIELD_MAX_BYTES`], with `left_out` naming the others (the
/// receipt has them).
pub fn bounded_details(details: &serde_json::Value) -> serde_json::Value {
    let size = |v: &serde_json::Value| serde_json::to_string(v).map_or(usize::MAX, |s| s.len());
    if size(details) <= OUTPUT_DETAILS_MAX_BYTES {
        return details.clone();
    }
    let Some(fields) = details.as_object() else {
        return serde_json::json!({"left_out": ["details"]});
    };
    let mut kept = serde_json::Map::new();
    let mut left_out = Vec::new();
    for (name, value) in fields {
        if size(value) <= OUTPUT_FIELD_MAX_BYTES {
            kept.insert(name.clone(), value.clone());
        } else {
            left_out.push(serde_json::Value::String(name.clone()));
        }
    }
    kept.insert("left_out".into(), serde_json::Value::Array(left_out));
    serde_json::Value::Object(kept)
}

impl PhaseOutput {
    pub fn new(receipt: &PhaseReceipt, uri: S3Uri) -> Self {
        Self {
            run_id: receipt.run_id.clone(),
            phase: receipt.phase,
            status: receipt.status,
            reason: receipt.reason.as_deref().map(crate::error::bounded_message),
            receipt: uri,
            details: bounded_details(&receipt.details),
            fan_out: None,
        }
    }
}

/// teardown's answer: the headline of the summary and where the summary is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeardownOutput {
    pub run_id: String,
    pub status: RunStatus,
    pub summary: Option<S3Uri>,
    pub rto_seconds: Option<f64>,
    pub rpo_seconds: Option<f64>,
    pub promoted: bool,
    pub torn_down: bool,
    pub lock: String,
    pub failure: Option<Failure>,
    /// The run in plain sentences, with where its receipts are: the notification the
    /// state machine sends at the end.
    pub notice: String,
    /// Resources components created that are still being deleted: the state machine
    /// waits `wait_seconds` and runs teardown again (0: teardown is done).
    #[serde(default)]
    pub pending_cleanup: u32,
    #[serde(default)]
    pub wait_seconds: u64,
    /// How far deleting the staging has come, while it takes more than one invocation:
    /// the state machine hands it to teardown's next pass (null once teardown is done).
    #[serde(default)]
    pub cleanup: Option<CleanupProgress>,
}

/// Teardown's progress through a staging larger than one invocation deletes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupProgress {
    /// Staged objects earlier passes deleted.
    pub staging_deleted: u64,
    /// Passes so far.
    pub passes: u32,
    /// The first pass raised the run's fence: every pass deletes until a listing finds
    /// nothing more.
    #[serde(default)]
    pub fenced: bool,
    /// Passes in a row that deleted nothing (S3 throttled them throughout).
    #[serde(default)]
    pub idle_passes: u32,
}

impl TeardownOutput {
    /// Teardown is deleting what components created and must look again after a wait.
    pub fn cleaning(run_id: String, pending: u32, wait_seconds: u64) -> Self {
        Self {
            notice: format!(
                "drpilot run {run_id}: teardown is deleting {pending} resource(s) components created, and checks again in {wait_seconds} s."
            ),
            status: RunStatus::Succeeded,
            pending_cleanup: pending,
            wait_seconds,
            lock: "untouched (cleanup first)".into(),
            ..Self::untouched(run_id, None)
        }
    }

    /// Teardown deleted part of the staging before its time ran out: the state machine
    /// runs it again at once with `progress`.
    pub fn deleting_staging(run_id: String, progress: CleanupProgress) -> Self {
        Self {
            notice: format!(
                "drpilot run {run_id}: teardown has deleted {} staged object(s) in {} pass(es) and goes on.",
                progress.staging_deleted, progress.passes
            ),
            cleanup: Some(progress),
            ..Self::cleaning(run_id, 1, STAGING_PASS_WAIT_SECONDS)
        }
    }

    /// Teardown ended the execution: the summary's headline, the lock as teardown left
    /// it, and `notice` for the end-of-run notification.
    pub fn ended(
        summary: crate::summary::RunSummary,
        details: crate::details::TeardownDetails,
        notice: String,
    ) -> Self {
        Self {
            notice,
            run_id: summary.run_id,
            status: summary.status,
            summary: Some(details.summary),
            rto_seconds: summary.rto_seconds,
            rpo_seconds: summary.rpo_seconds,
            promoted: summary.promoted,
            torn_down: summary.torn_down,
            lock: details.lock,
            failure: summary.failure,
            pending_cleanup: 0,
            wait_seconds: 0,
            cleanup: None,
        }
    }

    /// A later execution of an existing run that bringup refused: the run was left as
    /// it was.
    pub fn refused(run_id: String, failure: Option<Failure>) -> Self {
        let why = failure.as_ref().map_or(String::new(), |f| {
            format!(": {}: {}", f.error, crate::error::readable_cause(&f.cause))
        });
        Self {
            notice: format!(
                "drpilot: an execution of run {run_id} was refused at bringup{why}. The run is unchanged: its staging, lock, receipts and summary are as they were."
            ),
            lock: "untouched".into(),
            ..Self::untouched(run_id, failure)
        }
    }

    /// A failed run teardown could not, or must not, touch (no input, no profile, or the
    /// wrong account): nothing written, nothing released.
    pub fn untouched(run_id: String, failure: Option<Failure>) -> Self {
        Self {
            run_id: run_id.clone(),
            status: RunStatus::Failed,
            summary: None,
            rto_seconds: None,
            rpo_seconds: None,
            promoted: false,
            torn_down: false,
            lock: "untouched".into(),
            notice: format!(
                "drpilot run {run_id} failed{}. Teardown could not use its input or profile, so it wrote nothing and released nothing.",
                failure.as_ref().map_or(String::new(), |f| format!(
                    " in {}: {}: {}",
                    f.phase.map_or("bringup", |p| p.as_str()),
                    f.error,
                    crate::error::readable_cause(&f.cause)
                ))
            ),
            failure,
            pending_cleanup: 0,
            wait_seconds: 0,
            cleanup: None,
        }
    }
}

/// The wait between two passes over a staging: none is needed (S3's pace is kept by the
/// budget); one second keeps a wait loop visible in the history.
pub const STAGING_PASS_WAIT_SECONDS: u64 = 1;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_large_receipt_reaches_the_state_machine_as_counts() {
        let shards: Vec<_> = (0..2000)
            .map(|i| json!({"name": format!("state-{i:05}.tar.zst"), "objects": 1}))
            .collect();
        let details = json!({"objects": 2000, "bytes": 32000, "shards": shards});
        let bounded = bounded_details(&details);
        assert_eq!(bounded["objects"], 2000);
        assert_eq!(bounded["left_out"], json!(["shards"]));
        assert!(serde_json::to_string(&bounded).unwrap().len() < OUTPUT_DETAILS_MAX_BYTES);
        // Small details pass whole.
        let small = json!({"delta": 3, "report": "s3://b/k"});
        assert_eq!(bounded_details(&small), small);
    }
}
