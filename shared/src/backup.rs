//! The backup contract v1 (docs/contracts.md): `metadata.json`, `state.tar.zst` and
//! `manifests.tar.zst` under one `backup_uri`.

use std::collections::BTreeMap;

use aws_sdk_s3::operation::head_object::HeadObjectError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::archive::{unpack, ArchiveReport, Discard, EntryVisitor};
use crate::error::{decode_slice, Error, ErrorKind, Result};
use crate::manifest::{
    ContentCollector, ExternalSort, ManifestCollector, ManifestEntry, SORT_CHUNK,
};
use crate::objects::{for_each_child_prefix, object_size, open, pump_body};
use crate::s3uri::S3Uri;

pub const FORMAT_V1: &str = "drpilot.backup/v1";
pub const METADATA: &str = "metadata.json";
pub const STATE: &str = "state.tar.zst";
pub const MANIFESTS: &str = "manifests.tar.zst";
/// The three objects every backup has.
pub const CONTRACT_OBJECTS: [&str; 3] = [METADATA, STATE, MANIFESTS];
/// `metadata.json` is small by nature; a larger one is not a drpilot backup.
pub const METADATA_MAX_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub sha256: String,
    pub size: u64,
}

/// `metadata.json`. Unknown fields are allowed (producers may add provenance), but
/// every field drpilot relies on is checked by [`BackupMetadata::parse`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMetadata {
    pub format: String,
    pub backup_id: String,
    pub created_at: DateTime<Utc>,
    pub source: serde_json::Map<String, serde_json::Value>,
    pub artifacts: BTreeMap<String, Artifact>,
}

impl BackupMetadata {
    /// Parses and checks `metadata.json` found at `uri`; every error is a `ContractError`
    /// naming the field.
    pub fn parse(uri: &S3Uri, bytes: &[u8]) -> Result<Self> {
        let contract = |msg: String| Error::contract(format!("{uri}: {msg}"));
        let meta: BackupMetadata = decode_slice(&uri.to_string(), bytes)
            .map_err(|e| Error::contract(e.to_string()).with_source(e))?;
        if meta.format != FORMAT_V1 {
            return Err(contract(format!(
                "format: expected {FORMAT_V1:?}, got {:?} (unknown format version)",
                meta.format
            )));
        }
        if meta.backup_id.is_empty() {
            return Err(contract("backup_id: expected a non-empty id".into()));
        }
        if !meta.source.get("git_sha").is_some_and(|v| v.is_string()) {
            return Err(contract("source.git_sha: expected a string".into()));
        }
        for name in [STATE, MANIFESTS] {
            let artifact = meta
                .artifacts
                .get(name)
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
            .find(|k| *k != STATE && *k != MANIFESTS)
        {
            return Err(contract(format!(
                "artifacts: unexpected artifact {extra:?} (v1 has {STATE} and {MANIFESTS})"
            )));
        }
        Ok(meta)
    }

    pub fn artifact(&self, name: &str) -> &Artifact {
        // `parse` guarantees both artifacts exist; this is only called with those names.
        &self.artifacts[name]
    }
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A backup a run restores: where it is and when it was taken (the RPO's anchor).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRef {
    pub uri: S3Uri,
    pub backup_id: String,
    pub created_at: DateTime<Utc>,
    pub git_sha: Option<String>,
}

/// Reads a backup's `metadata.json` and checks all three contract objects exist.
pub async fn inspect(
    s3: &aws_sdk_s3::Client,
    backup_uri: &S3Uri,
) -> Result<(BackupRef, BackupMetadata)> {
    let base = backup_uri.as_prefix();
    for name in CONTRACT_OBJECTS {
        let object = base
            .join(name)
            .map_err(|e| Error::contract(e.to_string()))?;
        let head = s3
            .head_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .send()
            .await;
        match head {
            Ok(_) => {}
            Err(err) if matches!(err.as_service_error(), Some(HeadObjectError::NotFound(_))) => {
                return Err(Error::contract(format!(
                    "backup {base}: missing artifact {name} ({object} does not exist)"
                )))
            }
            Err(err) => return Err(Error::from_sdk(&format!("HeadObject {object}"), err)),
        }
    }
    let metadata_uri = base
        .join(METADATA)
        .map_err(|e| Error::contract(e.to_string()))?;
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
        let total = meta.artifact(STATE).size + meta.artifact(MANIFESTS).size;
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
    };
    let (manifests, listed) =
        unpack_object(s3, backup, MANIFESTS, meta, listed, progress.clone()).await?;
    let archived = ContentCollector {
        sorter: ExternalSort::new(SORT_CHUNK)?.refusing_duplicates(),
    };
    let (state, archived) = unpack_object(s3, backup, STATE, meta, archived, progress).await?;
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
    Ok(unpack_object(s3, backup, MANIFESTS, meta, discard, None)
        .await?
        .0)
}

/// Streams artifact `name` from S3 through the unpacker into `visitor`, counting the
/// bytes read into `progress`.
async fn unpack_object<V: EntryVisitor + Send + 'static>(
    s3: &aws_sdk_s3::Client,
    backup: &S3Uri,
    name: &str,
    meta: &BackupMetadata,
    visitor: V,
    progress: Option<Arc<ReadProgress>>,
) -> Result<(ArchiveReport, V)> {
    let uri = artifact_uri(backup, name)?;
    let (reader, pump) = pump_body(open(s3, &uri).await?.0, uri.to_string());
    let name = name.to_owned();
    let expected = meta.artifact(&name).clone();
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

/// Both archives' sizes in S3 against the sizes `metadata.json` declares, before reading a
/// byte of either.
pub async fn check_sizes(
    s3: &aws_sdk_s3::Client,
    backup: &S3Uri,
    meta: &BackupMetadata,
) -> Result<()> {
    for name in [STATE, MANIFESTS] {
        check_size(s3, backup, name, meta.artifact(name)).await?;
    }
    Ok(())
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
