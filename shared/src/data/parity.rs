//! Parity: how two S3 prefixes differ. Counts each side, objects only on one side, size
//! differences and checksum differences, and `delta`, their sum (0 means identical).
//! One streaming merge of the two sorted listings (listed concurrently), so memory stays
//! flat however many objects there are; each difference is handed to the caller as it is
//! found instead of being collected.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::listing::{list_sorted_in, Joined, MergeJoin, ObjectInfo, Sorted};
use crate::objects::stored_sha256;
use crate::s3uri::{KeyRange, S3Uri};
use crate::stage::Phase;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParityCounts {
    pub left_objects: u64,
    pub right_objects: u64,
    pub left_bytes: u64,
    pub right_bytes: u64,
    pub identical: u64,
    pub only_left: u64,
    pub only_right: u64,
    pub size_differs: u64,
    pub checksum_differs: u64,
    /// `only_left + only_right + size_differs + checksum_differs`.
    pub delta: u64,
}

impl Counts for ParityCounts {
    fn add(&mut self, other: &Self) {
        self.left_objects += other.left_objects;
        self.right_objects += other.right_objects;
        self.left_bytes += other.left_bytes;
        self.right_bytes += other.right_bytes;
        self.identical += other.identical;
        self.only_left += other.only_left;
        self.only_right += other.only_right;
        self.size_differs += other.size_differs;
        self.checksum_differs += other.checksum_differs;
        self.delta += other.delta;
    }
}

/// One way the two sides differ, as written to the JSON-lines report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    OnlyLeft {
        key: String,
        size: u64,
    },
    OnlyRight {
        key: String,
        size: u64,
    },
    Size {
        key: String,
        left_size: u64,
        right_size: u64,
    },
    Checksum {
        key: String,
        left: String,
        right: String,
    },
}

impl Difference {
    pub fn key(&self) -> &str {
        match self {
            Self::OnlyLeft { key, .. }
            | Self::OnlyRight { key, .. }
            | Self::Size { key, .. }
            | Self::Checksum { key, .. } => key,
        }
    }
}

/// Where to look up whole-file SHA-256s when ETags cannot decide (a multipart ETag on
/// either side says nothing about the content).
pub struct ChecksumLookup<'a> {
    pub s3: &'a aws_sdk_s3::Client,
    pub left: &'a S3Uri,
    pub right: &'a S3Uri,
}

/// What a merge step means for parity: identical, or the difference.
pub enum Verdict {
    Identical(ObjectInfo),
    Differs(Difference),
}

/// Compares two S3 prefixes. `exclude_left` lists relative key prefixes of the left side
/// that are not part of the comparison (e.g. the staged `_control-plane/`).
pub async fn compare_prefixes(
    s3: &aws_sdk_s3::Client,
    left: &S3Uri,
    right: &S3Uri,
    exclude_left: Vec<String>,
    on_step: impl AsyncFnMut(Verdict) -> Result<()>,
) -> Result<ParityCounts> {
    compare_ranges(s3, left, right, exclude_left, &KeyRange::all(), on_step).await
}

/// [`compare_prefixes`] of the relative keys in `range` only (a plan's range child).
pub async fn compare_ranges(
    s3: &aws_sdk_s3::Client,
    left: &S3Uri,
    right: &S3Uri,
    exclude_left: Vec<String>,
    range: &KeyRange,
    on_step: impl AsyncFnMut(Verdict) -> Result<()>,
) -> Result<ParityCounts> {
    let (left_rx, left_task) = list_sorted_in(s3.clone(), left, exclude_left, range.clone());
    let (right_rx, right_task) = list_sorted_in(s3.clone(), right, Vec::new(), range.clone());
    let lookup = ChecksumLookup { s3, left, right };
    let result = compare_streams(left_rx, right_rx, Some(&lookup), on_step).await;
    left_task.abort();
    right_task.abort();
    result
}

/// The engine: merge-joins two sorted object streams and judges each step.
pub async fn compare_streams(
    left: Sorted<ObjectInfo>,
    right: Sorted<ObjectInfo>,
    lookup: Option<&ChecksumLookup<'_>>,
    mut on_step: impl AsyncFnMut(Verdict) -> Result<()>,
) -> Result<ParityCounts> {
    let mut counts = ParityCounts::default();
    let mut merge = MergeJoin::new(left, right);
    while let Some(joined) = merge.next().await? {
        let verdict = match joined {
            Joined::OnlyLeft(l) => {
                counts.left_objects += 1;
                counts.left_bytes += l.size;
                counts.only_left += 1;
                Verdict::Differs(Difference::OnlyLeft {
                    key: l.key,
                    size: l.size,
                })
            }
            Joined::OnlyRight(r) => {
                counts.right_objects += 1;
                counts.right_bytes += r.size;
                counts.only_right += 1;
                Verdict::Differs(Difference::OnlyRight {
                    key: r.key,
                    size: r.size,
                })
            }
            Joined::Both(l, r) => {
                counts.left_objects += 1;
                counts.right_objects += 1;
                counts.left_bytes += l.size;
                counts.right_bytes += r.size;
                if l.size != r.size {
                    counts.size_differs += 1;
                    Verdict::Differs(Difference::Size {
                        key: l.key,
                        left_size: l.size,
                        right_size: r.size,
                    })
                } else if same_content(&l, &r, lookup).await? {
                    counts.identical += 1;
                    Verdict::Identical(l)
                } else {
                    counts.checksum_differs += 1;
                    Verdict::Differs(Difference::Checksum {
                        key: l.key,
                        left: l.etag,
                        right: r.etag,
                    })
                }
            }
        };
        on_step(verdict).await?;
    }
    counts.delta =
        counts.only_left + counts.only_right + counts.size_differs + counts.checksum_differs;
    Ok(counts)
}

/// Equal ETags prove equal content. Different ETags prove nothing by themselves: an
/// ETag is the MD5 of the content only for a single-part upload without SSE-KMS (or
/// SSE-C), and a listing says neither how an object was uploaded nor how it is
/// encrypted: under SSE-KMS two identical objects have different ETags. So the stored
/// whole-file SHA-256s decide; where either side has none, the ETags' difference is
/// taken as a content difference (for promote, a redundant copy; for parity, a
/// difference worth a look), never as proof of equality.
async fn same_content(
    l: &ObjectInfo,
    r: &ObjectInfo,
    lookup: Option<&ChecksumLookup<'_>>,
) -> Result<bool> {
    if l.etag == r.etag {
        return Ok(true);
    }
    let Some(lookup) = lookup else {
        return Ok(false);
    };
    let left = lookup.left.as_prefix().join(&l.key).ok();
    let right = lookup.right.as_prefix().join(&r.key).ok();
    let (Some(left), Some(right)) = (left, right) else {
        return Ok(false);
    };
    let (a, b) = tokio::try_join!(
        stored_sha256(lookup.s3, &left),
        stored_sha256(lookup.s3, &right)
    )?;
    Ok(matches!((a, b), (Some(a), Some(b)) if a == b))
}

/// Collects differences as JSON lines in a temporary file (bounded by disk, not memory),
/// at most a limit of them ([`MAX_LOGGED_DIFFERENCES`]) while it counts them all, keeps
/// the first few for inline display, and uploads the file as one object.
pub struct DifferenceLog {
    file: std::io::BufWriter<std::fs::File>,
    /// Removed when the log is dropped, uploaded or not.
    path: tempfile::TempPath,
    /// Differences counted.
    count: u64,
    /// Differences written to the file: at most `limit`.
    logged: u64,
    limit: u64,
    first: Vec<serde_json::Value>,
}

/// How many differences receipts and errors show inline.
pub const INLINE_DIFFERENCES: usize = 20;

/// The most differences one log holds (lines of ~100 to ~300 bytes: at most ~30 MB).
/// Logs are evidence, kept under the evidence bucket's lock for years: a first drill into
/// an empty `root/` of 50 M objects would otherwise lock 5 GB of lines saying the same
/// thing. The receipts count every difference; the log holds the first ones.
pub const MAX_LOGGED_DIFFERENCES: u64 = 100_000;

impl DifferenceLog {
    /// A log of at most [`MAX_LOGGED_DIFFERENCES`] lines.
    pub fn new() -> Result<Self> {
        Self::holding(MAX_LOGGED_DIFFERENCES)
    }

    /// A range's child's log: its share of [`MAX_LOGGED_DIFFERENCES`] among `ranges`
    /// (at least what receipts show inline), so the ranges' logs together stay bounded.
    pub fn for_range(ranges: u32) -> Result<Self> {
        let share = MAX_LOGGED_DIFFERENCES / u64::from(ranges.max(1));
        Self::holding(share.max(INLINE_DIFFERENCES as u64))
    }

    fn holding(limit: u64) -> Result<Self> {
        let (file, path) = tempfile::Builder::new()
            .prefix("drpilot-differences-")
            .suffix(".jsonl")
            .tempfile()
            .map_err(|e| crate::Error::retryable(format!("creating the differences file: {e}")))?
            .into_parts();
        Ok(Self {
            file: std::io::BufWriter::new(file),
            path,
            count: 0,
            logged: 0,
            limit,
            first: Vec::new(),
        })
    }

    /// Counts a difference, and logs it while the log has room.
    pub fn push<T: Serialize>(&mut self, difference: &T) -> Result<()> {
        self.count += 1;
        if self.logged >= self.limit {
            return Ok(());
        }
        let value = serde_json::to_value(difference)
            .map_err(|e| crate::Error::internal(format!("encoding a difference: {e}")))?;
        self.log(value)
    }

    fn log(&mut self, value: serde_json::Value) -> Result<()> {
        use std::io::Write;
        serde_json::to_writer(&mut self.file, &value)
            .map_err(|e| crate::Error::retryable(format!("writing differences: {e}")))?;
        self.file
            .write_all(b"\n")
            .map_err(|e| crate::Error::retryable(format!("writing differences: {e}")))?;
        if self.first.len() < INLINE_DIFFERENCES {
            self.first.push(value);
        }
        self.logged += 1;
        Ok(())
    }

    /// Every difference counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The differences the log holds: the first [`Self::count`], up to its limit.
    pub fn logged(&self) -> u64 {
        self.logged
    }

    /// Counts a range's `differences` and appends the lines of its log at `uri` while
    /// this log has room, streamed: the reducer's one log of all the ranges'.
    pub async fn append_from(
        &mut self,
        s3: &aws_sdk_s3::Client,
        uri: &S3Uri,
        differences: u64,
    ) -> Result<()> {
        use tokio::io::AsyncBufReadExt;
        self.count += differences;
        if self.logged >= self.limit {
            return Ok(());
        }
        let (body, _) = crate::objects::open(s3, uri).await?;
        let mut lines = body.into_async_read().lines();
        while let Some(line) = lines
            .next_line()
            .await
            .map_err(|e| crate::Error::retryable(format!("reading {uri}: {e}")))?
        {
            if line.trim().is_empty() {
                continue;
            }
            if self.logged >= self.limit {
                break;
            }
            let value: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| crate::Error::internal(format!("{uri}: not JSON lines: {e}")))?;
            self.log(value)?;
        }
        Ok(())
    }

    pub fn first(&self) -> &[serde_json::Value] {
        &self.first
    }

    /// Uploads the differences to `uri` (even when there are none, so a report always
    /// points at a real object); the temporary file goes with the log.
    pub async fn upload(mut self, s3: &aws_sdk_s3::Client, uri: &S3Uri) -> Result<()> {
        use std::io::Write;
        self.file
            .flush()
            .map_err(|e| crate::Error::retryable(format!("writing differences: {e}")))?;
        let body = aws_sdk_s3::primitives::ByteStream::from_path(&self.path)
            .await
            .map_err(|e| crate::Error::retryable(format!("reading differences: {e}")))?;
        let result = s3
            .put_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .content_type("application/x-ndjson")
            .body(body)
            .send()
            .await;
        result.map_err(|e| crate::Error::from_sdk(&format!("PutObject {uri}"), e))?;
        Ok(())
    }
}

/// Counts of disjoint ranges, which add up to the whole's.
pub trait Counts: Default + Serialize + DeserializeOwned {
    fn add(&mut self, other: &Self);
}

/// What a range's child of validate or parity-report found: its counts, and its
/// differences in a JSON-lines object the reducer appends to the phase's one file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RangeFindings<C> {
    pub counts: C,
    pub differences: u64,
    pub differences_uri: S3Uri,
}

impl<C: Counts> RangeFindings<C> {
    /// A child's findings: its differences uploaded beside its result.
    pub async fn upload(
        s3: &aws_sdk_s3::Client,
        store: &crate::store::ReceiptStore,
        (run_id, phase, index): (&str, Phase, u32),
        counts: C,
        log: DifferenceLog,
    ) -> Result<Self> {
        let differences_uri =
            crate::plan::range_file_uri(store, run_id, phase, index, "differences.jsonl")?;
        let differences = log.count();
        log.upload(s3, &differences_uri).await?;
        Ok(Self {
            counts,
            differences,
            differences_uri,
        })
    }

    /// The reducer's view of the children: their counts added up, and every range's
    /// differences in one log, in range order (streamed, not held).
    pub async fn gather(
        s3: &aws_sdk_s3::Client,
        results: &[crate::plan::RangeResult],
    ) -> Result<(C, DifferenceLog)> {
        let mut counts = C::default();
        let mut log = DifferenceLog::new()?;
        for result in results {
            let found: Self = result.details()?;
            counts.add(&found.counts);
            log.append_from(s3, &found.differences_uri, found.differences)
                .await?;
        }
        Ok((counts, log))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_counts_every_difference_and_holds_its_share() {
        let mut log = DifferenceLog::for_range(40_000).unwrap();
        for i in 0..100 {
            log.push(&serde_json::json!({ "key": i })).unwrap();
        }
        // 100,000 / 40,000 rounds down to 2: a range keeps at least what receipts show.
        assert_eq!(
            (log.count(), log.logged()),
            (100, INLINE_DIFFERENCES as u64)
        );
        assert_eq!(log.first().len(), INLINE_DIFFERENCES);
        let whole = DifferenceLog::new().unwrap();
        assert_eq!(whole.limit, MAX_LOGGED_DIFFERENCES);
        let share = DifferenceLog::for_range(4).unwrap();
        assert_eq!(share.limit, MAX_LOGGED_DIFFERENCES / 4);
    }
}
