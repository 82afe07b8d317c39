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

use crate::budget::PutBudget;
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

/// Applies every change received until the sender is dropped, `tuning.concurrency` at
/// once; waits for all of them and returns the first error, if any.
pub async fn apply_changes(
    s3: &aws_sdk_s3::Client,
    mut changes: mpsc::Receiver<Change>,
    tuning: CopyTuning,
    budget: &PutBudget,
) -> Result<CopyStats> {
    let permits = Arc::new(Semaphore::new(tuning.concurrency.max(1)));
    let mut tasks: JoinSet<Result<CopyStats>> = JoinSet::new();
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
            absorb(done, &mut stats, &mut first_error);
        }
    }
    drop(changes);
    while let Some(done) = tasks.join_next().await {
        absorb(done, &mut stats, &mut first_error);
    }
    first_error.map_or(Ok(stats), Err)
}

async fn apply(
    s3: &aws_sdk_s3::Client,
    change: Change,
    tuning: CopyTuning,
    budget: &PutBudget,
) -> Result<CopyStats> {
    match change {
        Change::Delete(at) => {
            budget.acquire().await;
            delete(s3, &at).await?;
            Ok(CopyStats {
                deleted: 1,
                ..CopyStats::default()
            })
        }
        Change::Copy { from, to, size } => {
            // A listing without the size (a checksum difference) asks S3; an empty
            // object, asked again, is still 0.
            let size = match size {
                Some(size) if size > 0 => size,
                _ => object_size(s3, &from).await?,
            };
            copy(s3, &from, &to, size, tuning, budget).await?;
            Ok(CopyStats {
                copied: 1,
                bytes: size,
                deleted: 0,
            })
        }
    }
}

fn absorb(
    done: std::result::Result<Result<CopyStats>, tokio::task::JoinError>,
    stats: &mut CopyStats,
    first_error: &mut Option<Error>,
) {
    match done {
        Ok(Ok(one)) => {
            stats.copied += one.copied;
            stats.bytes += one.bytes;
            stats.deleted += one.deleted;
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
    budget: &PutBudget,
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
    budget: &PutBudget,
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
    budget: &PutBudget,
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
