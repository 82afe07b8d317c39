//! What each phase records in its receipt's `details`, as types: the phase writes them,
//! and teardown, the CLI and the report read them back as the same types.
//!
//! A failed receipt also carries `details.error`, the error's name (see
//! [`PhaseReceipt::error_name`](crate::receipt::PhaseReceipt::error_name)); teardown adds
//! `recorded_by: "teardown"` when it writes the receipt of a phase a Catch reported.
//!
//! The state machine reads, from a phase's output (`PhaseOutput.details`):
//! - `ParityDetails::delta` and `ParityDetails::report`, in the approval request's message.
//!
//! Everything else here is for people and tools reading receipts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::input::{Mode, Trigger};
use crate::parity::{Counts, ParityCounts};
use crate::receipt::PhaseDetails;
use crate::s3uri::S3Uri;
use crate::stage::Phase;

/// bringup: the run's identity and the lock it took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BringupDetails {
    pub profile: String,
    pub mode: Mode,
    pub trigger: Trigger,
    pub backup_uri: S3Uri,
    pub backup_id: String,
    pub backup_created_at: DateTime<Utc>,
    pub lock: S3Uri,
    /// How the lock was taken: `Fresh`, `AlreadyOwned` (held from an earlier execution
    /// of the run) or `TakenOver` with the expired record it replaced; a retried bringup
    /// answers as its first attempt did. A dry run takes none and says who holds it.
    pub lock_acquired: String,
    pub rpo_seconds_at_kickoff: f64,
}

impl PhaseDetails for BringupDetails {
    const PHASE: Phase = Phase::Bringup;
}

/// restore: what was staged from which backup, and how fast.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestoreDetails {
    pub backup_uri: S3Uri,
    pub backup_id: String,
    pub backup_created_at: DateTime<Utc>,
    pub git_sha: Option<String>,
    pub staging: S3Uri,
    pub dry_run: bool,
    pub objects: u64,
    pub directories: u64,
    pub bytes: u64,
    pub archive_bytes: u64,
    pub archive_sha256: String,
    pub manifests_sha256: String,
    pub manifest_files: u64,
    pub previously_staged_objects_removed: u64,
    pub control_plane: Option<ControlPlaneStaged>,
    pub seconds: f64,
    pub megabytes_per_second: f64,
    /// Each shard of a sharded (v2) backup, as its range's child staged it (empty for
    /// v1; `archive_sha256` is then the one archive's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardStaged>,
}

/// One state archive as restore staged it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardStaged {
    pub name: String,
    /// The plan's range whose child staged it.
    pub index: u32,
    pub objects: u64,
    pub directories: u64,
    pub bytes: u64,
    pub archive_bytes: u64,
    pub archive_sha256: String,
    pub seconds: f64,
}

impl PhaseDetails for RestoreDetails {
    const PHASE: Phase = Phase::Restore;
}

/// The control-plane bundle restore verified (and staged, unless a dry run).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlPlaneStaged {
    pub pointer: S3Uri,
    pub bundle_uri: S3Uri,
    pub bundle_sha256: String,
    pub bundle_bytes: u64,
    pub git_sha: String,
    pub image_ref_digest: String,
    /// The staging key it was copied to; `null` on a dry run.
    pub staged_as: Option<String>,
}

/// components: each component's verdict (a dry run: each component checked, none
/// started).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComponentsDetails {
    pub components: Vec<crate::component::ComponentOutcome>,
    pub verified: u32,
    pub failed: u32,
    /// What a dry run checked, one line per component (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checked: Vec<String>,
}

impl PhaseDetails for ComponentsDetails {
    const PHASE: Phase = Phase::Components;
}

/// validate's tallies of the manifests against the staging.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub expected_objects: u64,
    pub staged_objects: u64,
    pub verified: u64,
    pub missing: u64,
    pub extra: u64,
    pub size_mismatches: u64,
    pub sha256_mismatches: u64,
}

impl Counts for Tally {
    fn add(&mut self, other: &Self) {
        self.expected_objects += other.expected_objects;
        self.staged_objects += other.staged_objects;
        self.verified += other.verified;
        self.missing += other.missing;
        self.extra += other.extra;
        self.size_mismatches += other.size_mismatches;
        self.sha256_mismatches += other.sha256_mismatches;
    }
}

/// One configured check's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    pub value: Option<f64>,
    pub detail: String,
}

/// validate: the comparison and the checks (also on a failed receipt).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidateDetails {
    pub tally: Tally,
    pub differences: u64,
    pub differences_uri: S3Uri,
    /// The first few differences, as written to `differences_uri`.
    pub first_differences: Vec<Value>,
    pub checks: Vec<CheckResult>,
    /// Whether every object's SHA-256 was recomputed (the profile's `full_validation`).
    pub full: bool,
}

impl PhaseDetails for ValidateDetails {
    const PHASE: Phase = Phase::Validate;
}

/// parity-report: staging against `root/`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParityDetails {
    /// Objects that differ in any way (the state machine shows it to the approver).
    pub delta: u64,
    pub counts: ParityCounts,
    /// `report.json` (the state machine links it in the approval request).
    pub report: S3Uri,
    pub differences: S3Uri,
}

impl PhaseDetails for ParityDetails {
    const PHASE: Phase = Phase::ParityReport;
}

/// promote: who approved, what was copied, and the audit record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromoteDetails {
    pub promoted: bool,
    pub approver: Option<String>,
    pub ticket: Option<String>,
    /// The approving IAM principal (the approve function's word); `null` locally.
    #[serde(default)]
    pub principal: Option<String>,
    #[serde(default)]
    pub principal_verified: bool,
    /// The approval's seal was verified before the copy (false only under the bypass).
    #[serde(default)]
    pub sealed: bool,
    pub bypass: bool,
    pub objects_copied: u64,
    pub bytes_copied: u64,
    pub objects_identical: u64,
    pub drift_objects: u64,
    pub drift_deleted: u64,
    pub parity_before: ParityCounts,
    pub parity_after: ParityCounts,
    pub audit_record: S3Uri,
    pub pointer: S3Uri,
    /// The publish pointer's generation this promotion wrote.
    #[serde(default)]
    pub generation: u64,
    pub copy_seconds: f64,
    pub time_to_promotion_seconds: f64,
}

impl PhaseDetails for PromoteDetails {
    const PHASE: Phase = Phase::Promote;
}

/// teardown: what it cleaned up and where the summary is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeardownDetails {
    pub staging: S3Uri,
    /// The input held the staging and the lock for the run's next execution
    /// (`teardown: false`).
    pub held: bool,
    /// Objects deleted from the staging; `null` when held or not touched (a dry run, a
    /// failed bringup).
    pub staged_objects_deleted: Option<u64>,
    /// What happened to the run lock, in words.
    pub lock: String,
    pub summary: S3Uri,
    /// Metrics are published by the execution that ends the run (not by one that holds
    /// it); a re-run of that teardown reads this and does not repeat them.
    pub metrics_published: bool,
    /// The execution whose teardown this is.
    #[serde(default)]
    pub execution: Option<String>,
}

impl PhaseDetails for TeardownDetails {
    const PHASE: Phase = Phase::Teardown;
}
