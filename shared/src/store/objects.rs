//! Bulk object operations on a prefix, paged so memory stays flat however many objects
//! there are.

use std::io::{self, Read};
use std::pin::Pin;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use base64::Engine;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tracing::warn;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{decode_slice, Error, Result};
use crate::s3uri::S3Uri;

/// Writes `value` as pretty JSON to `uri`.
pub async fn put_json<T: Serialize>(s3: &aws_sdk_s3::Client, uri: &S3Uri, value: &T) -> Result<()> {
    match put_json_if(s3, uri, value, None).await? {
        Conditional::Written => Ok(()),
        Conditional::ConditionFailed => Err(Error::internal(format!(
            "PutObject {uri}: a condition failed on an unconditional write"
        ))),
    }
}

/// What a conditional write or delete must find: no object yet, or the object with this
/// ETag.
#[derive(Clone, Copy, Debug)]
pub enum Precondition<'a> {
    Absent,
    Matches(&'a str),
}

/// How a conditional write or delete ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conditional {
    Written,
    /// The object was not as the precondition said: read it again.
    ConditionFailed,
}

/// Writes `value` as pretty JSON to `uri` if `precondition` holds (always, with `None`).
pub async fn put_json_if<T: Serialize>(
    s3: &aws_sdk_s3::Client,
    uri: &S3Uri,
    value: &T,
    precondition: Option<Precondition<'_>>,
) -> Result<Conditional> {
    let body = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::internal(format!("encoding {uri}: {e}")))?;
    let request = s3
        .put_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .content_type("application/json")
        .body(ByteStream::from(body));
    let request = match precondition {
        None => request,
        Some(Precondition::Absent) => request.if_none_match("*"),
        Some(Precondition::Matches(etag)) => request.if_match(etag),
    };
    match request.send().await {
        Ok(_) => Ok(Conditional::Written),
        Err(err) if precondition.is_some() && precondition_failed(&err) => {
            Ok(Conditional::ConditionFailed)
        }
        // If-Match on an object that is gone answers 404: not what we thought either.
        Err(err)
            if matches!(precondition, Some(Precondition::Matches(_)))
                && err.code() == Some("NoSuchKey") =>
        {
            Ok(Conditional::ConditionFailed)
        }
        Err(err) => Err(Error::from_sdk(&format!("PutObject {uri}"), err)),
    }
}

/// Deletes `uri` (S3 answers success for a key that is not there).
pub async fn delete(s3: &aws_sdk_s3::Client, uri: &S3Uri) -> Result<()> {
    s3.delete_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .send()
        .await
        .map_err(|e| Error::from_sdk(&format!("DeleteObject {uri}"), e))?;
    Ok(())
}

/// Deletes `uri` if its ETag is still `etag`.
pub async fn delete_if_match(
    s3: &aws_sdk_s3::Client,
    uri: &S3Uri,
    etag: &str,
) -> Result<Conditional> {
    let deleted = s3
        .delete_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .if_match(etag)
        .send()
        .await;
    match deleted {
        Ok(_) => Ok(Conditional::Written),
        // If-Match on an object that is gone answers 404: not what we thought either.
        Err(err) if precondition_failed(&err) || err.code() == Some("NoSuchKey") => {
            Ok(Conditional::ConditionFailed)
        }
        Err(err) => Err(Error::from_sdk(&format!("DeleteObject {uri}"), err)),
    }
}

/// Whether S3 refused a conditional request because its condition failed: 412
/// `PreconditionFailed`, or 409 `ConditionalRequestConflict` for a conditional write racing
/// another one on the same key.
pub fn precondition_failed<E: ProvideErrorMetadata>(err: &E) -> bool {
    matches!(
        err.code(),
        Some("PreconditionFailed" | "ConditionalRequestConflict")
    )
}

/// The object at `uri` and its ETag; `None` when there is no such object.
pub async fn get_bytes(s3: &aws_sdk_s3::Client, uri: &S3Uri) -> Result<Option<(Bytes, String)>> {
    let out = match s3
        .get_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .send()
        .await
    {
        Ok(out) => out,
        Err(err) if matches!(err.as_service_error(), Some(GetObjectError::NoSuchKey(_))) => {
            return Ok(None)
        }
        Err(err) => return Err(Error::from_sdk(&format!("GetObject {uri}"), err)),
    };
    let etag = out.e_tag.clone().unwrap_or_default();
    let bytes = out
        .body
        .collect()
        .await
        .map_err(|e| Error::retryable(format!("reading {uri}: {e}")))?
        .into_bytes();
    Ok(Some((bytes, etag)))
}

/// Reads JSON from `uri`; `None` when there is no such object.
pub async fn get_json<T: DeserializeOwned>(
    s3: &aws_sdk_s3::Client,
    uri: &S3Uri,
) -> Result<Option<T>> {
    let Some((bytes, _etag)) = get_bytes(s3, uri).await? else {
        return Ok(None);
    };
    decode_slice(&uri.to_string(), &bytes)
        .map(Some)
        .map_err(|e| {
            Error::integrity(format!("not the expected JSON document: {e}")).with_source(e)
        })
}

/// Aborts a multipart upload, best effort: a failure is only logged, because the caller is
/// already failing (or clearing up), and teardown's prefix delete aborts what is left.
pub async fn abort_multipart(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, upload_id: &str) {
    if let Err(e) = s3
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        warn!(key, error = %aws_sdk_s3::error::DisplayErrorContext(&e), "could not abort multipart upload");
    }
}

/// Uploads every file under `dir` to `dest/<relative path>`, `concurrency` at a time,
/// each streamed from disk. Returns how many files were uploaded.
pub async fn upload_tree(
    s3: &aws_sdk_s3::Client,
    dir: &std::path::Path,
    dest: &S3Uri,
    concurrency: usize,
) -> Result<u64> {
    use futures::{StreamExt, TryStreamExt};
    let dest = dest.as_prefix();
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = std::fs::read_dir(&current)
            .map_err(|e| Error::input(format!("reading {}: {e}", current.display())))?;
        for entry in entries {
            let path = entry
                .map_err(|e| Error::input(format!("reading {}: {e}", current.display())))?
                .path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let count = files.len() as u64;
    futures::stream::iter(files)
        .map(|path| {
            let dest = &dest;
            async move {
                let relative = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy();
                let target = dest.join(&relative)?;
                let body = ByteStream::from_path(&path)
                    .await
                    .map_err(|e| Error::input(format!("reading {}: {e}", path.display())))?;
                s3.put_object()
                    .bucket(&target.bucket)
                    .key(&target.key)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| Error::from_sdk(&format!("PutObject {target}"), e))?;
                Ok::<_, Error>(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<()>()
        .await?;
    Ok(count)
}

/// A ListObjectsV2 page's failure, as the SDK reports it.
pub type ListError = SdkError<ListObjectsV2Error>;

/// The keys that start with a prefix, one ListObjectsV2 page (up to 1,000 keys) at a time,
/// so memory holds one page however many there are ([`key_pages`]).
pub struct KeyPages(
    Pin<Box<dyn Stream<Item = std::result::Result<Vec<String>, ListError>> + Send>>,
);

impl KeyPages {
    /// The next page's keys, `None` after the last. The error is the SDK's, for the caller
    /// to name the listing in its own error type.
    pub async fn next(&mut self) -> Option<std::result::Result<Vec<String>, ListError>> {
        self.0.next().await
    }
}

/// The keys that start with `prefix`'s key, page by page.
pub fn key_pages(s3: &aws_sdk_s3::Client, prefix: &S3Uri) -> KeyPages {
    let pages = s3
        .list_objects_v2()
        .bucket(&prefix.bucket)
        .prefix(&prefix.key)
        .into_paginator()
        .send();
    KeyPages(Box::pin(futures::stream::unfold(
        pages,
        |mut pages| async move {
            let keys = pages.next().await?.map(|page| {
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned))
                    .collect()
            });
            Some((keys, pages))
        },
    )))
}

/// Calls `visit` with each "directory" directly under `prefix` (the common prefixes of a
/// listing with delimiter `/`, as full locations ending in `/`), one page at a time, so
/// memory does not grow with how many there are.
pub async fn for_each_child_prefix(
    s3: &aws_sdk_s3::Client,
    prefix: &S3Uri,
    mut visit: impl AsyncFnMut(S3Uri) -> Result<()>,
) -> Result<()> {
    let prefix = prefix.as_prefix();
    let mut pages = s3
        .list_objects_v2()
        .bucket(&prefix.bucket)
        .prefix(&prefix.key)
        .delimiter("/")
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| Error::from_sdk(&format!("ListObjectsV2 {prefix}"), e))?;
        for key in page.common_prefixes().iter().filter_map(|p| p.prefix()) {
            visit(S3Uri {
                bucket: prefix.bucket.clone(),
                key: key.to_owned(),
            })
            .await?;
        }
    }
    Ok(())
}

/// S3's most parts in one multipart upload.
pub const MAX_PARTS: u64 = 10_000;

/// The part size for a multipart upload or copy of `size` bytes: `preferred`, or larger
/// when `preferred` would need more than [`MAX_PARTS`] parts (past ~78 GiB at 8 MiB),
/// rounded up to a whole MiB.
pub fn part_size(size: u64, preferred: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let needed = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    preferred.max(needed)
}

/// Aborts every unfinished multipart upload under `prefix`.
pub async fn abort_uploads(s3: &aws_sdk_s3::Client, prefix: &S3Uri) -> Result<()> {
    let mut key_marker: Option<String> = None;
    let mut upload_marker: Option<String> = None;
    loop {
        let out = s3
            .list_multipart_uploads()
            .bucket(&prefix.bucket)
            .prefix(&prefix.key)
            .set_key_marker(key_marker.take())
            .set_upload_id_marker(upload_marker.take())
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("ListMultipartUploads {prefix}"), e))?;
        for upload in out.uploads() {
            let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                continue;
            };
            abort_multipart(s3, &prefix.bucket, key, id).await;
        }
        if out.is_truncated() != Some(true) {
            return Ok(());
        }
        key_marker = out.next_key_marker().map(str::to_owned);
        upload_marker = out.next_upload_id_marker().map(str::to_owned);
        if key_marker.is_none() && upload_marker.is_none() {
            return Ok(());
        }
    }
}

/// An object's body, streaming, and its length (GetObject).
pub async fn open(s3: &aws_sdk_s3::Client, uri: &S3Uri) -> Result<(ByteStream, u64)> {
    let out = s3
        .get_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .send()
        .await
        .map_err(|e| Error::from_sdk(&format!("GetObject {uri}"), e))?;
    let length = u64::try_from(out.content_length.unwrap_or(0)).unwrap_or(0);
    Ok((out.body, length))
}

/// An object's size in bytes (HeadObject).
pub async fn object_size(s3: &aws_sdk_s3::Client, uri: &S3Uri) -> Result<u64> {
    let head = s3
        .head_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .send()
        .await
        .map_err(|e| Error::from_sdk(&format!("HeadObject {uri}"), e))?;
    Ok(u64::try_from(head.content_length.unwrap_or(0)).unwrap_or(0))
}

/// The object tag restore puts on every staged object: its whole-file SHA-256 in hex.
/// Single-part objects also carry it as their S3 SHA-256 checksum (which S3 verifies on
/// upload); multipart objects can only carry a checksum of part checksums, so the tag is
/// the one place every object's full hash can be read from without reading the object.
pub const SHA256_TAG: &str = "drpilot-sha256";

/// The whole-file SHA-256 (hex) stored for `uri`: the drpilot tag, else a full-object
/// SHA-256 checksum; `None` when the object has neither.
pub async fn stored_sha256(s3: &aws_sdk_s3::Client, uri: &S3Uri) -> Result<Option<String>> {
    let tags = s3
        .get_object_tagging()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .send()
        .await
        .map_err(|e| Error::from_sdk(&format!("GetObjectTagging {uri}"), e))?;
    if let Some(tag) = tags.tag_set().iter().find(|t| t.key() == SHA256_TAG) {
        return Ok(Some(tag.value().to_owned()));
    }
    let head = s3
        .head_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .map_err(|e| Error::from_sdk(&format!("HeadObject {uri}"), e))?;
    Ok(head
        .checksum_sha256()
        .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
        .filter(|raw| raw.len() == 32)
        .map(hex::encode))
}

/// Streams an S3 object body into a bounded channel that [`BodyReader`] reads as
/// `std::io::Read` on a blocking thread (the archive reader is synchronous).
pub fn pump_body(mut body: ByteStream, what: String) -> (BodyReader, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Result<Bytes>>(8);
    let pump = tokio::spawn(async move {
        loop {
            let next = body.try_next().await;
            let item = match next {
                Ok(Some(chunk)) => Ok(chunk),
                Ok(None) => break,
                Err(e) => Err(Error::retryable(format!("reading {what}: {e}"))),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    (
        BodyReader {
            rx,
            current: Bytes::new(),
        },
        pump,
    )
}

/// `std::io::Read` over chunks arriving on a channel (call only from a blocking thread).
pub struct BodyReader {
    rx: mpsc::Receiver<Result<Bytes>>,
    current: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(err)) => return Err(io::Error::other(err)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// The SHA-256 (hex) of the object at `uri`, computed by reading it through.
pub async fn sha256_by_reading(s3: &aws_sdk_s3::Client, uri: &S3Uri) -> Result<Option<String>> {
    use sha2::{Digest, Sha256};
    let (mut body, _) = open(s3, uri).await?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| Error::retryable(format!("reading {uri}: {e}")))?
    {
        hasher.update(&chunk);
    }
    Ok(Some(hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::{part_size, MAX_PARTS};

    #[test]
    fn part_size_keeps_every_upload_within_ten_thousand_parts() {
        const MIB: u64 = 1 << 20;
        assert_eq!(part_size(5 * MIB, 8 * MIB), 8 * MIB);
        // 78 GiB is the last size 8 MiB parts can carry.
        assert_eq!(part_size(MAX_PARTS * 8 * MIB, 8 * MIB), 8 * MIB);
        let big = MAX_PARTS * 8 * MIB + 1;
        assert_eq!(part_size(big, 8 * MIB), 9 * MIB);
        // S3's largest object, 5 TiB: 525 MiB parts, 9,987 of them.
        let largest = 5 << 40;
        let size = part_size(largest, 8 * MIB);
        assert_eq!(size, 525 * MIB);
        assert!(largest.div_ceil(size) <= MAX_PARTS);
    }
}
