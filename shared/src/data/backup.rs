//! The backup contract (docs/contracts.md): `metadata.json` and `manifests.tar.zst` under
//! one `backup_uri`, with the state in `state.tar.zst` (v1) or in shards covering
//! disjoint, ordered key ranges (v2). Everything past parsing sees a list of
//! [`Shard`]s: a v1 backup is one shard with no key bounds.

use std::collections::BTreeMap;

use aws_sdk_s3::operation::head_object::HeadObjectError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::archive::{is_sha256_hex, unpack, ArchiveReport, Artifact, Discard, EntryVisitor};
use crate::error::{decode_slice, Error, ErrorKind, Result};
use crate::manifest::{
    ContentCollector, ExternalSort, ManifestCollector, ManifestEntry, SORT_CHUNK,
};
use crate::objects::{for_each_child_prefix, object_size, open, pump_body};
use crate::s3uri::{KeyRange, RelativeKey, S3Uri};

pub const FORMAT_V1: &str = "drpilot.backup/v1";
pub const FORMAT_V2: &str = "drpilot.backup/v2";
pub const METADATA: &str = "metadata.json";
pub const STATE: &str = "state.tar.zst";
pub const MANIFESTS: &str = "manifests.tar.zst";
/// `metadata.json` is small by nature; a larger one is not a drpilot backup.
pub const METADATA_MAX_BYTES: usize = 1 << 20;

/// `metadata.json`. Unknown fields are allowed (producers may add provenance), but
/// every field drpilot relies on is checked by [`BackupMetadata::parse`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMetadata {
    pub format: String,
    pub backup_id: String,
    pub created_at: DateTime<Utc>,
    pub source: serde_json::Map<String, serde_json::Value>,
    pub artifacts: BTreeMap<String, Artifact>,
    /// v2 only: the state's shards, in key order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardEntry>,
}

/// One shard as v2's `metadata.json` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub first_key: String,
    pub last_key: String,
    pub objects: u64,
}

/// One archive of the state, whichever format: v1's `state.tar.zst` (no key bounds), or
/// a v2 shard with its inclusive key range and file count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub name: String,
    pub sha256: String,
    pub size: u64,
    #[serde(default)]
    pub first_key: Option<String>,
    #[serde(default)]
    pub last_key: Option<String>,
    #[serde(default)]
    pub objects: Option<u64>,
}

impl Shard {
    pub fn artifact(&self) -> Artifact {
        Artifact {
            sha256: self.sha256.clone(),
            size: self.size,
        }
    }

    /// Whether `key` (relative) lies in the shard's declared range.
    pub fn holds(&self, key: &str) -> bool {
        self.first_key
            .as_deref()
            .is_none_or(|first| key.as_bytes() >= first.as_bytes())
            && self
                .last_key
                .as_deref()
                .is_none_or(|last| key.as_bytes() <= last.as_bytes())
    }
}

impl BackupMetadata {
    /// Parses and checks `metadata.json` found at `uri`; every error is a `ContractError`
    /// naming the field.
    pub fn parse(uri: &S3Uri, bytes: &[u8]) -> Result<Self> {
        let contract = |msg: String| Error::contract(format!("{uri}: {msg}"));
        let meta: BackupMetadata = decode_slice(&uri.to_string(), bytes)
            .map_err(|e| Error::contract(e.to_string()).with_source(e))?;
        if meta.format != FORMAT_V1 && meta.format != FORMAT_V2 {
            return Err(contract(format!(
                "format: expected {FORMAT_V1:?} or {FORMAT_V2:?}, got {:?} (unknown format version)",
                meta.format
            )));
        }
        if meta.backup_id.is_empty() {
            return Err(contract("backup_id: expected a non-empty id".into()));
        }
        if !meta.source.get("git_sha").is_some_and(|v| v.is_string()) {
            return Err(contract("source.git_sha: expected a string".into()));
        }
        let v2 = meta.format == FORMAT_V2;
        if !v2 && !meta.shards.is_empty() {
            return Err(contract(format!(
                "shards: {FORMAT_V1} has no shards (its state is {STATE}); shards are {FORMAT_V2}'s"
            )));
        }
        let artifacts: &[&str] = if v2 {
            &[MANIFESTS]
        } else {
            &[STATE, MANIFESTS]
        };
        for name in artifacts {
            let artifact = meta
                .artifacts
                .get(*name)
                .ok_or_else(|| contract(format!("artifacts: no entry for {name}")))?;
            if !is_sha256_hex(&artifact.sha256) {
                return Err(contract(format!(
                    "artifacts.{name}.sha256: expected 64 lowercase hex digits, got {:?}",
                    artifact.sha256
                )));
            }
        }
        if let Some(extra) = meta
            .artifacts
            .keys()
            .find(|k| !artifacts.contains(&k.as_str()))
        {
            return Err(contract(format!(
                "artifacts: unexpected artifact {extra:?} ({} has {})",
                meta.format,
                artifacts.join(" and ")
            )));
        }
        if v2 {
            check_shards(&meta.shards).map_err(contract)?;
        }
        Ok(meta)
    }

    /// The state's archives in key order: v1's one `state.tar.zst`, or v2's shards.
    pub fn shards(&self) -> Vec<Shard> {
        if self.shards.is_empty() {
            let state = self.artifact(STATE);
            return vec![Shard {
                name: STATE.to_owned(),
                sha256: state.sha256.clone(),
                size: state.size,
                first_key: None,
                last_key: None,
                objects: None,
            }];
        }
        self.shards
            .iter()
            .map(|s| Shard {
                name: s.name.clone(),
                sha256: s.sha256.clone(),
                size: s.size,
                first_key: Some(s.first_key.clone()),
                last_key: Some(s.last_key.clone()),
                objects: Some(s.objects),
            })
            .collect()
    }

    /// Every object of the backup besides `metadata.json`: the manifests and the state's
    /// archives.
    pub fn object_names(&self) -> Vec<String> {
        let mut names = vec![MANIFESTS.to_owned()];
        names.extend(self.shards().into_iter().map(|s| s.name));
        names
    }

    pub fn artifact(&self, name: &str) -> &Artifact {
        // `parse` guarantees both artifacts exist; this is only called with those names.
        &self.artifacts[name]
    }
}

/// v2's shard list: at least one; plain, unique `*.tar.zst` names; hashes; each range
/// `first_key <= last_key`, and every range after the one before it (byte order, as S3
/// lists), so the ranges are disjoint and ordered. Errors name the shard and field.
fn check_shards(shards: &[ShardEntry]) -> std::result::Result<(), String> {
    if shards.is_empty() {
        return Err(format!(
            "shards: expected at least one shard in {FORMAT_V2}"
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, shard) in shards.iter().enumerate() {
        let at = format!("shards[{i}] ({:?})", shard.name);
        let plain = !shard.name.is_empty()
            && !shard.name.contains('/')
            && shard.name.ends_with(".tar.zst")
            && ![METADATA, MANIFESTS].contains(&shard.name.as_str());
        if !plain {
            return Err(format!(
                "{at}: name: expected a plain file name ending in .tar.zst, other than {METADATA} and {MANIFESTS}"
            ));
        }
        if !names.insert(shard.name.as_str()) {
            return Err(format!("{at}: name: listed twice"));
        }
        if !is_sha256_hex(&shard.sha256) {
            return Err(format!(
                "{at}: sha256: expected 64 lowercase hex digits, got {:?}",
                shard.sha256
            ));
        }
        if shard.objects == 0 {
            return Err(format!(
                "{at}: objects: expected at least one file per shard"
            ));
        }
        if shard.first_key.is_empty() || shard.first_key.as_bytes() > shard.last_key.as_bytes() {
            return Err(format!(
                "{at}: first_key {:?} must be non-empty and not after last_key {:?}",
                shard.first_key, shard.last_key
            ));
        }
        if let Some(before) = i.checked_sub(1).map(|j| &shards[j]) {
            if shard.first_key.as_bytes() <= before.last_key.as_bytes() {
                return Err(format!(
                    "{at}: first_key {:?} is not after shards[{}]'s last_key {:?}: shard ranges must be disjoint and in key order",
                    shard.first_key,
                    i - 1,
                    before.last_key
                ));
            }
        }
    }
    Ok(())
}

/// A backup a run restores: where it is and when it was taken (the RPO's anchor).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRef {
    pub uri: S3Uri,
    pub backup_id: String,
    pub created_at: DateTime<Utc>,
    pub git_sha: Option<String>,
}

/// Reads a backup's `metadata.json` and checks every object it names exists (the
/// manifests and the state's archives): one request per object, done once per run
/// (bringup, restore's preparation), not by every range's child.
pub async fn inspect(
    s3: &aws_sdk_s3::Client,
    backup_uri: &S3Uri,
) -> Result<(BackupRef, BackupMetadata)> {
    let (backup, meta) = metadata(s3, backup_uri).await?;
    for name in meta.object_names() {
        require_object(s3, &backup.uri, &name).await?;
    }
    Ok((backup, meta))
}

/// Reads and checks a backup's `metadata.json` alone: what a range's child needs (a
/// missing archive is then found when it is read). [`inspect`] checks the objects too.
pub async fn metadata(
    s3: &aws_sdk_s3::Client,
    backup_uri: &S3Uri,
) -> Result<(BackupRef, BackupMetadata)> {
    let base = backup_uri.as_prefix();
    require_object(s3, &base, METADATA).await?;
    let metadata_uri = artifact_uri(&base, METADATA)?;
    let bytes = read_small(s3, &metadata_uri, METADATA_MAX_BYTES).await?;
    let meta = BackupMetadata::parse(&metadata_uri, &bytes)?;
    let backup = BackupRef {
        uri: base,
        backup_id: meta.backup_id.clone(),
        created_at: meta.created_at,
        git_sha: meta
            .source
            .get("git_sha")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
    };
    Ok((backup, meta))
}

/// `ContractError` naming the object when `<base>/<name>` does not exist.
pub(crate) async fn require_object(
    s3: &aws_sdk_s3::Client,
    base: &S3Uri,
    name: &str,
) -> Result<()> {
    let object = artifact_uri(base, name)?;
    let head = s3
        .head_object()
        .bucket(&object.bucket)
        .key(&object.key)
        .send()
        .await;
    match head {
        Ok(_) => Ok(()),
        Err(err) if matches!(err.as_service_error(), Some(HeadObjectError::NotFound(_))) => {
            Err(Error::contract(format!(
                "backup {base}: missing artifact {name} ({object} does not exist)"
            )))
        }
        Err(err) => Err(Error::from_sdk(&format!("HeadObject {object}"), err)),
    }
}

/// Reads an object that must be small, refusing one larger than `limit` before reading it.
pub async fn read_small(s3: &aws_sdk_s3::Client, uri: &S3Uri, limit: usize) -> Result<Vec<u8>> {
    let (body, length) = open(s3, uri).await?;
    if length > limit as u64 {
        return Err(Error::contract(format!(
            "{uri}: {length} bytes, more than the {limit} allowed"
        )));
    }
    let bytes = body
        .collect()
        .await
        .map_err(|e| Error::retryable(format!("reading {uri}: {e}")))?
        .into_bytes();
    Ok(bytes.to_vec())
}

/// What [`verify`] found: the backup, its metadata, each archive's report, and how the
/// state archive's files compare with the manifests.
#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    pub backup: BackupRef,
    pub backup_id: String,
    pub manifests: ArchiveReport,
    pub state: ArchiveReport,
    pub coverage: Coverage,
}

/// Verifies a backup in place, writing nothing: the contract (`metadata.json` and the
/// three objects), each archive's size, both archives streamed through every check
/// restore makes (SHA-256, zstd, tar entries, duplicates), and the state archive's files
/// against the manifests (what validate checks of the staging). Errors are the ones
/// restore, or validate, would raise (`ContractError`, `IntegrityError`). `progress`
/// counts the archive bytes read, for a progress bar.
pub async fn verify(
    s3: &aws_sdk_s3::Client,
    backup_uri: &S3Uri,
    progress: Option<Arc<ReadProgress>>,
) -> Result<Verified> {
    let (backup, meta) = inspect(s3, backup_uri).await?;
    check_sizes(s3, &backup.uri, &meta).await?;
    if let Some(progress) = &progress {
        let total =
            meta.shards().iter().map(|s| s.size).sum::<u64>() + meta.artifact(MANIFESTS).size;
        progress.total.store(total, Ordering::Relaxed);
    }
    let (manifests, state, coverage) = verify_archives(s3, &backup.uri, &meta, progress).await?;
    Ok(Verified {
        backup,
        backup_id: meta.backup_id,
        manifests,
        state,
        coverage,
    })
}

/// Archive bytes read so far, of `total`.
#[derive(Debug, Default)]
pub struct ReadProgress {
    pub read: AtomicU64,
    pub total: AtomicU64,
}

/// Whether the state archive holds exactly what the manifests list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// Entries the manifests list (one key listed twice alike counts once).
    pub listed: u64,
    /// Files the state archive holds.
    pub archived: u64,
    /// Listed and archived, with the listed size and SHA-256.
    pub matching: u64,
    /// Listed, not archived.
    pub missing: u64,
    /// Archived, not listed.
    pub extra: u64,
    pub size_mismatches: u64,
    pub sha256_mismatches: u64,
    /// The first differences, in words (at most [`Coverage::FIRST`]).
    pub first_differences: Vec<String>,
}

impl Coverage {
    pub const FIRST: usize = 10;

    /// Merges the manifests' entries with the archive's, both sorted by key.
    pub fn measure(
        mut listed: impl Iterator<Item = Result<ManifestEntry>>,
        mut archived: impl Iterator<Item = Result<ManifestEntry>>,
    ) -> Result<Self> {
        use std::cmp::Ordering::{Equal, Greater, Less};
        let mut coverage = Self::default();
        let mut next_listed = listed.next().transpose()?;
        let mut next_archived = archived.next().transpose()?;
        loop {
            let order = match (&next_listed, &next_archived) {
                (None, None) => return Ok(coverage),
                (Some(_), None) => Less,
                (None, Some(_)) => Greater,
                (Some(l), Some(a)) => l.key.as_bytes().cmp(a.key.as_bytes()),
            };
            match order {
                Less => {
                    if let Some(l) = next_listed.take() {
                        coverage.missing(&l);
                    }
                    next_listed = listed.next().transpose()?;
                }
                Greater => {
                    if let Some(a) = next_archived.take() {
                        coverage.extra(&a);
                    }
                    next_archived = archived.next().transpose()?;
                }
                Equal => {
                    if let (Some(l), Some(a)) = (next_listed.take(), next_archived.take()) {
                        coverage.both(&l, &a);
                    }
                    next_listed = listed.next().transpose()?;
                    next_archived = archived.next().transpose()?;
                }
            }
        }
    }

    fn missing(&mut self, listed: &ManifestEntry) {
        self.listed += 1;
        self.missing += 1;
        self.note(format!("{}: listed, not in the archive", listed.key));
    }

    fn extra(&mut self, archived: &ManifestEntry) {
        self.archived += 1;
        self.extra += 1;
        self.note(format!("{}: in the archive, not listed", archived.key));
    }

    fn both(&mut self, listed: &ManifestEntry, archived: &ManifestEntry) {
        self.listed += 1;
        self.archived += 1;
        if listed.size != archived.size {
            self.size_mismatches += 1;
            self.note(format!(
                "{}: {} bytes in the archive, {} listed",
                listed.key, archived.size, listed.size
            ));
        } else if listed.sha256 != archived.sha256 {
            self.sha256_mismatches += 1;
            self.note(format!(
                "{}: SHA-256 {} in the archive, {} listed",
                listed.key, archived.sha256, listed.sha256
            ));
        } else {
            self.matching += 1;
        }
    }

    fn note(&mut self, difference: String) {
        if self.first_differences.len() < Self::FIRST {
            self.first_differences.push(difference);
        }
    }

    /// Every listed entry archived as listed, and nothing else.
    pub fn complete(&self) -> bool {
        self.missing + self.extra + self.size_mismatches + self.sha256_mismatches == 0
    }
}

/// Both archives streamed through every check restore makes, writing nothing, and the
/// state archive's files measured against the manifests: an incomplete coverage is an
/// `IntegrityError` naming the counts and the first differences.
pub async fn verify_archives(
    s3: &aws_sdk_s3::Client,
    backup: &S3Uri,
    meta: &BackupMetadata,
    progress: Option<Arc<ReadProgress>>,
) -> Result<(ArchiveReport, ArchiveReport, Coverage)> {
    let listed = ManifestCollector {
        sorter: ExternalSort::new(SORT_CHUNK)?,
        manifests: 0,
        range: KeyRange::all(),
    };
    let (manifests, listed) = unpack_object(
        s3,
        backup,
        MANIFESTS,
        meta.artifact(MANIFESTS).clone(),
        listed,
        progress.clone(),
    )
    .await?;
    let mut archived = ContentCollector {
        sorter: ExternalSort::new(SORT_CHUNK)?.refusing_duplicates(),
    };
    let mut reports = Vec::new();
    for shard in meta.shards() {
        let in_range = InRange::new(&shard, archived);
        let (report, in_range) = unpack_object(
            s3,
            backup,
            &shard.name,
            shard.artifact(),
            in_range,
            progress.clone(),
        )
        .await?;
        archived = in_range.finish(&report)?;
        reports.push(report);
    }
    let state = combine(reports);
    let coverage = tokio::task::spawn_blocking(move || {
        Coverage::measure(listed.sorter.finish()?, archived.sorter.finish()?)
    })
    .await
    .map_err(Error::from)??;
    if !coverage.complete() {
        return Err(Error::integrity(format!(
            "{STATE} does not hold what the manifests list: {} missing, {} not listed, {} of another size, {} with another SHA-256 (first: {})",
            coverage.missing,
            coverage.extra,
            coverage.size_mismatches,
            coverage.sha256_mismatches,
            coverage.first_differences.join("; ")
        )));
    }
    Ok((manifests, state, coverage))
}

/// The manifests archive streamed through every check restore makes (its structure
/// only: the entries are validate's to read), writing nothing.
pub async fn verify_manifests(
    s3: &aws_sdk_s3::Client,
    backup: &S3Uri,
    meta: &BackupMetadata,
) -> Result<ArchiveReport> {
    let discard = Discard::detecting_duplicates();
    let expected = meta.artifact(MANIFESTS).clone();
    Ok(
        unpack_object(s3, backup, MANIFESTS, expected, discard, None)
            .await?
            .0,
    )
}

/// Streams artifact `name` (declared as `expected`) from S3 through the unpacker into
/// `visitor`, counting the bytes read into `progress`.
async fn unpack_object<V: EntryVisitor + Send + 'static>(
    s3: &aws_sdk_s3::Client,
    backup: &S3Uri,
    name: &str,
    expected: Artifact,
    visitor: V,
    progress: Option<Arc<ReadProgress>>,
) -> Result<(ArchiveReport, V)> {
    let uri = artifact_uri(backup, name)?;
    let (reader, pump) = pump_body(open(s3, &uri).await?.0, uri.to_string());
    let name = name.to_owned();
    let unpacked = tokio::task::spawn_blocking(move || {
        let mut visitor = visitor;
        let reader = Counted { reader, progress };
        unpack(&name, reader, &expected, &mut visitor).map(|report| (report, visitor))
    })
    .await
    .map_err(Error::from)?;
    pump.abort();
    unpacked
}

/// Adds the bytes read through it to a [`ReadProgress`].
struct Counted<R> {
    reader: R,
    progress: Option<Arc<ReadProgress>>,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.reader.read(buf)?;
        if let Some(progress) = &self.progress {
            progress.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// Every archive's size in S3 (the manifests and each of the state's) against the size
/// `metadata.json` declares, before reading a byte of any.
pub async fn check_sizes(
    s3: &aws_sdk_s3::Client,
    backup: &S3Uri,
    meta: &BackupMetadata,
) -> Result<()> {
    check_size(s3, backup, MANIFESTS, meta.artifact(MANIFESTS)).await?;
    for shard in meta.shards() {
        check_size(s3, backup, &shard.name, &shard.artifact()).await?;
    }
    Ok(())
}

/// Passes a shard's files on to `inner`, refusing one outside the shard's declared key
/// range (`ContractError` naming the shard, the key and the range); [`InRange::finish`]
/// checks the shard held as many files as it declares.
pub struct InRange<V> {
    shard: Shard,
    inner: V,
}

impl<V: EntryVisitor> InRange<V> {
    pub fn new(shard: &Shard, inner: V) -> Self {
        Self {
            shard: shard.clone(),
            inner,
        }
    }

    /// The visitor, whatever the archive held so far.
    pub fn inner(&self) -> &V {
        &self.inner
    }

    /// The visitor back, once the shard's report shows its declared file count.
    pub fn finish(self, report: &ArchiveReport) -> Result<V> {
        if let Some(objects) = self.shard.objects {
            if report.files != objects {
                return Err(Error::integrity(format!(
                    "{}: holds {} files, metadata.json says {objects}",
                    self.shard.name, report.files
                )));
            }
        }
        Ok(self.inner)
    }
}

impl<V: EntryVisitor> EntryVisitor for InRange<V> {
    fn file(&mut self, key: RelativeKey, size: u64, data: &mut dyn std::io::Read) -> Result<()> {
        if !self.shard.holds(key.as_str()) {
            return Err(Error::contract(format!(
                "{}: entry {key} is outside the shard's range [{:?}, {:?}] in metadata.json",
                self.shard.name,
                self.shard.first_key.as_deref().unwrap_or(""),
                self.shard.last_key.as_deref().unwrap_or("")
            )));
        }
        self.inner.file(key, size, data)
    }
}

/// The state's archives as one report: counts summed; the SHA-256 is the one archive's
/// (v1), or for shards the SHA-256 of their SHA-256s, one hex digest a line in order
/// (each shard's own is in `metadata.json` and the restore receipt).
pub fn combine(reports: Vec<ArchiveReport>) -> ArchiveReport {
    if reports.len() == 1 {
        return reports.into_iter().next().unwrap_or_default();
    }
    let mut combined = ArchiveReport::default();
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    for report in &reports {
        combined.files += report.files;
        combined.directories += report.directories;
        combined.bytes += report.bytes;
        combined.archive_bytes += report.archive_bytes;
        sha2::Digest::update(&mut hasher, format!("{}\n", report.archive_sha256));
    }
    combined.archive_sha256 = hex::encode(sha2::Digest::finalize(hasher));
    combined
}

async fn check_size(
    s3: &aws_sdk_s3::Client,
    backup: &S3Uri,
    name: &str,
    expected: &Artifact,
) -> Result<()> {
    let size = object_size(s3, &artifact_uri(backup, name)?).await?;
    if size != expected.size {
        return Err(Error::integrity(format!(
            "{name}: size is {size} bytes, metadata.json says {}",
            expected.size
        )));
    }
    Ok(())
}

/// `<backup>/<name>`.
pub fn artifact_uri(backup: &S3Uri, name: &str) -> Result<S3Uri> {
    backup
        .join(name)
        .map_err(|e| Error::contract(e.to_string()))
}

/// The newest valid backup (by `metadata.json` `created_at`) under `prefix`. Invalid
/// backups are skipped with a warning; only the best candidate is kept in memory.
pub async fn newest(s3: &aws_sdk_s3::Client, prefix: &S3Uri) -> Result<BackupRef> {
    let mut best: Option<BackupRef> = None;
    let mut skipped = 0usize;
    for_each_child_prefix(s3, prefix, async |candidate| {
        match inspect(s3, &candidate).await {
            Ok((found, _)) => {
                if best
                    .as_ref()
                    .is_none_or(|b| found.created_at > b.created_at)
                {
                    best = Some(found);
                }
                Ok(())
            }
            Err(err) if err.kind == ErrorKind::ContractError => {
                skipped += 1;
                tracing::warn!(backup = %candidate, error = %err, "skipping invalid backup");
                Ok(())
            }
            Err(err) => Err(err),
        }
    })
    .await?;
    best.ok_or_else(|| {
        Error::contract(format!(
            "no valid backup under {} ({skipped} invalid skipped)",
            prefix.as_prefix()
        ))
    })
}

/// The manifest entries of the backup at `backup_uri`, in key order, streamed out of its
/// `manifests.tar.zst` (verified against `metadata.json` while it streams) and sorted on
/// a blocking thread in bounded memory; an error ends the stream.
pub async fn sorted_entries(
    s3: &aws_sdk_s3::Client,
    backup_uri: &S3Uri,
) -> Result<(
    tokio::sync::mpsc::Receiver<Result<ManifestEntry>>,
    crate::manifest::ManifestTasks,
)> {
    sorted_entries_in(s3, backup_uri, KeyRange::all()).await
}

/// [`sorted_entries`] of the keys in `range` only: every entry is still read and
/// checked, but only the range's are sorted (a range's child's memory and `/tmp` grow
/// with its range, not the backup).
pub async fn sorted_entries_in(
    s3: &aws_sdk_s3::Client,
    backup_uri: &S3Uri,
    range: KeyRange,
) -> Result<(
    tokio::sync::mpsc::Receiver<Result<ManifestEntry>>,
    crate::manifest::ManifestTasks,
)> {
    // The metadata and the manifests alone: every range's child of validate reads them,
    // and checking each of the backup's objects here would cost every child one request
    // per shard.
    let (backup, meta) = metadata(s3, backup_uri).await?;
    require_object(s3, &backup.uri, MANIFESTS).await?;
    let manifests_uri = artifact_uri(backup_uri, MANIFESTS)?;
    let (body, _) = open(s3, &manifests_uri).await?;
    let (reader, pump) = pump_body(body, manifests_uri.to_string());
    let expected = meta.artifact(MANIFESTS).clone();
    Ok(crate::manifest::sort_archive(
        MANIFESTS, reader, expected, range, pump,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, size: u64, sha: char) -> Result<ManifestEntry> {
        Ok(ManifestEntry {
            key: key.into(),
            size,
            sha256: sha.to_string().repeat(64),
        })
    }

    #[test]
    fn coverage_counts_each_kind_of_difference_once() {
        let listed = vec![
            entry("a", 1, 'a'),
            entry("b", 2, 'b'),
            entry("c", 3, 'c'),
            entry("d", 4, 'd'),
        ];
        let archived = vec![
            entry("a", 1, 'a'),
            entry("b", 9, 'b'),
            entry("c", 3, 'f'),
            entry("e", 5, 'e'),
        ];
        let c = Coverage::measure(listed.into_iter(), archived.into_iter()).unwrap();
        assert_eq!((c.listed, c.archived, c.matching), (4, 4, 1));
        assert_eq!((c.missing, c.extra), (1, 1));
        assert_eq!((c.size_mismatches, c.sha256_mismatches), (1, 1));
        assert!(!c.complete());
        assert_eq!(c.first_differences.len(), 4);
        assert!(c.first_differences[0].starts_with("b: 9 bytes"));

        let same = || vec![entry("a", 1, 'a'), entry("b", 2, 'b')].into_iter();
        let c = Coverage::measure(same(), same()).unwrap();
        assert!(c.complete() && c.matching == 2);
        let empty = Coverage::measure(std::iter::empty(), std::iter::empty()).unwrap();
        assert!(empty.complete() && empty.listed == 0);
    }

    #[test]
    fn coverage_passes_on_a_stream_error() {
        let failing = vec![
            entry("a", 1, 'a'),
            Err(Error::contract("duplicate entry a")),
        ];
        let err = Coverage::measure(failing.into_iter(), std::iter::empty()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ContractError);
    }
}
