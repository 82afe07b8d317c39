//! What the evidence bucket's object versions say about a run's records.
//!
//! Object Lock keeps every version a role writes, so a record rewritten or deleted
//! after the fact leaves its earlier version and its delete marker behind: readers of
//! the latest version alone (the report, the export) would not see it. drpilot writes
//! each record in a known way, so a version history it could not have written is a
//! finding:
//!
//! - approvals (`approvals/*`), audit copies (`audit/*`) and a failback's summary are
//!   written once (`If-None-Match`): a second version, or a delete marker, is not
//!   drpilot's;
//! - a run's summary is final for its execution once its teardown succeeded
//!   ([`crate::store::ReceiptStore::put_summary`]): a later version naming the same
//!   execution, or a delete marker, is not drpilot's;
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
    // ListObjectVersions has no paginator in the SDK: it pages by key and version marker.
    let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
    loop {
        let page = s3
            .list_object_versions()
            .bucket(&prefix.bucket)
            .prefix(&prefix.key)
            .set_key_marker(key_marker.take())
            .set_version_id_marker(version_marker.take())
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("ListObjectVersions {prefix}"), e))?;
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
        if page.is_truncated() != Some(true) {
            break;
        }
        key_marker = page.next_key_marker().map(str::to_owned);
        version_marker = page.next_version_id_marker().map(str::to_owned);
        if key_marker.is_none() {
            return Err(Error::retryable(format!(
                "ListObjectVersions {prefix}: a truncated page with no next key marker"
            )));
        }
    }
    let mut by_run: BTreeMap<String, Vec<RecordVersions>> = BTreeMap::new();
    for (key, mut record) in by_key {
        let Some(below) = runs.strip(&key) else {
            continue;
        };
        let Some((run_id, rest)) = below.split_once('/') else {
            continue;
        };
        record.deleted = deleted.get(&key).copied().unwrap_or(false);
        record.key = rest.to_owned();
        by_run.entry(run_id.to_owned()).or_default().push(record);
    }
    Ok(by_run)
}

/// Whether `key` (below a run's directory) is a record drpilot ever deletes.
fn deletable(key: &str) -> bool {
    (key.starts_with("phases/") && key.ends_with(".json")) || key == "rto-watch.json"
}

/// Whether `key` is written once (a failback is one execution: its summary too).
fn write_once(key: &str) -> bool {
    key.starts_with("approvals/") || key.starts_with("audit/") || key == "failback.summary.json"
}

/// The summaries final once their execution's teardown succeeded.
pub const SUMMARIES: [&str; 1] = ["drill.summary.json"];

/// What one version of a summary says of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryVersion {
    pub execution_arn: Option<String>,
    /// Its execution's teardown succeeded: nothing may follow it for that execution.
    pub is_final: bool,
}

/// The findings in one run's `records`; `summaries` are what the versions of each
/// summary key say, by key, newest first (the caller reads them: [`summary_versions`]).
pub fn judge(
    run_id: &str,
    records: &[RecordVersions],
    summaries: &BTreeMap<String, Vec<SummaryVersion>>,
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
        if let Some(versions) = summaries.get(key) {
            let mut finished = std::collections::BTreeSet::new();
            for version in versions.iter().rev() {
                if finished.contains(&version.execution_arn) {
                    found(
                        key,
                        format!(
                            "rewritten after the final summary of execution {}",
                            version.execution_arn.as_deref().unwrap_or("(none named)")
                        ),
                    );
                    break;
                }
                if version.is_final {
                    finished.insert(version.execution_arn.clone());
                }
            }
        }
    }
    findings
}

/// What each version of the summary at `uri` says of itself, newest first (read only
/// when there are several).
pub async fn summary_versions(
    s3: &aws_sdk_s3::Client,
    uri: &S3Uri,
    record: &RecordVersions,
) -> Result<Vec<SummaryVersion>> {
    let mut said = Vec::new();
    if record.versions.len() < 2 {
        return Ok(said);
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
        let summary: SummaryFields = serde_json::from_slice(&bytes).map_err(|e| {
            Error::integrity(format!("{uri} (version {version}) is not a summary: {e}"))
        })?;
        said.push(SummaryVersion {
            execution_arn: summary.execution_arn,
            is_final: summary.phases.iter().any(|p| {
                p.phase == crate::Phase::Teardown
                    && p.status == crate::receipt::PhaseStatus::Success
            }),
        });
    }
    Ok(said)
}

/// The fields of a drill's or a failback's summary the history reads.
#[derive(Deserialize)]
struct SummaryFields {
    #[serde(default)]
    execution_arn: Option<String>,
    #[serde(default)]
    phases: Vec<PhaseFields>,
}

#[derive(Deserialize)]
struct PhaseFields {
    phase: crate::Phase,
    status: crate::receipt::PhaseStatus,
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
        let mut summaries = BTreeMap::new();
        for record in records
            .iter()
            .filter(|r| SUMMARIES.contains(&r.key.as_str()))
        {
            let uri = runs
                .join(&format!("{run_id}/{}", record.key))
                .map_err(|e| Error::internal(format!("summary location: {e}")))?;
            summaries.insert(
                record.key.clone(),
                summary_versions(s3, &uri, record).await?,
            );
        }
        let found = judge(&run_id, &records, &summaries);
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
        assert!(judge("r", &records, &BTreeMap::new()).is_empty());

        let records = [
            record("approvals/approve-1.json", 2, 0),
            record("audit/promotion-1.json", 1, 1),
            record("drill.summary.json", 2, 0),
        ];
        let version = |arn: &str, is_final: bool| SummaryVersion {
            execution_arn: Some(arn.to_owned()),
            is_final,
        };
        let summaries = |versions: Vec<SummaryVersion>| {
            BTreeMap::from([("drill.summary.json".to_owned(), versions)])
        };
        // Newest first: a final summary of arn:1, then another version of it.
        let found = judge(
            "r",
            &records,
            &summaries(vec![version("arn:1", true), version("arn:1", true)]),
        );
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
            found[2].why.contains("after the final summary"),
            "{}",
            found[2].why
        );
        // What drpilot writes: a failed teardown's summary replaced by its retry's, then
        // a later execution's.
        let summary = [record("drill.summary.json", 3, 0)];
        assert!(judge(
            "r",
            &summary,
            &summaries(vec![
                version("arn:2", true),
                version("arn:1", true),
                version("arn:1", false)
            ])
        )
        .is_empty());
    }
}
