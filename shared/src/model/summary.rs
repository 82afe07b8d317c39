//! `drill.summary.json`: the whole run on one page, as teardown writes it and the CLI
//! and the report read it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::component::ComponentOutcome;
use crate::input::{Mode, Trigger};
use crate::receipt::{is_false, Failure, PhaseStatus, RunStatus};
use crate::record::ExecutionEntry;
use crate::s3uri::S3Uri;
use crate::stage::Phase;
use crate::time::Objective;

/// One line of the summary's phase table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseOutcome {
    pub phase: Phase,
    pub status: PhaseStatus,
    pub reason: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<u64>,
}

/// `drill.summary.json`: the whole run on one page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    pub mode: Mode,
    /// A dry run: every phase verified what it would do and wrote nothing but receipts
    /// (written only when true).
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    pub profile: String,
    pub status: RunStatus,
    pub execution_arn: Option<String>,
    pub trigger: Option<Trigger>,
    pub backup_uri: Option<S3Uri>,
    pub backup_created_at: Option<DateTime<Utc>>,
    pub kickoff_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub phases: Vec<PhaseOutcome>,
    /// Kickoff to promotion, or to validation when not promoted.
    pub rto_seconds: Option<f64>,
    /// Kickoff minus the backup's `created_at`.
    pub rpo_seconds: Option<f64>,
    pub rto: Objective,
    pub rpo: Objective,
    pub parity_delta: Option<u64>,
    pub manual_interventions: u32,
    pub approver: Option<String>,
    pub ticket: Option<String>,
    /// The IAM principal that approved, through the approve function (`null` on the
    /// local stack, without an approval, or under the bypass).
    #[serde(default)]
    pub approver_principal: Option<String>,
    /// The approval's seal was verified by promote.
    #[serde(default)]
    pub approval_sealed: bool,
    pub promoted: bool,
    pub torn_down: bool,
    /// The failed phase and its error, when the run failed.
    pub failure: Option<Failure>,
    /// Every execution that worked on the run, in order, with how each ended (from the
    /// run record).
    #[serde(default)]
    pub executions: Vec<ExecutionEntry>,
    /// Each component's verdict, RTO/RPO against its targets, and what it created.
    #[serde(default)]
    pub components: Vec<ComponentOutcome>,
    /// The notice sent when the running recovery passed its RTO target (readiness's
    /// RTO watch), if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_watch: Option<RtoWatchMarker>,
}

impl RunSummary {
    /// Whether the summary is its execution's last word: its teardown succeeded (a
    /// teardown that failed is retried and writes the summary again).
    pub fn is_final(&self) -> bool {
        self.phases
            .iter()
            .any(|p| p.phase == Phase::Teardown && p.status == PhaseStatus::Success)
    }
}

/// `runs/<run>/rto-watch.json`: the notification that a running recovery passed its RTO
/// target, sent once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RtoWatchMarker {
    pub run_id: String,
    pub execution_arn: String,
    pub started_at: DateTime<Utc>,
    pub notified_at: DateTime<Utc>,
    pub elapsed_seconds: f64,
    pub rto_target_seconds: u64,
    /// The SNS message id, once the notification went out.
    pub message_id: Option<String>,
}
