//! The asynchronous half of the restore pipeline: S3 object bodies in, staged objects out.
//!
//! A GetObject body is pumped into a bounded channel that a blocking thread reads as
//! `std::io::Read` ([`BodyReader`]); the unpacker's entries come back over another bounded
//! channel ([`ChannelSink`]) and are uploaded by [`Uploader`] with several requests in
//! flight: one PutObject for a file up to the part size, a multipart upload above it.
//! Memory is bounded by `concurrency × part_size` plus the channels, whatever the size of
//! the archive or of any file in it.

use std::io::Read;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Tag, Tagging};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use drpilot_shared::s3uri::RelativeKey;
use drpilot_shared::{Error, Result, S3Uri};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use drpilot_shared::archive::{stream_error, EntryVisitor, CHUNK};
use drpilot_shared::budget::{RequestBudget, PREFIX_PUT_RATE};
use drpilot_shared::objects::{
    abort_multipart, part_size, precondition_failed, sha256_by_reading, stored_sha256,
};

pub use drpilot_shared::objects::SHA256_TAG;

/// Upload sizing. The defaults suit a Lambda with 1-2 GB of memory.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Files above this are uploaded in parts of this size (S3's minimum is 5 MiB).
    pub part_size: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            part_size: 8 << 20,
            concurrency: 16,
        }
    }
}

impl Tuning {
    /// Defaults, overridden by `DRPILOT_PART_SIZE_MIB` and `DRPILOT_UPLOAD_CONCURRENCY`.
    pub fn from_env() -> Self {
        let mut tuning = Self::default();
        if let Some(mib) = env_number("DRPILOT_PART_SIZE_MIB") {
            tuning.part_size = mib.max(5) << 20;
        }
        if let Some(n) = env_number("DRPILOT_UPLOAD_CONCURRENCY") {
            tuning.concurrency = n.clamp(1, 256);
        }
        tuning
    }
}

fn env_number(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.parse().ok()
}

pub fn base64_sha256(digest: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(digest)
}

pub use drpilot_shared::objects::{pump_body, BodyReader};

/// What the unpacker tells the uploader.
#[derive(Debug)]
pub enum EntryMessage {
    Begin { key: RelativeKey, size: u64 },
    Data(Bytes),
    End { sha256: [u8; 32] },
}

/// The unpacker's end of the entry channel.
pub struct ChannelSink {
    pub tx: mpsc::Sender<EntryMessage>,
}

/// Why a producer could not hand an entry on: the uploader has stopped, and reports the
/// real cause itself.
#[derive(Debug, thiserror::Error)]
#[error("the uploader stopped")]
pub struct UploaderStopped;

impl UploaderStopped {
    pub fn error() -> Error {
        Error::retryable(UploaderStopped.to_string()).with_source(UploaderStopped)
    }

    /// Whether `err` only says the uploader stopped (the uploader's own error is the one
    /// to report).
    pub fn is_cause_of(err: &Error) -> bool {
        err.is_caused_by::<UploaderStopped>()
    }
}

impl ChannelSink {
    fn send(&self, message: EntryMessage) -> Result<()> {
        self.tx
            .blocking_send(message)
            .map_err(|_| UploaderStopped::error())
    }
}

impl EntryVisitor for ChannelSink {
    /// Hands the file to the uploader in chunks, with its SHA-256 at the end (the
    /// uploader commits an object only once it has that).
    fn file(&mut self, key: RelativeKey, size: u64, data: &mut dyn Read) -> Result<()> {
        self.send(EntryMessage::Begin { key, size })?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK.min(size as usize).max(1)];
        loop {
            let n = data
                .read(&mut buf)
                .map_err(|e| stream_error("state.tar.zst", e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            self.send(EntryMessage::Data(Bytes::copy_from_slice(&buf[..n])))?;
        }
        self.send(EntryMessage::End {
            sha256: hasher.finalize().into(),
        })
    }
}

/// Where a pass of a shard starts and when it stops handing files on: the files an
/// earlier pass staged are read past (the archive is still hashed whole), and no file is
/// started once `stop_at` has come.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resume {
    /// Files of the archive, in order, an earlier pass staged.
    pub skip: u64,
    /// The invocation's [`drpilot_shared::deadline::work_until`], if any.
    pub stop_at: Option<std::time::Instant>,
}

/// The deadline came before the archive's end: not a failure, the pass's end.
#[derive(Debug, thiserror::Error)]
#[error("the invocation's work time is up")]
pub struct DeadlineReached;

impl DeadlineReached {
    pub fn is_cause_of(err: &Error) -> bool {
        err.is_caused_by::<DeadlineReached>()
    }
}

/// A visitor that hands `inner` only the files a pass stages ([`Resume`]) and counts
/// every file it saw.
pub struct Resumable<V> {
    inner: V,
    resume: Resume,
    /// Files seen, skipped or handed on.
    pub files: u64,
}

impl<V: EntryVisitor> Resumable<V> {
    pub fn new(inner: V, resume: Resume) -> Self {
        Self {
            inner,
            resume,
            files: 0,
        }
    }
}

impl<V: EntryVisitor> EntryVisitor for Resumable<V> {
    fn file(&mut self, key: RelativeKey, size: u64, data: &mut dyn Read) -> Result<()> {
        if self.files >= self.resume.skip
            && self
                .resume
                .stop_at
                .is_some_and(|at| std::time::Instant::now() >= at)
        {
            return Err(Error::internal(DeadlineReached.to_string()).with_source(DeadlineReached));
        }
        let skipped = self.files < self.resume.skip;
        self.files += 1;
        if skipped {
            // Left unread: the unpacker reads past it, hashing the archive as it goes.
            return Ok(());
        }
        self.inner.file(key, size, data)
    }
}

/// Uploads entries under `prefix`, at most `tuning.concurrency` requests at once. Every
/// write is conditional (`If-None-Match: *`): the staging prefix is emptied before a
/// restore, so a second write to one key means the archive has a duplicate entry.
pub struct Uploader {
    s3: aws_sdk_s3::Client,
    prefix: S3Uri,
    tuning: Tuning,
    permits: Arc<Semaphore>,
    tasks: JoinSet<Result<()>>,
    /// Paces the PutObject and UploadPart requests (see [`RequestBudget`]).
    budget: RequestBudget,
    pub objects: u64,
    pub bytes: u64,
}

enum Current {
    Small {
        key: String,
        buf: BytesMut,
    },
    Multipart {
        key: String,
        upload_id: String,
        /// The tuning's part size, or larger for a file it would split into more
        /// parts than S3 allows.
        part_size: usize,
        buf: BytesMut,
        parts: Vec<tokio::task::JoinHandle<Result<CompletedPart>>>,
    },
}

impl Uploader {
    /// Paces the uploads with `budget` (a range's child shares the prefix's rate).
    pub fn with_budget(mut self, budget: RequestBudget) -> Self {
        self.budget = budget;
        self
    }

    pub fn new(s3: aws_sdk_s3::Client, prefix: S3Uri, tuning: Tuning) -> Self {
        Self {
            s3,
            prefix: prefix.as_prefix(),
            permits: Arc::new(Semaphore::new(tuning.concurrency.max(1))),
            tuning,
            tasks: JoinSet::new(),
            budget: RequestBudget::new(PREFIX_PUT_RATE),
            objects: 0,
            bytes: 0,
        }
    }

    /// Drains the entry channel, uploading as it goes; returns when the channel closes
    /// and every upload has finished, or at the first failure.
    pub async fn run(&mut self, mut rx: mpsc::Receiver<EntryMessage>) -> Result<()> {
        let result = self.consume(&mut rx).await;
        // Stop the unpacker promptly on failure, then wait for what is in flight.
        rx.close();
        let drained = self.drain().await;
        result.and(drained)
    }

    async fn consume(&mut self, rx: &mut mpsc::Receiver<EntryMessage>) -> Result<()> {
        let mut current: Option<Current> = None;
        while let Some(message) = rx.recv().await {
            if let Some(done) = self.tasks.try_join_next() {
                flatten(done)?;
            }
            match message {
                EntryMessage::Begin { key, size } => {
                    self.budget.check_fence().await?;
                    let key = self.object_key(&key)?;
                    current = Some(if size as usize > self.tuning.part_size {
                        let upload_id = self.create_multipart(&key).await?;
                        let part_size =
                            usize::try_from(part_size(size, self.tuning.part_size as u64))
                                .unwrap_or(usize::MAX);
                        Current::Multipart {
                            key,
                            upload_id,
                            part_size,
                            buf: BytesMut::with_capacity(part_size),
                            parts: Vec::new(),
                        }
                    } else {
                        Current::Small {
                            key,
                            buf: BytesMut::with_capacity(size as usize),
                        }
                    });
                }
                EntryMessage::Data(chunk) => match current.as_mut() {
                    Some(Current::Small { buf, .. }) => buf.extend_from_slice(&chunk),
                    Some(Current::Multipart {
                        key,
                        upload_id,
                        part_size,
                        buf,
                        parts,
                    }) => {
                        buf.extend_from_slice(&chunk);
                        while buf.len() >= *part_size {
                            let part = buf.split_to(*part_size).freeze();
                            let number = parts.len() as i32 + 1;
                            let handle = self.upload_part(key, upload_id, number, part).await;
                            parts.push(handle);
                        }
                    }
                    None => return Err(Error::internal("entry data before its header")),
                },
                EntryMessage::End { sha256 } => match current.take() {
                    Some(Current::Small { key, buf }) => {
                        self.bytes += buf.len() as u64;
                        let permit = self.permit().await;
                        let s3 = self.s3.clone();
                        let bucket = self.prefix.bucket.clone();
                        let budget = self.budget.clone();
                        self.tasks.spawn(async move {
                            let _permit = permit;
                            put_small(&s3, &bucket, &key, buf.freeze(), &sha256, &budget).await
                        });
                        self.objects += 1;
                    }
                    Some(Current::Multipart {
                        key,
                        upload_id,
                        part_size,
                        mut buf,
                        mut parts,
                    }) => {
                        let written = parts.len() as u64 * part_size as u64;
                        let tail = buf.split().freeze();
                        self.bytes += written + tail.len() as u64;
                        if !tail.is_empty() || parts.is_empty() {
                            let number = parts.len() as i32 + 1;
                            parts.push(self.upload_part(&key, &upload_id, number, tail).await);
                        }
                        let s3 = self.s3.clone();
                        let bucket = self.prefix.bucket.clone();
                        self.tasks.spawn(async move {
                            complete_multipart(&s3, &bucket, &key, &upload_id, parts, &sha256).await
                        });
                        self.objects += 1;
                    }
                    None => return Err(Error::internal("entry end before its header")),
                },
            }
        }
        if let Some(Current::Multipart { key, upload_id, .. }) = current {
            abort_multipart(&self.s3, &self.prefix.bucket, &key, &upload_id).await;
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<()> {
        let mut first_error = None;
        while let Some(done) = self.tasks.join_next().await {
            if let Err(err) = flatten(done) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn permit(&self) -> OwnedSemaphorePermit {
        // The semaphore is never closed.
        self.permits
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("semaphore closed"))
    }

    fn object_key(&self, key: &RelativeKey) -> Result<String> {
        let full = format!("{}{}", self.prefix.key, key);
        if full.len() > 1024 {
            return Err(Error::contract(format!(
                "entry {key}: staged key would be {} bytes, over S3's 1024",
                full.len()
            )));
        }
        Ok(full)
    }

    async fn create_multipart(&self, key: &str) -> Result<String> {
        let out = self
            .s3
            .create_multipart_upload()
            .bucket(&self.prefix.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| {
                Error::from_sdk(
                    &format!("CreateMultipartUpload s3://{}/{key}", self.prefix.bucket),
                    e,
                )
            })?;
        out.upload_id
            .ok_or_else(|| Error::retryable("CreateMultipartUpload returned no upload id"))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        data: Bytes,
    ) -> tokio::task::JoinHandle<Result<CompletedPart>> {
        let permit = self.permit().await;
        let s3 = self.s3.clone();
        let bucket = self.prefix.bucket.clone();
        let key = key.to_owned();
        let upload_id = upload_id.to_owned();
        let budget = self.budget.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let checksum = base64_sha256(&Sha256::digest(&data));
            let out = budget
                .send(|| {
                    s3.upload_part()
                        .bucket(&bucket)
                        .key(&key)
                        .upload_id(&upload_id)
                        .part_number(number)
                        .checksum_algorithm(ChecksumAlgorithm::Sha256)
                        .checksum_sha256(&checksum)
                        .body(ByteStream::from(data.clone()))
                        .send()
                })
                .await
                .map_err(|e| {
                    Error::from_sdk(&format!("UploadPart {number} s3://{bucket}/{key}"), e)
                })?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag)
                .checksum_sha256(checksum)
                .build())
        })
    }
}

fn flatten(done: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    done.map_err(Error::from)?
}

fn duplicate(key: &str) -> Error {
    Error::contract(format!(
        "state.tar.zst: duplicate entry (staged key {key} written twice, with other content)"
    ))
}

/// After a conditional write found `key` already there: whether it holds what this write
/// would have written (its stored SHA-256 is `sha256`). That is a retried child — a
/// re-invocation after a read error or a timeout, or the first invocation still running —
/// finding what it staged before, and it stands: the retry goes on instead of failing on
/// its own earlier work. Other content is a duplicate entry. A multipart object whose tag
/// was not written yet (a crash between completing it and tagging it) is read through
/// and tagged.
async fn already_staged(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    sha256: &[u8; 32],
) -> Result<bool> {
    let uri = S3Uri::new(bucket, key).map_err(|e| Error::internal(format!("{key}: {e}")))?;
    let wanted = hex::encode(sha256);
    match stored_sha256(s3, &uri).await? {
        Some(stored) => Ok(stored == wanted),
        None => {
            let read = sha256_by_reading(s3, &uri).await?;
            if read.as_deref() != Some(wanted.as_str()) {
                return Ok(false);
            }
            tag_sha256(s3, bucket, key, sha256).await?;
            Ok(true)
        }
    }
}

/// Stores `sha256` as the object's [`SHA256_TAG`].
async fn tag_sha256(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    sha256: &[u8; 32],
) -> Result<()> {
    let tag = Tag::builder()
        .key(SHA256_TAG)
        .value(hex::encode(sha256))
        .build()
        .map_err(|e| Error::internal(format!("building tag: {e}")))?;
    let tagging = Tagging::builder()
        .tag_set(tag)
        .build()
        .map_err(|e| Error::internal(format!("building tagging: {e}")))?;
    s3.put_object_tagging()
        .bucket(bucket)
        .key(key)
        .tagging(tagging)
        .send()
        .await
        .map_err(|e| Error::from_sdk(&format!("PutObjectTagging s3://{bucket}/{key}"), e))?;
    Ok(())
}

async fn put_small(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    data: Bytes,
    sha256: &[u8; 32],
    budget: &RequestBudget,
) -> Result<()> {
    let sent = budget
        .send(|| {
            s3.put_object()
                .bucket(bucket)
                .key(key)
                .if_none_match("*")
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(base64_sha256(sha256))
                .tagging(format!("{SHA256_TAG}={}", hex::encode(sha256)))
                .body(ByteStream::from(data.clone()))
                .send()
        })
        .await;
    match sent {
        Ok(_) => Ok(()),
        Err(e) if precondition_failed(&e) => {
            if already_staged(s3, bucket, key, sha256).await? {
                Ok(())
            } else {
                Err(duplicate(key))
            }
        }
        Err(e) => Err(Error::from_sdk(
            &format!("PutObject s3://{bucket}/{key}"),
            e,
        )),
    }
}

async fn complete_multipart(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    parts: Vec<tokio::task::JoinHandle<Result<CompletedPart>>>,
    sha256: &[u8; 32],
) -> Result<()> {
    let mut completed = Vec::with_capacity(parts.len());
    let mut failure = None;
    for handle in parts {
        match handle.await {
            Ok(Ok(part)) => completed.push(part),
            Ok(Err(err)) => {
                failure.get_or_insert(err);
            }
            Err(e) => {
                failure.get_or_insert(Error::from(e));
            }
        }
    }
    if let Some(err) = failure {
        abort_multipart(s3, bucket, key, upload_id).await;
        return Err(err);
    }
    let result = s3
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .if_none_match("*")
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await;
    if let Err(e) = result {
        abort_multipart(s3, bucket, key, upload_id).await;
        if precondition_failed(&e) {
            return if already_staged(s3, bucket, key, sha256).await? {
                Ok(())
            } else {
                Err(duplicate(key))
            };
        }
        return Err(Error::from_sdk(
            &format!("CompleteMultipartUpload s3://{bucket}/{key}"),
            e,
        ));
    }
    tag_sha256(s3, bucket, key, sha256).await
}
