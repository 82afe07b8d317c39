//! s3mem: an in-memory S3 server for drpilot's benchmarks.
//!
//! The protocol (SigV4, routing, XML, aws-chunked bodies) is the `s3s` crate's; this file
//! is only the store behind it: buckets as ordered maps, so a listing page costs the page
//! and not the bucket. It exists because moto bounds every end-to-end figure and the
//! registry's file-system server, `s3s-fs`, walks the whole bucket on every listing page,
//! keeps no object tags and puts no ETags in listings (bench/README.md says more).
//!
//! The operations drpilot's bench paths and their peers (`rclone`, the `aws` CLI) call,
//! with S3's semantics: buckets; Put/Get (ranges)/Head/Copy (metadata and tagging
//! directives)/Delete(s) of objects; ListObjects v1 and v2 (prefix, delimiter,
//! start-after, continuation, max-keys); multipart uploads (parts, part copies,
//! completion with S3's `md5-of-md5s-N` ETag, abort, listing); object tagging.
//!
//! usage: s3mem [--host 127.0.0.1] [--port 0] [--access-key testing --secret-key testing]
//! It prints `listening on http://HOST:PORT` once it accepts connections, and ends when its
//! standard input closes.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use md5::{Digest, Md5};
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};

/// One stored object. Bodies are `Bytes`, so a GET or a copy shares them.
#[derive(Clone)]
struct Stored {
    data: Bytes,
    etag: String,
    modified: SystemTime,
    content_type: Option<String>,
    content_encoding: Option<String>,
    metadata: Option<Metadata>,
    tags: Vec<(String, String)>,
}

struct Upload {
    key: String,
    initiated: SystemTime,
    content_type: Option<String>,
    metadata: Option<Metadata>,
    tags: Vec<(String, String)>,
    /// part number → (bytes, md5 hex)
    parts: BTreeMap<i32, (Bytes, String)>,
}

#[derive(Default)]
struct StoredBucket {
    objects: BTreeMap<String, Arc<Stored>>,
    uploads: BTreeMap<String, Upload>,
}

#[derive(Default)]
struct Store {
    buckets: RwLock<BTreeMap<String, StoredBucket>>,
    next_upload: AtomicU64,
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut hash = Md5::new();
    for p in parts {
        hash.update(p);
    }
    hex(&hash.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `x-amz-tagging`'s form-encoded `k1=v1&k2=v2`.
fn parse_tagging(header: Option<&str>) -> Vec<(String, String)> {
    header
        .map(|h| form_urlencoded::parse(h.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn tag_set(tags: &[(String, String)]) -> TagSet {
    tags.iter()
        .map(|(k, v)| Tag {
            key: Some(k.clone()),
            value: Some(v.clone()),
        })
        .collect()
}

async fn collect(body: Option<StreamingBlob>) -> S3Result<Bytes> {
    let Some(mut body) = body else {
        return Ok(Bytes::new());
    };
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| s3_error!(IncompleteBody, "reading the body: {e}"))?;
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A body in 1 MiB pieces (they share the stored bytes).
fn blob(data: Bytes) -> StreamingBlob {
    const PIECE: usize = 1 << 20;
    let pieces: Vec<Result<Bytes, std::io::Error>> = (0..data.len().div_ceil(PIECE))
        .map(|i| Ok(data.slice(i * PIECE..((i + 1) * PIECE).min(data.len()))))
        .collect();
    StreamingBlob::wrap(futures::stream::iter(pieces))
}

fn copy_source(source: &CopySource) -> S3Result<(&str, &str)> {
    match source {
        CopySource::Bucket { bucket, key, .. } => Ok((bucket, key)),
        _ => Err(s3_error!(NotImplemented, "access point copy sources")),
    }
}

/// `bytes=first-last` (inclusive), as UploadPartCopy's `x-amz-copy-source-range` has it.
fn source_range(range: Option<&str>, len: usize) -> S3Result<std::ops::Range<usize>> {
    let Some(range) = range else {
        return Ok(0..len);
    };
    let parsed = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    match parsed {
        Some((first, last)) if first <= last && last < len => Ok(first..last + 1),
        _ => Err(s3_error!(
            InvalidArgument,
            "bad copy source range {range:?}"
        )),
    }
}

/// One page of a listing: objects and common prefixes in key order.
struct Page {
    objects: Vec<Object>,
    prefixes: Vec<String>,
    /// Where the next page starts, when there is one.
    next: Option<Resume>,
}

impl Page {
    /// The page's objects and common prefixes as a listing's XML has them (absent when
    /// empty).
    fn into_lists(self) -> (Option<Vec<Object>>, Option<Vec<CommonPrefix>>) {
        let prefixes: Vec<CommonPrefix> = self
            .prefixes
            .into_iter()
            .map(|p| CommonPrefix { prefix: Some(p) })
            .collect();
        (
            (!self.objects.is_empty()).then_some(self.objects),
            (!prefixes.is_empty()).then_some(prefixes),
        )
    }
}

/// A listing's resume point: after an object key, or after everything under a common
/// prefix. Carried in the continuation token as `k<key>` / `p<prefix>`.
#[derive(Clone)]
enum Resume {
    AfterKey(String),
    AfterPrefix(String),
}

impl Resume {
    fn token(&self) -> String {
        match self {
            Resume::AfterKey(k) => format!("k{k}"),
            Resume::AfterPrefix(p) => format!("p{p}"),
        }
    }

    fn parse(token: &str) -> S3Result<Self> {
        match token.split_at_checked(1) {
            Some(("k", k)) => Ok(Resume::AfterKey(k.to_owned())),
            Some(("p", p)) => Ok(Resume::AfterPrefix(p.to_owned())),
            _ => Err(s3_error!(InvalidArgument, "bad continuation token")),
        }
    }

    /// The first key a listing resumed here may return lies above this bound.
    fn lower_bound(&self) -> String {
        match self {
            Resume::AfterKey(k) => k.clone(),
            // Every key under the prefix sorts below prefix + U+10FFFF, the largest char.
            Resume::AfterPrefix(p) => format!("{p}\u{10FFFF}"),
        }
    }
}

fn list_page(
    bucket: &StoredBucket,
    prefix: &str,
    delimiter: Option<&str>,
    start_after: Option<&str>,
    resume: Option<&Resume>,
    max_keys: usize,
) -> Page {
    let mut from = prefix.to_owned();
    let mut exclusive = false;
    for bound in [
        start_after.map(str::to_owned),
        resume.map(Resume::lower_bound),
    ]
    .into_iter()
    .flatten()
    {
        if bound >= from {
            from = bound;
            exclusive = true;
        }
    }
    let mut page = Page {
        objects: Vec::new(),
        prefixes: Vec::new(),
        next: None,
    };
    let mut lower = if exclusive {
        Bound::Excluded(from)
    } else {
        Bound::Included(from)
    };
    'scan: loop {
        let range = bucket
            .objects
            .range::<String, _>((lower.clone(), Bound::Unbounded));
        for (key, stored) in range {
            if !key.starts_with(prefix) {
                break 'scan;
            }
            let rolled = delimiter.and_then(|d| {
                key[prefix.len()..]
                    .find(d)
                    .map(|at| key[..prefix.len() + at + d.len()].to_owned())
            });
            if page.objects.len() + page.prefixes.len() == max_keys {
                page.next = Some(match (page.prefixes.last(), page.objects.last()) {
                    (Some(p), Some(o)) if p.as_str() > o.key.as_deref().unwrap_or("") => {
                        Resume::AfterPrefix(p.clone())
                    }
                    (_, Some(o)) => Resume::AfterKey(o.key.clone().unwrap_or_default()),
                    (Some(p), None) => Resume::AfterPrefix(p.clone()),
                    (None, None) => break 'scan,
                });
                break 'scan;
            }
            match rolled {
                Some(common) => {
                    // S3 leaves out a common prefix at or before StartAfter, with the keys
                    // it rolls up.
                    if start_after.is_none_or(|sa| common.as_str() > sa) {
                        page.prefixes.push(common.clone());
                    }
                    lower = Bound::Excluded(Resume::AfterPrefix(common).lower_bound());
                    continue 'scan;
                }
                None => page.objects.push(Object {
                    key: Some(key.clone()),
                    size: Some(stored.data.len() as i64),
                    e_tag: Some(ETag::Strong(stored.etag.clone())),
                    last_modified: Some(Timestamp::from(stored.modified)),
                    ..Default::default()
                }),
            }
        }
        break;
    }
    page
}

impl Store {
    fn read<T>(&self, bucket: &str, f: impl FnOnce(&StoredBucket) -> S3Result<T>) -> S3Result<T> {
        let buckets = self.buckets.read().expect("store lock");
        f(buckets.get(bucket).ok_or_else(|| s3_error!(NoSuchBucket))?)
    }

    fn write<T>(
        &self,
        bucket: &str,
        f: impl FnOnce(&mut StoredBucket) -> S3Result<T>,
    ) -> S3Result<T> {
        let mut buckets = self.buckets.write().expect("store lock");
        f(buckets
            .get_mut(bucket)
            .ok_or_else(|| s3_error!(NoSuchBucket))?)
    }

    fn object(&self, bucket: &str, key: &str) -> S3Result<Arc<Stored>> {
        self.read(bucket, |b| {
            b.objects
                .get(key)
                .cloned()
                .ok_or_else(|| s3_error!(NoSuchKey))
        })
    }

    /// Stores (or replaces) part `number` of an upload; its ETag, the part's MD5.
    fn add_part(
        &self,
        bucket: &str,
        upload_id: &str,
        number: i32,
        data: Bytes,
    ) -> S3Result<String> {
        let etag = md5_hex(&[&data]);
        self.write(bucket, |b| {
            let upload = b
                .uploads
                .get_mut(upload_id)
                .ok_or_else(|| s3_error!(NoSuchUpload))?;
            upload.parts.insert(number, (data, etag.clone()));
            Ok(())
        })?;
        Ok(etag)
    }

    fn put(&self, bucket: &str, key: String, stored: Stored) -> S3Result<()> {
        self.write(bucket, |b| {
            b.objects.insert(key, Arc::new(stored));
            Ok(())
        })
    }
}

#[async_trait::async_trait]
impl S3 for Store {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let mut buckets = self.buckets.write().expect("store lock");
        if buckets.contains_key(&req.input.bucket) {
            return Err(s3_error!(BucketAlreadyOwnedByYou));
        }
        buckets.insert(req.input.bucket, StoredBucket::default());
        Ok(S3Response::new(CreateBucketOutput::default()))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.read(&req.input.bucket, |_| Ok(()))?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn list_buckets(
        &self,
        _: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = self.buckets.read().expect("store lock");
        let list = buckets
            .keys()
            .map(|name| Bucket {
                name: Some(name.clone()),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(list),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.read(&req.input.bucket, |_| Ok(()))?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        self.read(&input.bucket, |_| Ok(()))?;
        let data = collect(input.body).await?;
        let etag = md5_hex(&[&data]);
        let size = data.len() as i64;
        self.put(
            &input.bucket,
            input.key,
            Stored {
                data,
                etag: etag.clone(),
                modified: SystemTime::now(),
                content_type: input.content_type,
                content_encoding: input.content_encoding,
                metadata: input.metadata,
                tags: parse_tagging(input.tagging.as_deref()),
            },
        )?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
            size: Some(size),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let stored = self.object(&input.bucket, &input.key)?;
        let len = stored.data.len() as u64;
        let (data, content_range) = match &input.range {
            None => (stored.data.clone(), None),
            Some(range) => {
                let r = range.check(len).map_err(|_| s3_error!(InvalidRange))?;
                let (first, end) = (r.start as usize, r.end as usize);
                (
                    stored.data.slice(first..end),
                    Some(format!("bytes {first}-{}/{len}", end - 1)),
                )
            }
        };
        Ok(S3Response::new(GetObjectOutput {
            content_length: Some(data.len() as i64),
            content_range,
            body: Some(blob(data)),
            e_tag: Some(ETag::Strong(stored.etag.clone())),
            last_modified: Some(Timestamp::from(stored.modified)),
            content_type: stored.content_type.clone(),
            content_encoding: stored.content_encoding.clone(),
            metadata: stored.metadata.clone(),
            tag_count: (!stored.tags.is_empty()).then_some(stored.tags.len() as i32),
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let stored = self.object(&req.input.bucket, &req.input.key)?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(stored.data.len() as i64),
            e_tag: Some(ETag::Strong(stored.etag.clone())),
            last_modified: Some(Timestamp::from(stored.modified)),
            content_type: stored.content_type.clone(),
            content_encoding: stored.content_encoding.clone(),
            metadata: stored.metadata.clone(),
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        let (src_bucket, src_key) = copy_source(&input.copy_source)?;
        let source = self.object(src_bucket, src_key)?;
        let replace = |d: &Option<String>| d.as_deref() == Some("REPLACE");
        let metadata_directive = input
            .metadata_directive
            .as_ref()
            .map(|d| d.as_str().to_owned());
        let tagging_directive = input
            .tagging_directive
            .as_ref()
            .map(|d| d.as_str().to_owned());
        let (content_type, content_encoding, metadata) = if replace(&metadata_directive) {
            (input.content_type, input.content_encoding, input.metadata)
        } else {
            (
                source.content_type.clone(),
                source.content_encoding.clone(),
                source.metadata.clone(),
            )
        };
        let tags = if replace(&tagging_directive) {
            parse_tagging(input.tagging.as_deref())
        } else {
            source.tags.clone()
        };
        // A copy is a new single-part object: its ETag is its content's MD5.
        let etag = md5_hex(&[&source.data]);
        let modified = SystemTime::now();
        self.put(
            &input.bucket,
            input.key,
            Stored {
                data: source.data.clone(),
                etag: etag.clone(),
                modified,
                content_type,
                content_encoding,
                metadata,
                tags,
            },
        )?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(Timestamp::from(modified)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.write(&req.input.bucket, |b| {
            b.objects.remove(&req.input.key);
            Ok(())
        })?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        let quiet = input.delete.quiet.unwrap_or(false);
        let deleted = self.write(&input.bucket, |b| {
            Ok(input
                .delete
                .objects
                .into_iter()
                .map(|id| {
                    b.objects.remove(&id.key);
                    DeletedObject {
                        key: Some(id.key),
                        ..Default::default()
                    }
                })
                .collect::<Vec<_>>())
        })?;
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: (!quiet).then_some(deleted),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let resume = input
            .continuation_token
            .as_deref()
            .map(Resume::parse)
            .transpose()?;
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000);
        let page = self.read(&input.bucket, |b| {
            Ok(list_page(
                b,
                input.prefix.as_deref().unwrap_or(""),
                input.delimiter.as_deref(),
                input.start_after.as_deref(),
                resume.as_ref(),
                max_keys as usize,
            ))
        })?;
        let count = (page.objects.len() + page.prefixes.len()) as i32;
        let next_continuation_token = page.next.as_ref().map(Resume::token);
        let (contents, common_prefixes) = page.into_lists();
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            max_keys: Some(max_keys),
            key_count: Some(count),
            start_after: input.start_after,
            continuation_token: input.continuation_token,
            is_truncated: Some(next_continuation_token.is_some()),
            next_continuation_token,
            contents,
            common_prefixes,
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000);
        // v1's marker is a key or a common prefix the previous page ended on.
        let resume = input
            .marker
            .as_ref()
            .map(|m| match input.delimiter.as_deref() {
                Some(d) if m.ends_with(d) => Resume::AfterPrefix(m.clone()),
                _ => Resume::AfterKey(m.clone()),
            });
        let page = self.read(&input.bucket, |b| {
            Ok(list_page(
                b,
                input.prefix.as_deref().unwrap_or(""),
                input.delimiter.as_deref(),
                None,
                resume.as_ref(),
                max_keys as usize,
            ))
        })?;
        let next_marker = page.next.as_ref().map(|r| match r {
            Resume::AfterKey(k) | Resume::AfterPrefix(k) => k.clone(),
        });
        let (contents, common_prefixes) = page.into_lists();
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter.clone(),
            marker: input.marker,
            max_keys: Some(max_keys),
            is_truncated: Some(next_marker.is_some()),
            next_marker: input.delimiter.and(next_marker),
            contents,
            common_prefixes,
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        let input = req.input;
        let tags = input
            .tagging
            .tag_set
            .into_iter()
            .map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default()))
            .collect();
        self.write(&input.bucket, |b| {
            let stored = b
                .objects
                .get_mut(&input.key)
                .ok_or_else(|| s3_error!(NoSuchKey))?;
            Arc::make_mut(stored).tags = tags;
            Ok(())
        })?;
        Ok(S3Response::new(PutObjectTaggingOutput::default()))
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        let stored = self.object(&req.input.bucket, &req.input.key)?;
        Ok(S3Response::new(GetObjectTaggingOutput {
            tag_set: tag_set(&stored.tags),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        let id = format!(
            "upload-{}",
            self.next_upload.fetch_add(1, Ordering::Relaxed)
        );
        self.write(&input.bucket, |b| {
            b.uploads.insert(
                id.clone(),
                Upload {
                    key: input.key.clone(),
                    initiated: SystemTime::now(),
                    content_type: input.content_type,
                    metadata: input.metadata,
                    tags: parse_tagging(input.tagging.as_deref()),
                    parts: BTreeMap::new(),
                },
            );
            Ok(())
        })?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        let data = collect(input.body).await?;
        let etag = self.add_part(&input.bucket, &input.upload_id, input.part_number, data)?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let input = req.input;
        let (src_bucket, src_key) = copy_source(&input.copy_source)?;
        let source = self.object(src_bucket, src_key)?;
        let range = source_range(input.copy_source_range.as_deref(), source.data.len())?;
        let data = source.data.slice(range);
        let etag = self.add_part(&input.bucket, &input.upload_id, input.part_number, data)?;
        let modified = SystemTime::now();
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(Timestamp::from(modified)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let listed = input
            .multipart_upload
            .and_then(|m| m.parts)
            .ok_or_else(|| s3_error!(MalformedXML, "no parts"))?;
        let etag = self.write(&input.bucket, |b| {
            let upload = b
                .uploads
                .get(&input.upload_id)
                .ok_or_else(|| s3_error!(NoSuchUpload))?;
            if upload.key != input.key {
                return Err(s3_error!(NoSuchUpload));
            }
            let mut data = BytesMut::new();
            let mut digests = Vec::with_capacity(listed.len() * 16);
            let mut previous = 0;
            for part in &listed {
                let number = part.part_number.unwrap_or(0);
                if number <= previous {
                    return Err(s3_error!(InvalidPartOrder));
                }
                previous = number;
                let (bytes, etag) = upload
                    .parts
                    .get(&number)
                    .ok_or_else(|| s3_error!(InvalidPart))?;
                if part.e_tag.as_ref().is_some_and(|e| e.value() != etag) {
                    return Err(s3_error!(InvalidPart, "part {number}'s ETag differs"));
                }
                data.extend_from_slice(bytes);
                digests.extend(
                    (0..etag.len() / 2)
                        .map(|i| u8::from_str_radix(&etag[2 * i..2 * i + 2], 16).unwrap_or(0)),
                );
            }
            let upload = b.uploads.remove(&input.upload_id).expect("checked above");
            let etag = format!("{}-{}", md5_hex(&[&digests]), listed.len());
            b.objects.insert(
                input.key.clone(),
                Arc::new(Stored {
                    data: data.freeze(),
                    etag: etag.clone(),
                    modified: SystemTime::now(),
                    content_type: upload.content_type,
                    content_encoding: None,
                    metadata: upload.metadata,
                    tags: upload.tags,
                }),
            );
            Ok(etag)
        })?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.write(&req.input.bucket, |b| {
            b.uploads
                .remove(&req.input.upload_id)
                .map(|_| ())
                .ok_or_else(|| s3_error!(NoSuchUpload))
        })?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let uploads = self.read(&input.bucket, |b| {
            let mut uploads: Vec<MultipartUpload> = b
                .uploads
                .iter()
                .filter(|(_, u)| u.key.starts_with(&prefix))
                .map(|(id, u)| MultipartUpload {
                    key: Some(u.key.clone()),
                    upload_id: Some(id.clone()),
                    initiated: Some(Timestamp::from(u.initiated)),
                    ..Default::default()
                })
                .collect();
            uploads.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
            Ok(uploads)
        })?;
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            is_truncated: Some(false),
            uploads: (!uploads.is_empty()).then_some(uploads),
            ..Default::default()
        }))
    }
}

struct Args {
    host: String,
    port: u16,
    access_key: String,
    secret_key: String,
}

fn args() -> Args {
    let mut out = Args {
        host: "127.0.0.1".into(),
        port: 0,
        access_key: "testing".into(),
        secret_key: "testing".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--host" => out.host = value,
            "--port" => out.port = value.parse().unwrap_or_else(|_| usage("--port: a number")),
            "--access-key" => out.access_key = value,
            "--secret-key" => out.secret_key = value,
            other => usage(&format!("unknown flag {other}")),
        }
    }
    out
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "s3mem: {problem}\nusage: s3mem [--host H] [--port P] [--access-key K --secret-key S]"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = args();
    let service = {
        let mut builder = S3ServiceBuilder::new(Store::default());
        builder.set_auth(SimpleAuth::from_single(args.access_key, args.secret_key));
        builder.build()
    };
    // Its standard input is the bench script's pipe: when that closes (the script ended,
    // however), the server ends too instead of outliving it.
    tokio::spawn(async {
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
        std::process::exit(0);
    });
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let (socket, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => { eprintln!("s3mem: accept: {err}"); continue; }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let conn = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
