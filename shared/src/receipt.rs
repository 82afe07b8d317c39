//! What a run leaves behind for auditors (docs/contracts.md): one receipt per phase at
//! `<receipts>/runs/<run_id>/phases/<phase>.json` and the run summary at
//! `<receipts>/runs/<run_id>/drill.summary.json`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::component::{ComponentOutcome, ComponentReceipt};
use crate::details::PhaseDetails;
use crate::error::{Error, Result};
use crate::input::{Mode, Phase, Trigger};
use crate::objects::{
    for_each_child_prefix, get_bytes, get_json, put_json, put_json_if, Conditional, Precondition,
};
use crate::resume::{ExecutionEntry, RunRecord};
use crate::s3uri::S3Uri;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseStatus {
    Success,
    Failed,
    Skipped,
    /// Only in a step's answer, never in a receipt: the phase fanned out over its plan's
    /// ranges, and its reducer will write the receipt.
    Running,
}

impl PhaseStatus {
    /// The name receipts use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Running => "running",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseReceipt {
    pub run_id: String,
    pub phase: Phase,
    pub status: PhaseStatus,
    /// Why it failed or was skipped; `null` on success.
    pub reason: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// 1 for the first try; Step Functions retries count up.
    pub attempt: u32,
    /// Phase-specific facts: counts, bytes, URIs of large results.
    pub details: Value,
    /// The run was a dry run: this phase verified and wrote nothing but receipts. Written
    /// only when true, so every other receipt keeps the documented fields.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
}

impl PhaseReceipt {
    /// The details as the phase's type: an error names the receipt when it belongs to
    /// another phase or does not have the expected shape.
    pub fn details<D: PhaseDetails>(&self) -> Result<D> {
        if self.phase != D::PHASE {
            return Err(Error::internal(format!(
                "run {}: a {} receipt read as {} details",
                self.run_id,
                self.phase,
                D::PHASE
            )));
        }
        let document = format!("run {}: the {} receipt's details", self.run_id, self.phase);
        crate::error::decode_value(&document, &self.details)
            .map_err(|e| Error::integrity(e.to_string()).with_source(e))
    }

    /// The name of the error a failed receipt records (`details.error`).
    pub fn error_name(&self) -> Option<&str> {
        self.details.get("error").and_then(Value::as_str)
    }
}

/// Times a phase from its start and turns into its receipt.
#[derive(Clone, Debug)]
pub struct PhaseClock {
    run_id: String,
    phase: Phase,
    attempt: u32,
    started_at: DateTime<Utc>,
    dry_run: bool,
}

impl PhaseClock {
    pub fn start(run_id: impl Into<String>, phase: Phase, attempt: u32) -> Self {
        Self {
            run_id: run_id.into(),
            phase,
            attempt: attempt.max(1),
            started_at: Utc::now(),
            dry_run: false,
        }
    }

    /// Marks the receipts of a dry run.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    /// Moves the start back to `at` (a phase whose work began at an earlier step).
    pub fn since(&mut self, at: DateTime<Utc>) {
        self.started_at = self.started_at.min(at);
    }

    /// The receipt of a phase that succeeded with `details`.
    pub fn succeeded<D: PhaseDetails>(&self, details: &D) -> Result<PhaseReceipt> {
        Ok(self.finish(PhaseStatus::Success, None, encode(details)?))
    }

    /// The receipt of a phase that failed with `error`, keeping the details gathered
    /// before it; `details.error` names the error.
    pub fn failed<D: Serialize>(&self, error: &Error, details: Option<&D>) -> Result<PhaseReceipt> {
        let mut details = match details {
            Some(details) => encode(details)?,
            None => Value::Object(Default::default()),
        };
        if let Some(object) = details.as_object_mut() {
            object.insert("error".into(), Value::from(error.kind.name()));
        }
        Ok(self.finish(PhaseStatus::Failed, Some(error.to_string()), details))
    }

    /// The receipt for a phase the input's `start_at`/`stop_after` window leaves out.
    pub fn skipped(&self, reason: String) -> PhaseReceipt {
        self.finish(
            PhaseStatus::Skipped,
            Some(reason),
            Value::Object(Default::default()),
        )
    }

    pub fn finish(
        &self,
        status: PhaseStatus,
        reason: Option<String>,
        details: Value,
    ) -> PhaseReceipt {
        let finished_at = Utc::now();
        let duration_ms = (finished_at - self.started_at).num_milliseconds().max(0) as u64;
        PhaseReceipt {
            run_id: self.run_id.clone(),
            phase: self.phase,
            status,
            reason,
            started_at: self.started_at,
            finished_at,
            duration_ms,
            attempt: self.attempt,
            details,
            dry_run: self.dry_run,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Succeeded,
    Failed,
}

impl RunStatus {
    /// The name summaries use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

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

fn is_false(value: &bool) -> bool {
    !value
}

/// A duration in seconds with millisecond precision, as receipts and summaries record
/// RTO, RPO and phase times.
pub fn seconds(duration: chrono::TimeDelta) -> f64 {
    duration.num_milliseconds() as f64 / 1000.0
}

/// An AWS SDK timestamp as a UTC time.
pub fn utc(t: &aws_smithy_types::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(t.to_millis().ok()?)
}

/// A measured value against its target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    /// Measured seconds; `null` when the run did not get far enough to measure it.
    pub seconds: Option<f64>,
    pub target_seconds: u64,
    /// `null` when not measured.
    pub met: Option<bool>,
}

impl Objective {
    /// `met`, `MISSED` or `not measured`.
    pub fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        }
    }

    /// The measurement in words: `25.7 s (target 900 s, met)`.
    pub fn describe(&self) -> String {
        let measured = self
            .seconds
            .map_or("not measured".to_owned(), |s| format!("{s:.1} s"));
        format!(
            "{measured} (target {} s, {})",
            self.target_seconds,
            self.verdict()
        )
    }

    pub fn measure(seconds: Option<f64>, target_seconds: u64) -> Self {
        Self {
            seconds,
            target_seconds,
            met: seconds.map(|s| s <= target_seconds as f64),
        }
    }
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
    pub rto_watch: Option<crate::readiness::RtoWatchMarker>,
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub phase: Option<Phase>,
    pub error: String,
    pub cause: String,
}

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
        crate::objects::delete(&self.s3, &self.phase_uri(run_id, phase)?).await
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
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&dir.bucket)
            .prefix(&dir.key)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Error::from_sdk(&format!("ListObjectsV2 {dir}"), e))?;
            for object in page.contents() {
                let Some(key) = object.key().filter(|k| k.ends_with(".json")) else {
                    continue;
                };
                let uri = S3Uri {
                    bucket: dir.bucket.clone(),
                    key: key.to_owned(),
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

fn encode<T: Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value)
        .map_err(|e| Error::internal(format!("encoding receipt details: {e}")))
}
