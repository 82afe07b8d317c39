//! A failback's step receipts and summary under the receipts location.

use crate::error::{Error, Result};
use crate::failback::{FailbackReceipt, FailbackSummary};
use crate::objects::{get_json, put_json, put_json_if, Precondition};
use crate::s3uri::S3Uri;
use crate::stage::FailbackStep;
use crate::store::ReceiptStore;

/// A failback's step receipts and summary.
impl ReceiptStore {
    /// `<receipts>/runs/<run_id>/failback/<step>.json`.
    pub fn failback_uri(&self, run_id: &str, step: FailbackStep) -> Result<S3Uri> {
        self.run_dir(run_id)?
            .join(&format!("failback/{step}.json"))
            .map_err(|e| Error::input(format!("run_id: {e}")))
    }

    pub async fn put_failback(&self, receipt: &FailbackReceipt) -> Result<S3Uri> {
        let uri = self.failback_uri(&receipt.run_id, receipt.phase)?;
        put_json(self.s3(), &uri, receipt).await?;
        Ok(uri)
    }

    pub async fn get_failback(
        &self,
        run_id: &str,
        step: FailbackStep,
    ) -> Result<Option<FailbackReceipt>> {
        get_json(self.s3(), &self.failback_uri(run_id, step)?).await
    }

    /// Every step receipt of a failback run, in step order.
    pub async fn failback_steps(&self, run_id: &str) -> Result<Vec<FailbackReceipt>> {
        let mut steps = Vec::new();
        for step in FailbackStep::ALL {
            if let Some(r) = self.get_failback(run_id, step).await? {
                steps.push(r);
            }
        }
        Ok(steps)
    }

    /// `<receipts>/runs/<run_id>/failback.summary.json`.
    pub fn failback_summary_uri(&self, run_id: &str) -> Result<S3Uri> {
        self.run_dir(run_id)?
            .join("failback.summary.json")
            .map_err(|e| Error::input(format!("run_id: {e}")))
    }

    /// Writes a failback's summary once (a failback is one execution): a retried teardown
    /// keeps the summary already written.
    pub async fn put_failback_summary(&self, summary: &FailbackSummary) -> Result<S3Uri> {
        let uri = self.failback_summary_uri(&summary.run_id)?;
        put_json_if(self.s3(), &uri, summary, Some(Precondition::Absent)).await?;
        Ok(uri)
    }

    pub async fn get_failback_summary(&self, run_id: &str) -> Result<Option<FailbackSummary>> {
        get_json(self.s3(), &self.failback_summary_uri(run_id)?).await
    }

    /// Every failback's summary here (failbacks still going have none), oldest first.
    pub async fn failback_summaries(&self) -> Result<Vec<FailbackSummary>> {
        let mut summaries = Vec::new();
        for run_id in self.run_ids().await? {
            if let Some(summary) = self.get_failback_summary(&run_id).await? {
                summaries.push(summary);
            }
        }
        summaries.sort_by_key(|s| s.kickoff_at);
        Ok(summaries)
    }
}
