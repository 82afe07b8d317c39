//! The backup contract v1 (docs/contracts.md): `metadata.json`, `state.tar.zst` and
//! `manifests.tar.zst` under one `backup_uri`.

use std::collections::BTreeMap;

use aws_sdk_s3::operation::head_object::HeadObjectError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::archive::{unpack, ArchiveReport, Discard};
use crate::error::{decode_slice, Error, Result};
use crate::objects::{object_size, open, pump_body};
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

/// What [`verify`] found: the backup, its metadata, and each archive's report.
#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    pub backup: BackupRef,
    pub backup_id: String,
    pub manifests: ArchiveReport,
    pub state: ArchiveReport,
}

/// Verifies a backup in place, writing nothing: the contract (`metadata.json` and the
/// three objects), each archive's size, and both archives streamed through every check
/// restore makes (SHA-256, zstd, tar entries, duplicates). Errors are the ones restore
/// would raise (`ContractError`, `IntegrityError`).
pub async fn verify(s3: &aws_sdk_s3::Client, backup_uri: &S3Uri) -> Result<Verified> {
    let (backup, meta) = inspect(s3, backup_uri).await?;
    check_sizes(s3, &backup.uri, &meta).await?;
    let manifests = verify_artifact(s3, &backup.uri, MANIFESTS, meta.artifact(MANIFESTS)).await?;
    let state = verify_artifact(s3, &backup.uri, STATE, meta.artifact(STATE)).await?;
    Ok(Verified {
        backup,
        backup_id: meta.backup_id,
        manifests,
        state,
    })
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

/// Streams an artifact through the unpacker into nothing: every check, no writes.
pub async fn verify_artifact(
    s3: &aws_sdk_s3::Client,
    backup: &S3Uri,
    name: &str,
    expected: &Artifact,
) -> Result<ArchiveReport> {
    let uri = artifact_uri(backup, name)?;
    let (reader, pump) = pump_body(open(s3, &uri).await?.0, uri.to_string());
    let name = name.to_owned();
    let expected = expected.clone();
    let report = tokio::task::spawn_blocking(move || {
        unpack(
            &name,
            reader,
            &expected,
            &mut Discard::detecting_duplicates(),
        )
    })
    .await
    .map_err(Error::from)?;
    pump.abort();
    report
}

/// `<backup>/<name>`.
pub fn artifact_uri(backup: &S3Uri, name: &str) -> Result<S3Uri> {
    backup
        .join(name)
        .map_err(|e| Error::contract(e.to_string()))
}
