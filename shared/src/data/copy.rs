//! The server-side copy engine promote and failback share: a stream of changes (copy
//! this object there, delete that one) applied at most `concurrency` at once while the
//! producer (a merge of listings) goes on. Objects are copied with CopyObject up to
//! `multipart_threshold` and with parallel UploadPartCopy ranges above it, keeping tags
//! (the stored SHA-256) and metadata; no byte passes through the function.

use std::sync::Arc;

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, TaggingDirective};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::budget::RequestBudget;
use crate::error::{Error, Result};
use crate::objects::{abort_multipart, delete, object_size, part_size};
use crate::s3uri::S3Uri;

/// Copy sizing: CopyObject up to `multipart_threshold` (S3's limit is 5 GiB), a
/// multipart copy in `part_size` ranges above it.
#[derive(Clone, Copy, Debug)]
pub struct CopyTuning {
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub concurrency: usize,
}

impl Default for CopyTuning {
    fn default() -> Self {
        Self {
            multipart_threshold: 5 << 30,
            part_size: 8 << 20,
            concurrency: 16,
        }
    }
}

/// What [`apply_changes`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CopyStats {
    pub copied: u64,
    pub bytes: u64,
    pub deleted: u64,
}

impl std::ops::Add for CopyStats {
    type Output = Self;

    /// What two passes did together.
    fn add(self, other: Self) -> Self {
        Self {
            copied: self.copied + other.copied,
            bytes: self.bytes + other.bytes,
            deleted: self.deleted + other.deleted,
        }
    }
}

/// One change to make a destination agree with a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Copy `from` to `to`; `size` as listed, or `None` to ask S3 (a listing that did
    /// not say).
    Copy {
        from: S3Uri,
        to: S3Uri,
        size: Option<u64>,
    },
    Delete(S3Uri),
}

/// Capacity of the channel between a producer of changes and [`apply_changes`].
pub const CHANGE_BUFFER: usize = 1024;

/// Changes a journal file holds (~100 bytes each): one write per this many changes.
pub const JOURNAL_BATCH: usize = 1000;

/// One change the copy engine made, as the journal records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct JournalEntry {
    /// `copy` or `delete`.
    pub action: String,
    /// The destination written or deleted.
    pub key: String,
    /// A copy's size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// The record of what a promotion or a failback changed, written as it goes: every
/// [`JOURNAL_BATCH`] completed changes become one JSON-lines file
/// `<dir><name>-<nnnnn>.jsonl`, written once, and the rest when the engine stops — on
/// success and on failure alike. So a promotion that fails midway leaves an exact list of
/// what it changed. `name` is unique per invocation (its start time and scope), so a
/// retry writes files of its own beside the earlier ones.
pub struct Journal {
    s3: aws_sdk_s3::Client,
    dir: S3Uri,
    name: String,
    files: u32,
    pending: Vec<JournalEntry>,
}

impl Journal {
    pub fn new(s3: aws_sdk_s3::Client, dir: S3Uri, name: String) -> Self {
        Self {
            s3,
            dir: dir.as_prefix(),
            name,
            files: 0,
            pending: Vec::new(),
        }
    }

    /// How many journal files it wrote.
    pub fn files(&self) -> u32 {
        self.files
    }

    async fn flush_full(&mut self) -> Result<()> {
        while self.pending.len() >= JOURNAL_BATCH {
            let rest = self.pending.split_off(JOURNAL_BATCH);
            let batch = std::mem::replace(&mut self.pending, rest);
            self.write(&batch).await?;
        }
        Ok(())
    }

    /// Writes what is left.
    pub async fn finish(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            self.write(&batch).await?;
        }
        Ok(())
    }

    async fn write(&mut self, batch: &[JournalEntry]) -> Result<()> {
        let mut body = Vec::with_capacity(batch.len() * 100);
        for entry in batch {
            serde_json::to_writer(&mut body, entry)
                .map_err(|e| Error::internal(format!("encoding the journal: {e}")))?;
            body.push(b'\n');
        }
        let uri = self
            .dir
            .join(&format!("{}-{:05}.jsonl", self.name, self.files))
            .map_err(|e| Error::internal(format!("journal location: {e}")))?;
        self.s3
            .put_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .if_none_match("*")
            .content_type("application/x-ndjson")
            .body(body.into())
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("PutObject {uri}"), e))?;
        self.files += 1;
        Ok(())
    }
}

/// Applies every change received until the sender is dropped, `tuning.concurrency` at
/// once; waits for all of them and returns the first error, if any. Each completed
/// change goes to `journal`, which is written out before this returns, error or not.
pub async fn apply_changes(
    s3: &aws_sdk_s3::Client,
    changes: mpsc::Receiver<Change>,
    tuning: CopyTuning,
    budget: &RequestBudget,
    mut journal: Option<&mut Journal>,
) -> Result<CopyStats> {
    let applied = apply_all(s3, changes, tuning, budget, journal.as_deref_mut()).await;
    let written = match journal {
        Some(journal) => journal.finish().await,
        None => Ok(()),
    };
    let stats = applied?;
    written?;
    Ok(stats)
}

async fn apply_all(
    s3: &aws_sdk_s3::Client,
    mut changes: mpsc::Receiver<Change>,
    tuning: CopyTuning,
    budget: &RequestBudget,
    mut journal: Option<&mut Journal>,
) -> Result<CopyStats> {
    let permits = Arc::new(Semaphore::new(tuning.concurrency.max(1)));
    let mut tasks: JoinSet<Result<(CopyStats, JournalEntry)>> = JoinSet::new();
    let mut stats = CopyStats::default();
    let mut first_error = None;
    while let Some(change) = changes.recv().await {
        if let Err(fenced) = budget.check_fence().await {
            // The producer sees the channel close and stops; what is in flight ends.
            first_error.get_or_insert(fenced);
            break;
        }
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::internal("copy semaphore closed"))?;
        let s3 = s3.clone();
        let budget = budget.clone();
        tasks.spawn(async move {
            let _permit = permit;
            apply(&s3, change, tuning, &budget).await
        });
        while let Some(done) = tasks.try_join_next() {
            absorb(done, &mut stats, &mut first_error, journal.as_deref_mut());
        }
        if let Some(journal) = journal.as_deref_mut() {
            if let Err(e) = journal.flush_full().await {
                first_error.get_or_insert(e);
                break;
            }
        }
    }
    drop(changes);
    while let Some(done) = tasks.join_next().await {
        absorb(done, &mut stats, &mut first_error, journal.as_deref_mut());
    }
    first_error.map_or(Ok(stats), Err)
}

async fn apply(
    s3: &aws_sdk_s3::Client,
    change: Change,
    tuning: CopyTuning,
    budget: &RequestBudget,
) -> Result<(CopyStats, JournalEntry)> {
    match change {
        Change::Delete(at) => {
            budget.acquire().await;
            delete(s3, &at).await?;
            Ok((
                CopyStats {
                    deleted: 1,
                    ..CopyStats::default()
                },
                JournalEntry {
                    action: "delete".into(),
                    key: at.key,
                    bytes: None,
                },
            ))
        }
        Change::Copy { from, to, size } => {
            // A listing without the size (a checksum difference) asks S3; an empty
            // object, asked again, is still 0.
            let size = match size {
                Some(size) if size > 0 => size,
                _ => object_size(s3, &from).await?,
            };
            copy(s3, &from, &to, size, tuning, budget).await?;
            Ok((
                CopyStats {
                    copied: 1,
                    bytes: size,
                    deleted: 0,
                },
                JournalEntry {
                    action: "copy".into(),
                    key: to.key,
                    bytes: Some(size),
                },
            ))
        }
    }
}

fn absorb(
    done: std::result::Result<Result<(CopyStats, JournalEntry)>, tokio::task::JoinError>,
    stats: &mut CopyStats,
    first_error: &mut Option<Error>,
    journal: Option<&mut Journal>,
) {
    match done {
        Ok(Ok((one, entry))) => {
            *stats = *stats + one;
            if let Some(journal) = journal {
                journal.pending.push(entry);
            }
        }
        Ok(Err(err)) => {
            first_error.get_or_insert(err);
        }
        Err(e) => {
            first_error.get_or_insert(Error::from(e));
        }
    }
}

/// Characters `x-amz-copy-source` takes as they are: RFC 3986's unreserved set and the
/// key's `/` separators; everything else in a key (any UTF-8) is percent-encoded.
const COPY_SOURCE_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// `bucket/key` for `x-amz-copy-source`, percent-encoded (keys may hold any UTF-8).
fn copy_source(uri: &S3Uri) -> String {
    format!(
        "{}/{}",
        uri.bucket,
        percent_encoding::utf8_percent_encode(&uri.key, COPY_SOURCE_ENCODE)
    )
}

/// UploadPartCopy requests in flight for one large object.
const PART_COPY_CONCURRENCY: usize = 8;

/// Server-side copy keeping tags (the stored SHA-256) and metadata: CopyObject up to the
/// threshold, UploadPartCopy ranges above it.
pub async fn copy(
    s3: &aws_sdk_s3::Client,
    from: &S3Uri,
    to: &S3Uri,
    size: u64,
    tuning: CopyTuning,
    budget: &RequestBudget,
) -> Result<()> {
    let source = copy_source(from);
    if size <= tuning.multipart_threshold {
        budget
            .send(|| {
                s3.copy_object()
                    .bucket(&to.bucket)
                    .key(&to.key)
                    .copy_source(&source)
                    .tagging_directive(TaggingDirective::Copy)
                    .send()
            })
            .await
            .map_err(|e| Error::from_sdk(&format!("CopyObject {from} -> {to}"), e))?;
        return Ok(());
    }
    copy_in_parts(
        s3,
        from,
        to,
        size,
        part_size(size, tuning.part_size),
        budget,
    )
    .await
}

/// A multipart copy: UploadPartCopy ranges of `part_size`, in parallel, completed in
/// order; aborted if any part fails. What CopyObject would have kept is carried over by
/// hand (UploadPartCopy copies bytes only): the source's tags, user metadata and content
/// headers; every part names the source's ETag (`x-amz-copy-source-if-match`), so an
/// object replaced mid-copy fails the copy instead of splicing two versions.
async fn copy_in_parts(
    s3: &aws_sdk_s3::Client,
    from: &S3Uri,
    to: &S3Uri,
    size: u64,
    part_size: u64,
    budget: &RequestBudget,
) -> Result<()> {
    let head = s3
        .head_object()
        .bucket(&from.bucket)
        .key(&from.key)
        .send()
        .await
        .map_err(|e| Error::from_sdk(&format!("HeadObject {from}"), e))?;
    let etag = head
        .e_tag()
        .ok_or_else(|| Error::retryable(format!("HeadObject {from} returned no ETag")))?
        .to_owned();
    let tags = s3
        .get_object_tagging()
        .bucket(&from.bucket)
        .key(&from.key)
        .send()
        .await
        .map_err(|e| Error::from_sdk(&format!("GetObjectTagging {from}"), e))?;
    let upload = s3
        .create_multipart_upload()
        .bucket(&to.bucket)
        .key(&to.key)
        .set_tagging(tagging_header(tags.tag_set()))
        .set_metadata(head.metadata().cloned())
        .set_content_type(head.content_type().map(str::to_owned))
        .set_content_encoding(head.content_encoding().map(str::to_owned))
        .set_content_disposition(head.content_disposition().map(str::to_owned))
        .set_content_language(head.content_language().map(str::to_owned))
        .set_cache_control(head.cache_control().map(str::to_owned))
        .send()
        .await
        .map_err(|e| Error::from_sdk(&format!("CreateMultipartUpload {to}"), e))?;
    let upload_id = upload
        .upload_id
        .ok_or_else(|| Error::retryable("CreateMultipartUpload returned no upload id"))?;
    // Parts in parallel (they are independent server-side copies), completed in order.
    let ranges: Vec<(i32, u64, u64)> = (0..size.div_ceil(part_size))
        .map(|i| {
            let start = i * part_size;
            let end = (start + part_size).min(size) - 1;
            (i32::try_from(i + 1).unwrap_or(i32::MAX), start, end)
        })
        .collect();
    let result: Result<()> = async {
        let parts = copy_parts(s3, from, &etag, to, &upload_id, ranges, budget).await?;
        s3.complete_multipart_upload()
            .bucket(&to.bucket)
            .key(&to.key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("CompleteMultipartUpload {to}"), e))?;
        Ok(())
    }
    .await;
    if result.is_err() {
        abort_multipart(s3, &to.bucket, &to.key, &upload_id).await;
    }
    result
}

/// The `x-amz-tagging` header for `tags`: URL-query encoded, as S3 requires (a tag may
/// hold spaces, `+ - = . _ : / @`, which a bare `k=v&k=v` join would corrupt).
fn tagging_header(tags: &[aws_sdk_s3::types::Tag]) -> Option<String> {
    if tags.is_empty() {
        return None;
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    for tag in tags {
        query.append_pair(tag.key(), tag.value());
    }
    Some(query.finish())
}

/// The UploadPartCopy requests of one multipart copy, `PART_COPY_CONCURRENCY` at a time;
/// the completed parts in order. Each part is a write a fenced run must not start, and
/// each names the source's ETag.
async fn copy_parts(
    s3: &aws_sdk_s3::Client,
    from: &S3Uri,
    etag: &str,
    to: &S3Uri,
    upload_id: &str,
    ranges: Vec<(i32, u64, u64)>,
    budget: &RequestBudget,
) -> Result<Vec<CompletedPart>> {
    let source = copy_source(from);
    futures::stream::iter(ranges)
        .map(|(number, start, end)| {
            let source = &source;
            async move {
                budget.check_fence().await?;
                let out = budget
                    .send(|| {
                        s3.upload_part_copy()
                            .bucket(&to.bucket)
                            .key(&to.key)
                            .upload_id(upload_id)
                            .part_number(number)
                            .copy_source(source)
                            .copy_source_if_match(etag)
                            .copy_source_range(format!("bytes={start}-{end}"))
                            .send()
                    })
                    .await
                    .map_err(|e| {
                        Error::from_sdk(&format!("UploadPartCopy {number} {from} -> {to}"), e)
                    })?;
                Ok::<_, Error>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.copy_part_result.and_then(|r| r.e_tag))
                        .build(),
                )
            }
        })
        .buffered(PART_COPY_CONCURRENCY)
        .try_collect()
        .await
}
