//! What the evidence bucket's object versions say about a run's records.
//!
//! Object Lock keeps every version a role writes, so a record rewritten or deleted
//! after the fact leaves its earlier version and its delete marker behind: readers of
//! the latest version alone (the report, the export) would not see it. drpilot writes
//! each record in a known way, so a version history it could not have written is a
//! finding:
//!
//! - approvals (`approvals/*`) and audit copies (`audit/*`) are written once
//!   (`If-None-Match`): a second version, or a delete marker, is not drpilot's;
//! - a run's summary is written once per execution ([`crate::receipt::ReceiptStore::put_summary`]):
//!   two versions naming the same execution, or a delete marker, are not drpilot's;
//! - only phase receipts (a phase that starts over removes its earlier receipt) and the
//!   RTO watch's marker are ever deleted: a delete marker on anything else is not
//!   drpilot's.
//!
//! Records drpilot rewrites in place (the run record, a phase's receipt after a retry)
//! are listed with their version count but not judged: the roles that may write them are
//! scoped in the template instead (docs/security.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::s3uri::S3Uri;

/// One record's versions under a run's receipts directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordVersions {
    /// The key below `<receipts>runs/<run_id>/`.
    pub key: String,
    /// Object versions, newest first (their version ids).
    pub versions: Vec<String>,
    pub delete_markers: u32,
    /// The newest entry is a delete marker: readers of the latest version see nothing.
    pub deleted: bool,
}

/// A record whose history drpilot could not have written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub run_id: String,
    pub key: String,
    pub why: String,
}

/// The records under `runs` (`<receipts>runs/`) by run id, of every run or of `only`
/// one: one paginated ListObjectVersions, so a run whose records were all deleted is
/// still found.
pub async fn list(
    s3: &aws_sdk_s3::Client,
    runs: &S3Uri,
    only: Option<&str>,
) -> Result<BTreeMap<String, Vec<RecordVersions>>> {
    let runs = runs.as_prefix();
    let prefix = match only {
        Some(run_id) => runs
            .join(run_id)
            .map_err(|e| Error::input(format!("run_id: {e}")))?
            .as_prefix(),
        None => runs.clone(),
    };
    let mut by_key: BTreeMap<String, RecordVersions> = BTreeMap::new();
    let mut deleted: BTreeMap<String, bool> = BTreeMap::new();
    let mut pages = s3
        .list_object_versions()
        .bucket(&prefix.bucket)
        .prefix(&prefix.key)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| Error::from_sdk(&format!("ListObjectVersions {prefix}"), e))?;
        for version in page.versions() {
            let Some(key) = version.key() else { continue };
            let entry = by_key.entry(key.to_owned()).or_default();
            entry
                .versions
                .push(version.version_id().unwrap_or("null").to_owned());
            if version.is_latest() == Some(true) {
                deleted.insert(key.to_owned(), false);
            }
        }
        for marker in page.delete_markers() {
            let Some(key) = marker.key() else { continue };
            let entry = by_key.entry(key.to_owned()).or_default();
            entry.delete_markers += 1;
            if marker.is_latest() == Some(true) {
                deleted.insert(key.to_owned(), true);
            }
        }
    }
    let mut runs: BTreeMap<String, Vec<RecordVersions>> = BTreeMap::new();
    for (key, mut record) in by_key {
        let Some(below) = runs.strip(&key) else {
            continue;
        };
        let Some((run_id, rest)) = below.split_once('/') else {
            continue;
        };
        record.deleted = deleted.get(&key).copied().unwrap_or(false);
        record.key = rest.to_owned();
        runs.entry(run_id.to_owned()).or_default().push(record);
    }
    Ok(runs)
}

/// Whether `key` (below a run's directory) is a record drpilot ever deletes.
fn deletable(key: &str) -> bool {
    (key.starts_with("phases/") && key.ends_with(".json")) || key == "rto-watch.json"
}

/// Whether `key` is written once.
fn write_once(key: &str) -> bool {
    key.starts_with("approvals/") || key.starts_with("audit/")
}

/// The summaries, written once per execution.
pub const SUMMARIES: [&str; 2] = ["drill.summary.json", "failback.summary.json"];

/// The findings in one run's `records`; `summary_executions` are the execution ARNs its
/// summary's versions name, newest first (the caller reads them: [`summary_executions`]).
pub fn judge(
    run_id: &str,
    records: &[RecordVersions],
    summary_executions: &[Option<String>],
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut found = |key: &str, why: String| {
        findings.push(Finding {
            run_id: run_id.to_owned(),
            key: key.to_owned(),
            why,
        })
    };
    for record in records {
        let key = record.key.as_str();
        if record.delete_markers > 0 && !deletable(key) {
            found(
                key,
                format!(
                    "deleted {} time(s){}; drpilot never deletes it",
                    record.delete_markers,
                    if record.deleted {
                        " and gone from the latest listing"
                    } else {
                        ""
                    }
                ),
            );
        }
        if write_once(key) && record.versions.len() > 1 {
            found(
                key,
                format!(
                    "{} versions of a record drpilot writes once",
                    record.versions.len()
                ),
            );
        }
        if SUMMARIES.contains(&key) {
            let mut seen = std::collections::BTreeSet::new();
            for execution in summary_executions {
                if !seen.insert(execution) {
                    found(
                        key,
                        format!(
                            "two versions of the summary of execution {}: drpilot writes one per execution",
                            execution.as_deref().unwrap_or("(none named)")
                        ),
                    );
                    break;
                }
            }
        }
    }
    findings
}

/// The execution ARN each version of the summary at `uri` names, newest first.
pub async fn summary_executions(
    s3: &aws_sdk_s3::Client,
    uri: &S3Uri,
    record: &RecordVersions,
) -> Result<Vec<Option<String>>> {
    #[derive(Deserialize)]
    struct Named {
        #[serde(default)]
        execution_arn: Option<String>,
    }
    let mut named = Vec::new();
    if record.versions.len() < 2 {
        return Ok(named);
    }
    for version in &record.versions {
        let out = s3
            .get_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .version_id(version)
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("GetObject {uri} (version {version})"), e))?;
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| Error::retryable(format!("reading {uri} (version {version}): {e}")))?
            .into_bytes();
        let summary: Named = serde_json::from_slice(&bytes).map_err(|e| {
            Error::integrity(format!("{uri} (version {version}) is not a summary: {e}"))
        })?;
        named.push(summary.execution_arn);
    }
    Ok(named)
}

/// The findings among the runs under `runs` (`<receipts>runs/`), of every run or of
/// `only` one, by run id (a run without findings is left out).
pub async fn findings(
    s3: &aws_sdk_s3::Client,
    runs: &S3Uri,
    only: Option<&str>,
) -> Result<BTreeMap<String, Vec<Finding>>> {
    let mut out = BTreeMap::new();
    for (run_id, records) in list(s3, runs, only).await? {
        let mut summary_executions_seen = Vec::new();
        for record in records
            .iter()
            .filter(|r| SUMMARIES.contains(&r.key.as_str()))
        {
            let uri = runs
                .join(&format!("{run_id}/{}", record.key))
                .map_err(|e| Error::internal(format!("summary location: {e}")))?;
            summary_executions_seen.extend(summary_executions(s3, &uri, record).await?);
        }
        let found = judge(&run_id, &records, &summary_executions_seen);
        if !found.is_empty() {
            out.insert(run_id, found);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, versions: usize, delete_markers: u32) -> RecordVersions {
        RecordVersions {
            key: key.to_owned(),
            versions: (0..versions).map(|v| v.to_string()).collect(),
            delete_markers,
            deleted: false,
        }
    }

    #[test]
    fn only_histories_drpilot_cannot_write_are_findings() {
        let records = [
            record("run.json", 7, 0),
            record("phases/restore.json", 3, 2),
            record("rto-watch.json", 1, 1),
            record("approvals/approve-1.json", 1, 0),
        ];
        assert!(judge("r", &records, &[]).is_empty());

        let records = [
            record("approvals/approve-1.json", 2, 0),
            record("audit/promotion-1.json", 1, 1),
            record("drill.summary.json", 2, 0),
        ];
        let arn = Some("arn:x".to_owned());
        let found = judge("r", &records, &[arn.clone(), arn]);
        let keys: Vec<&str> = found.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "approvals/approve-1.json",
                "audit/promotion-1.json",
                "drill.summary.json"
            ]
        );
        assert!(
            found[2].why.contains("one per execution"),
            "{}",
            found[2].why
        );
        // One summary per execution is what drpilot writes.
        assert!(judge(
            "r",
            &[record("drill.summary.json", 2, 0)],
            &[Some("arn:2".into()), Some("arn:1".into())]
        )
        .is_empty());
    }
}
