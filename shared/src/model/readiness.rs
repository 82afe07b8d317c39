//! Readiness between drills: what the readiness function finds every hour, kept at
//! `<receipts>/readiness/latest.json` (and `readiness/history/<UTC>.json`), and what
//! `drpilot readiness` shows.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::s3uri::S3Uri;

/// One readiness check and its verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadinessCheck {
    /// `backup_age`, `backup_contract`, `encryption`, `lock`, `last_drill`,
    /// `predicted_recovery`, `lambda_concurrency`.
    pub name: String,
    pub passed: bool,
    /// What was found, in words.
    pub detail: String,
}

/// The newest backup as readiness found it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupSeen {
    pub uri: S3Uri,
    pub backup_id: String,
    pub created_at: DateTime<Utc>,
    /// `state.tar.zst` and `manifests.tar.zst` sizes in S3.
    pub state_bytes: u64,
    pub manifests_bytes: u64,
    /// Objects its manifests list, and their bytes.
    pub objects: u64,
    pub object_bytes: u64,
    /// `aws:kms`, `AES256` (SSE-S3) or `null` (the bucket default, SSE-S3).
    pub encryption: Option<String>,
    pub kms_key: Option<String>,
    pub kms_key_rotation: Option<bool>,
}

/// How the prediction was made: the run measured, and the rates it measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The last successful run with a restore and an RTO.
    pub from_run: String,
    pub measured_rto_seconds: f64,
    pub measured_restore_seconds: f64,
    pub measured_objects: u64,
    pub measured_bytes: u64,
    /// Restore's rates in that run.
    pub bytes_per_second: f64,
    pub objects_per_second: f64,
    /// The rest of that run's RTO (bringup, validation, approval, promotion), held fixed.
    pub other_seconds: f64,
}

/// `readiness/latest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadinessReport {
    pub profile: String,
    pub checked_at: DateTime<Utc>,
    /// Every check passed.
    pub ready: bool,
    pub checks: Vec<ReadinessCheck>,
    pub backup: Option<BackupSeen>,
    /// `BackupAgeSeconds` against the RPO target.
    pub backup_age_seconds: Option<f64>,
    pub rpo_target_seconds: u64,
    /// `DaysSinceLastDrill`: since the last successful drill finished (`null`: none yet).
    pub days_since_last_drill: Option<f64>,
    pub last_drill: Option<String>,
    pub drill_interval_days: u32,
    /// `PredictedRecoverySeconds` against the RTO target (`null`: nothing measured yet).
    pub predicted_recovery_seconds: Option<f64>,
    pub rto_target_seconds: u64,
    pub prediction: Option<Prediction>,
}

impl ReadinessReport {
    /// The failed checks' names.
    pub fn failures(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect()
    }
}
