//! `audit/published.json`, the publish pointer: which run last made a `root/` the live
//! data (a promotion into the DR target's `root/`, or a failback into the primary's), and
//! its `generation`, which each of them increments. A run remembers the generation it
//! started against; publishing over a later one would undo someone else's promotion or
//! failback, so it is refused. Writes are conditional on the pointer's ETag, so two
//! publishers racing cannot both win.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backup::BackupRef;
use crate::error::{decode_slice, Error, Result};
use crate::objects::{get_bytes, put_json_if, Conditional, Precondition};
use crate::s3uri::S3Uri;
use crate::store::ReceiptStore;

/// What made a `root/` the live data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishKind {
    #[default]
    Promotion,
    Failback,
}

/// The pointer's document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublishedPointer {
    pub run_id: String,
    pub backup_uri: S3Uri,
    pub backup_id: String,
    pub backup_created_at: DateTime<Utc>,
    pub git_sha: Option<String>,
    /// The `root/` that is now live.
    pub root: S3Uri,
    pub promoted_at: DateTime<Utc>,
    pub audit_record: S3Uri,
    /// 1 for the first publication; a pointer written before generations were kept
    /// reads as 0.
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub kind: PublishKind,
}

impl PublishedPointer {
    /// A pointer to `root` holding `backup`'s data, published by `run_id` at `at`; its
    /// generation is set when it is published ([`advance`]).
    pub fn new(
        run_id: &str,
        kind: PublishKind,
        backup: &BackupRef,
        root: S3Uri,
        at: DateTime<Utc>,
        audit_record: S3Uri,
    ) -> Self {
        Self {
            run_id: run_id.to_owned(),
            backup_uri: backup.uri.clone(),
            backup_id: backup.backup_id.clone(),
            backup_created_at: backup.created_at,
            git_sha: backup.git_sha.clone(),
            root,
            promoted_at: at,
            audit_record,
            generation: 0,
            kind,
        }
    }
}

/// The pointer as read, with the ETag a conditional write needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    pub pointer: Option<PublishedPointer>,
    etag: Option<String>,
}

impl Published {
    pub async fn read(s3: &aws_sdk_s3::Client, uri: &S3Uri) -> Result<Self> {
        let Some((bytes, etag)) = get_bytes(s3, uri).await? else {
            return Ok(Self {
                pointer: None,
                etag: None,
            });
        };
        let pointer = decode_slice(&uri.to_string(), &bytes).map_err(|e| {
            Error::integrity(format!("not the expected publish pointer: {e}")).with_source(e)
        })?;
        Ok(Self {
            pointer: Some(pointer),
            etag: Some(etag),
        })
    }

    /// The generation now live: 0 when nothing was ever published.
    pub fn generation(&self) -> u64 {
        self.pointer.as_ref().map_or(0, |p| p.generation)
    }
}

/// Refuses (before anything is copied) a run started against generation `expected` when
/// the live pointer is another's: someone promoted or failed back since. The pointer
/// being `run_id`'s own publication of `expected + 1` (a re-run past it) is live too.
pub async fn ensure_live(
    s3: &aws_sdk_s3::Client,
    uri: &S3Uri,
    expected: u64,
    run_id: &str,
) -> Result<()> {
    let current = Published::read(s3, uri).await?;
    let ours = current
        .pointer
        .as_ref()
        .is_some_and(|p| p.run_id == run_id && p.generation == expected + 1);
    if current.generation() == expected || ours {
        return Ok(());
    }
    Err(stale(uri, expected, current.pointer.as_ref()))
}

/// Publishes `next` at `uri` as generation `expected + 1`, if the pointer is still at
/// `expected` (or already is `next`'s run at `expected + 1`: a re-run after a crash
/// between the write and the receipt). Any other generation is stale: `ContractError`
/// naming who published since. Returns the pointer written.
pub async fn advance(
    s3: &aws_sdk_s3::Client,
    uri: &S3Uri,
    expected: u64,
    mut next: PublishedPointer,
) -> Result<PublishedPointer> {
    next.generation = expected + 1;
    let current = Published::read(s3, uri).await?;
    let ours = current
        .pointer
        .as_ref()
        .is_some_and(|p| p.generation == next.generation && p.run_id == next.run_id);
    if current.generation() != expected && !ours {
        return Err(stale(uri, expected, current.pointer.as_ref()));
    }
    let precondition = match current.etag.as_deref() {
        Some(etag) => Precondition::Matches(etag),
        None => Precondition::Absent,
    };
    match put_json_if(s3, uri, &next, Some(precondition)).await? {
        Conditional::Written => Ok(next),
        Conditional::ConditionFailed => {
            let now = Published::read(s3, uri).await?;
            Err(stale(uri, expected, now.pointer.as_ref()))
        }
    }
}

/// What promote and failback do once their copy is done, in this order: write the run's
/// audit record at `next.audit_record` (and its evidence copy: [`ReceiptStore::put_audit_record`]),
/// then [`advance`] the pointer at `pointer_uri` from `expected` to `next`. The order is
/// the point: a pointer never names a record that is not there, and a re-run after a
/// crash between the two finds the record kept and publishes.
pub async fn record_and_advance<T: Serialize>(
    store: &ReceiptStore,
    run_id: &str,
    record: &T,
    pointer_uri: &S3Uri,
    expected: u64,
    next: PublishedPointer,
) -> Result<PublishedPointer> {
    store
        .put_audit_record(run_id, &next.audit_record, record)
        .await?;
    advance(store.s3(), pointer_uri, expected, next).await
}

/// The refusal of a publication started against generation `expected`.
pub fn stale(uri: &S3Uri, expected: u64, current: Option<&PublishedPointer>) -> Error {
    match current {
        Some(p) => Error::contract(format!(
            "{uri} is at generation {} ({:?} by run {} at {}), but this run started against generation {expected}: publishing now would undo it; start a new run",
            p.generation,
            p.kind,
            p.run_id,
            p.promoted_at.to_rfc3339()
        )),
        None => Error::contract(format!(
            "{uri} is gone, but this run started against generation {expected}; start a new run"
        )),
    }
}
