//! Bulk object operations on a prefix, paged so memory stays flat however many objects
//! there are.

use std::io::{self, Read};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumMode, Delete, ObjectIdentifier};
use base64::Engine;
use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::warn;

use crate::error::{Error, Result};
use crate::s3uri::S3Uri;

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

/// Deletes every object under `prefix` (1000 keys a request, one page at a time) and
/// aborts multipart uploads left under it. Returns how many objects were deleted.
/// Idempotent: an empty prefix deletes nothing.
pub async fn delete_prefix(s3: &aws_sdk_s3::Client, prefix: &S3Uri) -> Result<u64> {
    let prefix = prefix.as_prefix();
    if prefix.key.is_empty() {
        return Err(Error::input(format!(
            "refusing to delete a whole bucket ({prefix})"
        )));
    }
    let mut deleted = 0u64;
    let mut pages = s3
        .list_objects_v2()
        .bucket(&prefix.bucket)
        .prefix(&prefix.key)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| Error::from_sdk(&format!("ListObjectsV2 {prefix}"), e))?;
        let ids: Vec<ObjectIdentifier> = page
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
            .collect();
        if ids.is_empty() {
            continue;
        }
        let count = ids.len() as u64;
        let delete = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(|e| Error::internal(format!("building DeleteObjects: {e}")))?;
        let out = s3
            .delete_objects()
            .bucket(&prefix.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("DeleteObjects {prefix}"), e))?;
        if let Some(first) = out.errors().first() {
            return Err(Error::retryable(format!(
                "DeleteObjects {prefix}: {} keys not deleted, first {:?}: {:?}",
                out.errors().len(),
                first.key(),
                first.message()
            )));
        }
        deleted += count;
    }
    abort_uploads(s3, &prefix).await?;
    Ok(deleted)
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
            if let Err(e) = s3
                .abort_multipart_upload()
                .bucket(&prefix.bucket)
                .key(key)
                .upload_id(id)
                .send()
                .await
            {
                warn!(key, error = %aws_sdk_s3::error::DisplayErrorContext(&e), "could not abort multipart upload");
            }
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
