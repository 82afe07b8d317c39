//! The receipts location's readiness reports and RTO-watch notices.

use crate::error::{Error, Result};
use crate::objects::{get_json, put_json};
use crate::readiness::ReadinessReport;
use crate::s3uri::S3Uri;
use crate::store::ReceiptStore;
use crate::summary::{RtoWatchMarker, RunSummary};

/// The readiness reports and the RTO watch's notices.
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
