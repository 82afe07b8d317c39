//! Bulk object operations on a prefix, paged so memory stays flat however many objects
//! there are.

use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use tracing::warn;

use crate::error::{Error, Result};
use crate::s3uri::S3Uri;

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
            .map_err(|e| Error::retryable(format!("building DeleteObjects: {e}")))?;
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
