//! The S3 layout of the records under the profile's receipts location: phase receipts,
//! the run record, component receipts, the summary, the audit records' evidence copies,
//! the readiness reports and a failback's receipts and summary (docs/contracts.md lists
//! every key). [`ReceiptStore`] is the one type that knows these keys.

// The keys of the readiness reports and of a failback's records, in files of their own
// so that this module does not depend on the readiness and failback models (which
// depend, through parity, on the store).
mod failback_records;
pub mod fence;
pub mod history;
pub mod lock;
pub mod objects;
pub mod published;
mod readiness_records;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::component::ComponentReceipt;
use crate::error::{Error, Result};
use crate::objects::{
    for_each_child_prefix, get_bytes, get_json, key_pages, put_json, put_json_if, Conditional,
    Precondition,
};
use crate::receipt::PhaseReceipt;
use crate::record::RunRecord;
use crate::s3uri::S3Uri;
use crate::stage::Phase;
use crate::summary::RunSummary;

/// Reads and writes a run's receipts under the profile's receipts location.
#[derive(Clone, Debug)]
pub struct ReceiptStore {
    s3: aws_sdk_s3::Client,
    base: S3Uri,
}

impl ReceiptStore {
    pub fn new(s3: aws_sdk_s3::Client, base: S3Uri) -> Self {
        Self {
            s3,
            base: base.as_prefix(),
        }
    }

    /// Where run `run_id`'s audit record goes: `<audit>/<kind>s/<kind>-<UTC timestamp of
    /// at>.json`, chosen by the first attempt and remembered in the run's `marker`
    /// (relative to its directory), so every re-run writes the same key.
    pub async fn audit_record_uri(
        &self,
        run_id: &str,
        marker: &str,
        audit: &S3Uri,
        kind: &str,
        at: DateTime<Utc>,
    ) -> Result<S3Uri> {
        #[derive(Serialize, Deserialize)]
        struct PendingAudit {
            audit_record: S3Uri,
        }
        let marker = self.run_dir(run_id)?.join(marker)?;
        if let Some(p) = get_json::<PendingAudit>(&self.s3, &marker).await? {
            return Ok(p.audit_record);
        }
        let key = format!("{kind}s/{kind}-{}.json", at.format("%Y%m%dT%H%M%S%.3fZ"));
        let pending = PendingAudit {
            audit_record: audit.join(&key)?,
        };
        put_json(&self.s3, &marker, &pending).await?;
        Ok(pending.audit_record)
    }

    /// Writes an audit record unless one is there: a re-run after it was written keeps
    /// the first, whose counts are the copy's (a re-run finds nothing left to copy). A
    /// copy goes with the run's evidence, `<receipts>/runs/<run_id>/audit/<name>`, under
    /// the evidence bucket's retention; the record at `uri` (the target's audit prefix)
    /// is the operational one.
    pub async fn put_audit_record<T: Serialize>(
        &self,
        run_id: &str,
        uri: &S3Uri,
        record: &T,
    ) -> Result<()> {
        put_json_if(&self.s3, uri, record, Some(Precondition::Absent)).await?;
        put_json_if(
            &self.s3,
            &self.evidence_audit_uri(run_id, uri)?,
            record,
            Some(Precondition::Absent),
        )
        .await
        .map(drop)
    }

    /// Where the evidence copy of the audit record at `uri` goes.
    pub fn evidence_audit_uri(&self, run_id: &str, uri: &S3Uri) -> Result<S3Uri> {
        let name = uri.key.rsplit('/').next().unwrap_or(&uri.key);
        self.run_dir(run_id)?
            .join(&format!("audit/{name}"))
            .map_err(|e| Error::internal(format!("audit record name: {e}")))
    }

    pub(crate) fn s3(&self) -> &aws_sdk_s3::Client {
        &self.s3
    }

    /// The receipts location (a prefix).
    pub fn base(&self) -> &S3Uri {
        &self.base
    }

    /// `<receipts>/runs/`: every run's directory.
    pub fn runs_dir(&self) -> S3Uri {
        S3Uri {
            bucket: self.base.bucket.clone(),
            key: format!("{}runs/", self.base.as_prefix().key),
        }
    }

    /// `<receipts>/runs/<run_id>/`
    pub fn run_dir(&self, run_id: &str) -> Result<S3Uri> {
        self.base
            .join(&format!("runs/{run_id}"))
            .map(|u| u.as_prefix())
            .map_err(|e| Error::input(format!("run_id: {e}")))
    }

    pub fn phase_uri(&self, run_id: &str, phase: Phase) -> Result<S3Uri> {
        self.run_dir(run_id)?
            .join(&format!("phases/{phase}.json"))
            .map_err(|e| Error::input(format!("run_id: {e}")))
    }

    pub fn summary_uri(&self, run_id: &str) -> Result<S3Uri> {
        self.run_dir(run_id)?
            .join("drill.summary.json")
            .map_err(|e| Error::input(format!("run_id: {e}")))
    }

    pub async fn put_phase(&self, receipt: &PhaseReceipt) -> Result<S3Uri> {
        let uri = self.phase_uri(&receipt.run_id, receipt.phase)?;
        put_json(&self.s3, &uri, receipt).await?;
        Ok(uri)
    }

    pub async fn get_phase(&self, run_id: &str, phase: Phase) -> Result<Option<PhaseReceipt>> {
        get_json(&self.s3, &self.phase_uri(run_id, phase)?).await
    }

    /// Removes a phase's receipt: a phase that starts over must not leave an earlier
    /// success standing while it runs.
    pub async fn delete_phase(&self, run_id: &str, phase: Phase) -> Result<()> {
        objects::delete(&self.s3, &self.phase_uri(run_id, phase)?).await
    }

    /// Every phase receipt the run has, in phase order.
    pub async fn phases(&self, run_id: &str) -> Result<Vec<PhaseReceipt>> {
        let mut receipts = Vec::new();
        for phase in Phase::ALL {
            if let Some(receipt) = self.get_phase(run_id, phase).await? {
                receipts.push(receipt);
            }
        }
        Ok(receipts)
    }

    /// The ids of every run with receipts here, in key order.
    pub async fn run_ids(&self) -> Result<Vec<String>> {
        let runs = self.base.join("runs")?.as_prefix();
        let mut ids = Vec::new();
        for_each_child_prefix(&self.s3, &runs, async |child| {
            if let Some(id) = runs.strip(&child.key) {
                ids.push(id.trim_end_matches('/').to_owned());
            }
            Ok(())
        })
        .await?;
        Ok(ids)
    }

    /// `<receipts>/runs/<run_id>/run.json`
    pub fn record_uri(&self, run_id: &str) -> Result<S3Uri> {
        self.run_dir(run_id)?
            .join("run.json")
            .map_err(|e| Error::input(format!("run_id: {e}")))
    }

    /// The run record and its ETag (to write it back with [`Self::put_record`]).
    pub async fn get_record(&self, run_id: &str) -> Result<Option<(RunRecord, String)>> {
        let uri = self.record_uri(run_id)?;
        let Some((bytes, etag)) = get_bytes(&self.s3, &uri).await? else {
            return Ok(None);
        };
        let record = crate::error::decode_slice(&uri.to_string(), &bytes)
            .map_err(|e| Error::integrity(e.to_string()).with_source(e))?;
        Ok(Some((record, etag)))
    }

    /// Writes the run record: created only if absent (`etag` `None`), replaced only if
    /// unchanged since it was read. Another writer in between is `Retryable`.
    pub async fn put_record(&self, record: &RunRecord, etag: Option<&str>) -> Result<()> {
        let uri = self.record_uri(&record.run_id)?;
        let precondition = etag.map_or(Precondition::Absent, Precondition::Matches);
        match put_json_if(&self.s3, &uri, record, Some(precondition)).await? {
            Conditional::Written => Ok(()),
            Conditional::ConditionFailed => Err(Error::retryable(format!(
                "{uri} changed while this execution updated it (another execution of run {} at the same time?)",
                record.run_id
            ))),
        }
    }

    /// `<receipts>/runs/<run_id>/components/<name>.json`
    pub fn component_uri(&self, run_id: &str, name: &str) -> Result<S3Uri> {
        self.run_dir(run_id)?
            .join(&format!("components/{name}.json"))
            .map_err(|e| Error::input(format!("component name: {e}")))
    }

    pub async fn put_component(&self, receipt: &ComponentReceipt) -> Result<S3Uri> {
        let uri = self.component_uri(&receipt.run_id, &receipt.name)?;
        put_json(&self.s3, &uri, receipt).await?;
        Ok(uri)
    }

    pub async fn get_component(
        &self,
        run_id: &str,
        name: &str,
    ) -> Result<Option<ComponentReceipt>> {
        get_json(&self.s3, &self.component_uri(run_id, name)?).await
    }

    /// Every component receipt of the run, whichever profile version wrote it, by name.
    pub async fn components(&self, run_id: &str) -> Result<Vec<ComponentReceipt>> {
        let dir = self.run_dir(run_id)?.join("components")?.as_prefix();
        let mut receipts = Vec::new();
        let mut pages = key_pages(&self.s3, &dir);
        while let Some(keys) = pages.next().await {
            let keys = keys.map_err(|e| Error::from_sdk(&format!("ListObjectsV2 {dir}"), e))?;
            for key in keys.into_iter().filter(|k| k.ends_with(".json")) {
                let uri = S3Uri {
                    bucket: dir.bucket.clone(),
                    key,
                };
                if let Some(receipt) = get_json::<ComponentReceipt>(&self.s3, &uri).await? {
                    receipts.push(receipt);
                }
            }
        }
        receipts.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(receipts)
    }

    /// Writes the summary of `summary.execution_arn`'s end: once that execution's
    /// teardown succeeded its summary is final and stands (a later call keeps it); until
    /// then a retried teardown replaces its own; an earlier execution's is replaced only
    /// as the version read (`If-Match`). [`crate::history`] holds the versions to this.
    pub async fn put_summary(&self, summary: &RunSummary) -> Result<S3Uri> {
        let uri = self.summary_uri(&summary.run_id)?;
        loop {
            let earlier = get_bytes(&self.s3, &uri).await?;
            let precondition = match &earlier {
                None => Precondition::Absent,
                Some((bytes, etag)) => {
                    let earlier: RunSummary =
                        crate::error::decode_slice(&uri.to_string(), bytes)
                            .map_err(|e| Error::integrity(e.to_string()).with_source(e))?;
                    if summary.execution_arn.is_some()
                        && earlier.execution_arn == summary.execution_arn
                        && earlier.is_final()
                    {
                        return Ok(uri);
                    }
                    Precondition::Matches(etag)
                }
            };
            if put_json_if(&self.s3, &uri, summary, Some(precondition)).await?
                == Conditional::Written
            {
                return Ok(uri);
            }
        }
    }

    pub async fn get_summary(&self, run_id: &str) -> Result<Option<RunSummary>> {
        get_json(&self.s3, &self.summary_uri(run_id)?).await
    }
}
