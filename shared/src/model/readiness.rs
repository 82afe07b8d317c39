//! Readiness between drills: what the readiness function finds every hour, kept at
//! `<receipts>/readiness/latest.json` (and `readiness/history/<UTC>.json`), and what
//! `drpilot readiness` shows.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::objects::{get_json, put_json};
use crate::s3uri::S3Uri;
use crate::store::ReceiptStore;
use crate::summary::{RtoWatchMarker, RunSummary};

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

impl ReceiptStore {
    /// `<receipts>/runs/<run_id>/rto-watch.json`
    pub fn rto_watch_uri(&self, run_id: &str) -> Result<S3Uri> {
        self.run_dir(run_id)?
            .join("rto-watch.json")
            .map_err(|e| Error::internal(e.to_string()))
    }

    /// The run's RTO-watch notice, if one went out.
    pub async fn get_rto_watch(&self, run_id: &str) -> Result<Option<RtoWatchMarker>> {
        get_json(self.s3(), &self.rto_watch_uri(run_id)?).await
    }

    /// `<receipts>/readiness/latest.json`
    pub fn readiness_uri(&self) -> Result<S3Uri> {
        self.base()
            .join("readiness/latest.json")
            .map_err(|e| Error::internal(e.to_string()))
    }

    /// Writes the report as the latest and into the history.
    pub async fn put_readiness(&self, report: &ReadinessReport) -> Result<S3Uri> {
        let history = self
            .base()
            .join(&format!(
                "readiness/history/{}.json",
                report.checked_at.format("%Y%m%dT%H%M%S%.3fZ")
            ))
            .map_err(|e| Error::internal(e.to_string()))?;
        put_json(self.s3(), &history, report).await?;
        let latest = self.readiness_uri()?;
        put_json(self.s3(), &latest, report).await?;
        Ok(latest)
    }

    pub async fn get_readiness(&self) -> Result<Option<ReadinessReport>> {
        get_json(self.s3(), &self.readiness_uri()?).await
    }

    /// Every run's summary here (runs still going have none), oldest kickoff first.
    pub async fn summaries(&self) -> Result<Vec<RunSummary>> {
        let mut summaries = Vec::new();
        for run_id in self.run_ids().await? {
            if let Some(summary) = self.get_summary(&run_id).await? {
                summaries.push(summary);
            }
        }
        summaries.sort_by_key(|s| s.kickoff_at);
        Ok(summaries)
    }
}
