//! The plan: how a run's heavy phases (restore, validate, parity-report, promote) divide
//! their work past one Lambda.
//!
//! Bringup writes the plan once, from the backup's shards, to
//! `<receipts>/runs/<run_id>/plan.json`: a JSON array a Distributed Map's `ItemReader`
//! reads, one [`PlanItem`] per key range. Consecutive shards are grouped into ranges of at
//! most `objects_per_range` objects (so one child's work is bounded whatever the shard
//! size, and the Map's children whatever the shard count); range `i` holds the keys after
//! range `i-1`'s last shard's last key up to its own last shard's (the first range starts
//! at the beginning, the last runs to the end), so the ranges cover every key once:
//! restore's child `i` stages its shards, and validate, parity-report and promote's child
//! `i` compare or copy just the range's keys. A plan of one range (every v1 backup, and a
//! small v2 one) runs each phase inline.
//!
//! A child writes its partial result to `<receipts>/runs/<run_id>/ranges/<phase>/<i>.json`
//! ([`RangeResult`]); the phase's reducer reads them all and writes the phase receipt,
//! naming the range of any child that failed.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backup::{BackupMetadata, Shard};
use crate::error::{Error, ErrorKind, Result};
use crate::objects::{get_json, put_json};
use crate::s3uri::{KeyRange, S3Uri};
use crate::stage::Phase;
use crate::store::ReceiptStore;

/// One range of the plan: the item a Distributed Map hands a child.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanItem {
    pub index: u32,
    pub range: KeyRange,
    /// The state archives restore's child stages for this range, in key order.
    pub shards: Vec<Shard>,
}

/// Where a run's plan is and how many ranges it has (in the run context).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRef {
    pub bucket: String,
    pub key: String,
    pub ranges: u32,
}

impl PlanRef {
    /// More than one range: the heavy phases fan out.
    pub fn fans_out(&self) -> bool {
        self.ranges > 1
    }
}

/// The objects one range holds at most (the profile's `objects_per_range` by default):
/// what one child stages, checks or copies. A child's share of S3's write floor (3,000
/// PUT/s per run over a Map of 64) is ~47 objects a second, so 20,000 objects take ~7
/// minutes: one invocation, or two when S3 slows the pace (a writing child goes on from
/// its [`Continuation`]); validate's and parity-report's children read them in one
/// (docs/limits.md).
pub const OBJECTS_PER_RANGE: u64 = 20_000;

/// The shards one range holds at most. A child's input carries its range's shards, and
/// Step Functions holds a state's input to 256 KiB: a shard is ~250 bytes as JSON, up to
/// ~2.2 KiB with two keys of S3's full 1,024 bytes, so 64 stay under ~141 KiB at worst.
pub const SHARDS_PER_RANGE: usize = 64;

/// The plan of a backup: consecutive shards grouped into ranges of at most
/// `objects_per_range` objects and [`SHARDS_PER_RANGE`] shards (v1: one range covering
/// every key). A shard that does not say how many objects it holds, or holds more, is a
/// range of its own.
pub fn items(meta: &BackupMetadata, objects_per_range: u64) -> Vec<PlanItem> {
    let mut groups: Vec<(Vec<Shard>, u64)> = Vec::new();
    for shard in meta.shards() {
        let objects = shard.objects.unwrap_or(u64::MAX);
        match groups.last_mut() {
            Some((shards, total))
                if total.saturating_add(objects) <= objects_per_range
                    && shards.len() < SHARDS_PER_RANGE =>
            {
                *total += objects;
                shards.push(shard);
            }
            _ => groups.push((vec![shard], objects)),
        }
    }
    let last = groups.len().saturating_sub(1);
    let mut after: Option<String> = None;
    groups
        .into_iter()
        .enumerate()
        .map(|(i, (shards, _))| {
            let last_key = shards.last().and_then(|s| s.last_key.clone());
            let item = PlanItem {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                range: KeyRange {
                    after: after.clone(),
                    through: if i == last { None } else { last_key.clone() },
                },
                shards,
            };
            after = last_key;
            item
        })
        .collect()
}

/// Writes the plan of `meta` for `run_id` (a re-run writes the same plan: it depends on
/// the backup only) and returns where it is.
pub async fn write(
    store: &ReceiptStore,
    run_id: &str,
    meta: &BackupMetadata,
    objects_per_range: u64,
) -> Result<PlanRef> {
    let uri = plan_uri(store, run_id)?;
    let items = items(meta, objects_per_range);
    put_json(store.s3(), &uri, &items).await?;
    Ok(PlanRef {
        bucket: uri.bucket,
        key: uri.key,
        ranges: u32::try_from(items.len()).unwrap_or(u32::MAX),
    })
}

pub fn plan_uri(store: &ReceiptStore, run_id: &str) -> Result<S3Uri> {
    Ok(store.run_dir(run_id)?.join("plan.json")?)
}

/// How a phase's invocation takes part in the run: the whole phase, its preparation
/// before the fan-out, one range's child, or the reducer after it.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Whole,
    Prepare,
    Range(PlanItem),
    Reduce(Reduce),
}

/// What the state machine hands a phase's reducer: when the phase began (its receipt's
/// clock runs from there) and the Map's error when it failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reduce {
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub map_error: Option<serde_json::Value>,
}

/// The step a request names: `range` for a child, `reduce` for the reducer, otherwise
/// preparation when the plan fans out and the whole phase when it does not.
pub fn step(
    plan: Option<&PlanRef>,
    range: Option<&PlanItem>,
    reduce: Option<&Reduce>,
) -> Result<Step> {
    match (range, reduce) {
        (Some(_), Some(_)) => Err(Error::input(
            "range and reduce: a request is one range's child or the reducer, not both",
        )),
        (Some(item), None) => Ok(Step::Range(item.clone())),
        (None, Some(reduce)) => Ok(Step::Reduce(reduce.clone())),
        (None, None) if plan.is_some_and(PlanRef::fans_out) => Ok(Step::Prepare),
        (None, None) => Ok(Step::Whole),
    }
}

/// The passes one range's child may take before its phase fails: each pass is one
/// invocation and ~7 events of the child execution's history, and must make progress.
pub const MAX_RANGE_PASSES: u32 = 100;

/// Where a range's child that stopped at its invocation's deadline left off. The child
/// answers it to the Map, whose item processor invokes the child again with it (the
/// request's `continuation`) until the child answers none: no invocation has to do a
/// range's work in one go, at any pace S3 sets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Continuation {
    /// The passes this range's child has taken so far (1 after the first).
    pub pass: u32,
    /// The phase's own cursor (restore: the shards staged and the files of the next;
    /// promote: the parity before and what was copied).
    pub cursor: serde_json::Value,
}

/// How one pass of a range's child ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RangePass<D, C> {
    /// The range is done: the partial result's details.
    Done(D),
    /// The deadline came first: the phase's cursor, and how much this pass did (a pass
    /// that did nothing cannot end, and fails its phase).
    Stopped { cursor: C, progress: u64 },
}

/// How a range's child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RangeStatus {
    Success,
    Failed,
}

/// A child's partial result: `ranges/<phase>/<index>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RangeResult {
    pub run_id: String,
    pub phase: Phase,
    pub index: u32,
    pub range: KeyRange,
    /// The execution whose child wrote it: a reducer ignores another execution's.
    pub execution_arn: Option<String>,
    pub status: RangeStatus,
    /// The error's name and message, when it failed.
    pub error: Option<String>,
    pub message: Option<String>,
    pub attempt: u32,
    /// The invocations the range took: more than one when a pass stopped at its
    /// deadline and the next went on from its [`Continuation`].
    #[serde(default = "one_pass")]
    pub passes: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub details: serde_json::Value,
}

fn one_pass() -> u32 {
    1
}

impl RangeResult {
    pub fn details<D: DeserializeOwned>(&self) -> Result<D> {
        serde_json::from_value(self.details.clone()).map_err(|e| {
            Error::internal(format!(
                "{} range {} partial result: {e}",
                self.phase, self.index
            ))
        })
    }
}

pub fn range_uri(store: &ReceiptStore, run_id: &str, phase: Phase, index: u32) -> Result<S3Uri> {
    Ok(store
        .run_dir(run_id)?
        .join(&format!("ranges/{phase}/{index:05}.json"))?)
}

/// Where a phase's preparation keeps what its reducer needs (`ranges/<phase>/prepared.json`).
pub fn prepared_uri(store: &ReceiptStore, run_id: &str, phase: Phase) -> Result<S3Uri> {
    Ok(store
        .run_dir(run_id)?
        .join(&format!("ranges/{phase}/prepared.json"))?)
}

/// A range's partial file of differences, beside its result.
pub fn range_file_uri(
    store: &ReceiptStore,
    run_id: &str,
    phase: Phase,
    index: u32,
    name: &str,
) -> Result<S3Uri> {
    Ok(store
        .run_dir(run_id)?
        .join(&format!("ranges/{phase}/{index:05}.{name}"))?)
}

pub async fn put_result(store: &ReceiptStore, result: &RangeResult) -> Result<()> {
    let uri = range_uri(store, &result.run_id, result.phase, result.index)?;
    put_json(store.s3(), &uri, result).await
}

/// Every range's result of `phase` in this execution, in range order; a range without
/// one (its child never wrote it, or an earlier execution's stands) is `None`.
pub async fn results(
    store: &ReceiptStore,
    run_id: &str,
    phase: Phase,
    ranges: u32,
    execution_arn: Option<&str>,
) -> Result<Vec<(u32, Option<RangeResult>)>> {
    let mut found = Vec::with_capacity(ranges as usize);
    for index in 0..ranges {
        let uri = range_uri(store, run_id, phase, index)?;
        let result = get_json::<RangeResult>(store.s3(), &uri)
            .await?
            .filter(|r| r.execution_arn.as_deref() == execution_arn);
        found.push((index, result));
    }
    Ok(found)
}

/// The reducer's verdict on the children: every range succeeded (their results, in
/// order), or the error naming each range that failed or left no result, of the first
/// failed child's kind (a Map's own error when no child says more).
pub fn all_succeeded(
    phase: Phase,
    results: Vec<(u32, Option<RangeResult>)>,
    ranges: &[KeyRange],
    map_error: Option<&serde_json::Value>,
) -> Result<Vec<RangeResult>> {
    let mut failed = Vec::new();
    let mut kind = None;
    let mut done = Vec::new();
    for (index, result) in results {
        let range = ranges
            .get(index as usize)
            .map(ToString::to_string)
            .unwrap_or_default();
        match result {
            Some(r) if r.status == RangeStatus::Success => done.push(r),
            Some(r) => {
                kind = kind.or_else(|| r.error.as_deref().and_then(ErrorKind::from_name));
                failed.push(format!(
                    "range {index} {range} failed after {} attempt(s): {}",
                    r.attempt,
                    r.message.as_deref().unwrap_or("no message")
                ));
            }
            None => failed.push(format!("range {index} {range} left no result")),
        }
    }
    if failed.is_empty() && map_error.is_none() {
        return Ok(done);
    }
    let map_said = map_error.map(|e| {
        format!(
            "the Map failed with {}",
            e.get("Error")
                .and_then(|v| v.as_str())
                .unwrap_or("an error")
        )
    });
    let kind = kind
        .or_else(|| {
            map_error
                .and_then(|e| e.get("Error"))
                .and_then(|v| v.as_str())
                .and_then(ErrorKind::from_name)
        })
        .unwrap_or(ErrorKind::ServiceError);
    let mut parts = failed;
    parts.extend(map_said);
    Err(Error::new(kind, format!("{phase}: {}", parts.join("; "))))
}

/// The key ranges of the plan at `plan` (the reducer names them).
pub async fn ranges(s3: &aws_sdk_s3::Client, plan: &PlanRef) -> Result<Vec<KeyRange>> {
    let uri = S3Uri {
        bucket: plan.bucket.clone(),
        key: plan.key.clone(),
    };
    let items: Vec<PlanItem> = get_json(s3, &uri)
        .await?
        .ok_or_else(|| Error::internal(format!("the run's plan {uri} is gone")))?;
    Ok(items.into_iter().map(|i| i.range).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_key_once() {
        let range = |after: Option<&str>, through: Option<&str>| KeyRange {
            after: after.map(str::to_owned),
            through: through.map(str::to_owned),
        };
        let ranges = [
            range(None, Some("b/2")),
            range(Some("b/2"), Some("d")),
            range(Some("d"), None),
        ];
        for key in ["", "a", "b/2", "b/2x", "b/3", "c", "d", "d/0", "zzz", "é"] {
            let holding = ranges.iter().filter(|r| r.contains(key)).count();
            assert_eq!(holding, 1, "{key}");
        }
        assert!(ranges[0].past("b/3") && !ranges[0].past("b/2"));
        assert!(ranges[1].before("b/2") && !ranges[1].before("b/20"));
        assert_eq!(ranges[1].to_string(), "(\"b/2\", \"d\"]");
        assert_eq!(ranges[2].to_string(), "(\"d\", end)");
        assert!(KeyRange::all().is_all() && KeyRange::all().contains("x"));
    }

    fn meta(objects: &[u64]) -> BackupMetadata {
        let shards: Vec<serde_json::Value> = objects
            .iter()
            .enumerate()
            .map(|(i, n)| {
                serde_json::json!({"name": format!("state-{i:04}.tar.zst"), "sha256": "0".repeat(64),
                    "size": 1, "first_key": format!("k{i:04}a"), "last_key": format!("k{i:04}z"),
                    "objects": n})
            })
            .collect();
        serde_json::from_value(serde_json::json!({"format": "drpilot-backup/v2",
            "backup_id": "b", "created_at": "2026-01-01T00:00:00Z", "source": {},
            "artifacts": {}, "shards": shards}))
        .unwrap()
    }

    #[test]
    fn shards_are_grouped_into_ranges_of_bounded_objects() {
        // 2,000 one-object shards, 50 objects a range: 40 ranges.
        let grouped = items(&meta(&[1; 2000]), 50);
        assert_eq!(grouped.len(), 40);
        assert!(grouped.iter().all(|i| i.shards.len() == 50));
        assert_eq!(grouped[0].range.after, None);
        assert_eq!(grouped[0].range.through.as_deref(), Some("k0049z"));
        assert_eq!(grouped[1].range.after.as_deref(), Some("k0049z"));
        assert_eq!(grouped[39].range.through, None);
        // However small the shards, a range holds at most 64 (its child's input).
        let capped = items(&meta(&[1; 2000]), 20_000);
        assert_eq!(capped.len(), 2000usize.div_ceil(SHARDS_PER_RANGE));
        assert!(capped.iter().all(|i| i.shards.len() <= SHARDS_PER_RANGE));
        // A shard over the bound is a range of its own; the rest fill up around it.
        let sizes: Vec<usize> = items(&meta(&[60, 50, 500, 10, 10]), 100)
            .iter()
            .map(|i| i.shards.len())
            .collect();
        assert_eq!(sizes, [1, 1, 1, 2]);
    }
}
