//! promote: makes the validated staging the production data. Refuses without an approval
//! (approver and ticket) unless the drill-only bypass applies, and refuses a run whose
//! restore or validate did not succeed. Copies staging into `root/` server-side, skipping
//! objects that are already identical (so a re-run after an interruption resumes), leaves
//! objects only in `root/` alone as drift unless the profile prunes them, re-checks
//! parity, and writes one audit record and the publish pointer.

use std::sync::Arc;

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, TaggingDirective};
use chrono::{DateTime, Utc};
use drpilot_shared::archive::RESERVED_PREFIX;
use drpilot_shared::details::{PromoteDetails, PublishedPointer};
use drpilot_shared::metrics::{self, Sample};
use drpilot_shared::objects::{abort_multipart, get_json, put_json};
use drpilot_shared::objects::{object_size, part_size};
use drpilot_shared::parity::{compare_prefixes, Difference, ParityCounts, Verdict};
use drpilot_shared::phase::{self, Outcome, PhaseRun, Rerun};
use drpilot_shared::profile::{Profile, ProfileSource};
use drpilot_shared::receipt::{seconds, ReceiptStore};
use drpilot_shared::run::{PhaseOutput, PhaseRequest, RunContext};
use drpilot_shared::{AwsClients, Error, ErrorKind, Result, S3Uri};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tracing::info;

/// An operator's approval, as `drpilot approve` sends it through the task token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub approver: String,
    pub ticket: String,
    #[serde(default)]
    pub approved_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    pub run: RunContext,
    #[serde(default)]
    pub retry_count: u32,
    #[serde(default)]
    pub approval: Option<Approval>,
}

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
            part_size: 512 << 20,
            concurrency: 16,
        }
    }
}

/// `audit/promotions/promotion-<UTC timestamp>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub run_id: String,
    pub execution_arn: Option<String>,
    pub profile: String,
    pub mode: String,
    pub approver: Option<String>,
    pub ticket: Option<String>,
    pub approved_at: Option<DateTime<Utc>>,
    pub bypass: bool,
    pub backup_uri: S3Uri,
    pub backup_id: String,
    pub backup_created_at: DateTime<Utc>,
    pub promoted_at: DateTime<Utc>,
    pub objects_copied: u64,
    pub bytes_copied: u64,
    pub objects_identical: u64,
    pub drift_objects: u64,
    pub drift_pruned: bool,
    pub parity_before: ParityCounts,
    pub parity_after: ParityCounts,
}

/// Where a run's audit record goes, decided once so a re-run writes the same one.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PendingAudit {
    audit_record: S3Uri,
}

pub struct Promote {
    pub clients: AwsClients,
    pub profiles: ProfileSource,
    pub tuning: CopyTuning,
}

/// What a [`sync_prefixes`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CopyStats {
    pub copied: u64,
    pub bytes: u64,
    pub deleted: u64,
}

impl Promote {
    pub fn new(clients: AwsClients) -> Self {
        let clients = clients.for_function("promote");
        let profiles = ProfileSource::from_env(clients.ssm.clone());
        Self {
            clients,
            profiles,
            tuning: CopyTuning::default(),
        }
    }

    pub async fn handle(&self, request: PromoteRequest) -> Result<PhaseOutput> {
        let phase_request = PhaseRequest {
            run: request.run,
            retry_count: request.retry_count,
        };
        let approval = request.approval;
        phase::run(
            &phase_request,
            &self.clients.s3,
            &self.profiles,
            Rerun::KeepSuccess,
            async |ctx: &PhaseRun<'_>| {
                let approval = gate(ctx.run, approval.as_ref())?;
                let synced = self.sync(ctx.run, ctx.profile).await?;
                let details = self
                    .audit(ctx.run, ctx.profile, ctx.store, approval, &synced)
                    .await?;
                Ok(Outcome::Done(details))
            },
        )
        .await
    }

    /// Copies the staging into `root/` and checks nothing staged was left out.
    async fn sync(&self, run: &RunContext, profile: &Profile) -> Result<Synced> {
        let staging = profile.target.staging(&run.run_id)?;
        let root = profile.target.root();
        let started = Utc::now();
        let (parity_before, stats) = sync_prefixes(
            &self.clients.s3,
            &staging,
            &root,
            profile.prune_drift,
            self.tuning,
        )
        .await?;
        let parity_after = compare_prefixes(
            &self.clients.s3,
            &staging,
            &root,
            vec![RESERVED_PREFIX.to_owned()],
            async |_| Ok(()),
        )
        .await?;
        let unpromoted =
            parity_after.only_left + parity_after.size_differs + parity_after.checksum_differs;
        if unpromoted > 0 {
            return Err(Error::integrity(format!(
                "after promotion {unpromoted} staged objects still differ from {root} ({parity_after:?})"
            )));
        }
        Ok(Synced {
            root,
            started,
            promoted_at: Utc::now(),
            parity_before,
            parity_after,
            stats,
        })
    }

    /// Writes the run's one audit record, the publish pointer and the time-to-promotion
    /// metric, and returns the receipt's details.
    async fn audit(
        &self,
        run: &RunContext,
        profile: &Profile,
        store: &ReceiptStore,
        approval: Option<&Approval>,
        synced: &Synced,
    ) -> Result<PromoteDetails> {
        let s3 = &self.clients.s3;
        // One audit record per run: its key is chosen once and remembered.
        let pending_uri = store.run_dir(&run.run_id)?.join("promote.pending.json")?;
        let pending = match get_json::<PendingAudit>(s3, &pending_uri).await? {
            Some(p) => p,
            None => {
                let key = format!(
                    "promotions/promotion-{}.json",
                    synced.promoted_at.format("%Y%m%dT%H%M%S%.3fZ")
                );
                let p = PendingAudit {
                    audit_record: profile.target.audit().join(&key)?,
                };
                put_json(s3, &pending_uri, &p).await?;
                p
            }
        };
        let record = AuditRecord::new(run, profile, approval, synced);
        put_json(s3, &pending.audit_record, &record).await?;
        let pointer = profile.target.audit().join("published.json")?;
        let published = PublishedPointer::new(
            &run.run_id,
            &run.backup,
            synced.root.clone(),
            synced.promoted_at,
            pending.audit_record.clone(),
        );
        put_json(s3, &pointer, &published).await?;
        let time_to_promotion = seconds(synced.promoted_at - run.kickoff_at);
        metrics::publish(
            &self.clients.cloudwatch,
            &run.input.profile,
            run.input.mode.as_str(),
            synced.promoted_at,
            vec![Sample::seconds("TimeToPromotionSeconds", time_to_promotion)],
        )
        .await?;
        let (before, stats) = (&synced.parity_before, &synced.stats);
        info!(run_id = %run.run_id, copied = stats.copied, identical = before.identical, drift = before.only_right, "promoted");
        Ok(PromoteDetails {
            promoted: true,
            approver: record.approver,
            ticket: record.ticket,
            bypass: record.bypass,
            objects_copied: stats.copied,
            bytes_copied: stats.bytes,
            objects_identical: before.identical,
            drift_objects: before.only_right,
            drift_deleted: stats.deleted,
            parity_before: before.clone(),
            parity_after: synced.parity_after.clone(),
            audit_record: pending.audit_record,
            pointer,
            copy_seconds: seconds(synced.promoted_at - synced.started),
            time_to_promotion_seconds: time_to_promotion,
        })
    }
}

/// What [`Promote::sync`] did.
struct Synced {
    root: S3Uri,
    started: DateTime<Utc>,
    promoted_at: DateTime<Utc>,
    parity_before: ParityCounts,
    parity_after: ParityCounts,
    stats: CopyStats,
}

impl AuditRecord {
    fn new(
        run: &RunContext,
        profile: &Profile,
        approval: Option<&Approval>,
        synced: &Synced,
    ) -> Self {
        Self {
            run_id: run.run_id.clone(),
            execution_arn: run.execution_arn.clone(),
            profile: run.input.profile.clone(),
            mode: run.input.mode.to_string(),
            approver: approval.map(|a| a.approver.clone()),
            ticket: approval.map(|a| a.ticket.clone()),
            approved_at: approval.and_then(|a| a.approved_at),
            bypass: approval.is_none(),
            backup_uri: run.backup.uri.clone(),
            backup_id: run.backup.backup_id.clone(),
            backup_created_at: run.backup.created_at,
            promoted_at: synced.promoted_at,
            objects_copied: synced.stats.copied,
            bytes_copied: synced.stats.bytes,
            objects_identical: synced.parity_before.identical,
            drift_objects: synced.parity_before.only_right,
            drift_pruned: profile.prune_drift,
            parity_before: synced.parity_before.clone(),
            parity_after: synced.parity_after.clone(),
        }
    }
}

/// Whether this run may promote: an approval with approver and ticket (or the drill-only
/// bypass), and not a dry run. Returns the approval (`None` under the bypass).
fn gate<'a>(run: &RunContext, approval: Option<&'a Approval>) -> Result<Option<&'a Approval>> {
    let approval = match approval {
        Some(a) if !a.approver.trim().is_empty() && !a.ticket.trim().is_empty() => Some(a),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::ApprovalMissing,
                "approval: approver and ticket must both be given",
            ))
        }
        None if run.input.approval_bypassed() => None,
        None => {
            return Err(Error::new(
                ErrorKind::ApprovalMissing,
                format!(
                    "run {} has no approval (approver and ticket); only a drill with auto_promote and allow_promote_bypass may promote without one",
                    run.run_id
                ),
            ))
        }
    };
    // That restore, validate and parity-report succeeded in order, on a staging still
    // there, the lifecycle checked before this.
    if run.input.dry_run {
        return Err(Error::input("dry_run: a dry run never promotes"));
    }
    Ok(approval)
}

/// Makes `root` hold what `staging` holds: one merge of the two listings; every staged
/// object missing or different in `root` is copied server-side (at most
/// `tuning.concurrency` at once) while the merge goes on; objects only in `root` are
/// deleted when `prune`. Returns the parity before, and what was done.
pub async fn sync_prefixes(
    s3: &aws_sdk_s3::Client,
    staging: &S3Uri,
    root: &S3Uri,
    prune: bool,
    tuning: CopyTuning,
) -> Result<(ParityCounts, CopyStats)> {
    let (tx, mut rx) = mpsc::channel::<(Difference, u64)>(1024);
    let compare = async {
        let counts = compare_prefixes(
            s3,
            staging,
            root,
            vec![RESERVED_PREFIX.to_owned()],
            async |step| {
                let work = match step {
                    Verdict::Identical(_) => None,
                    Verdict::Differs(d @ Difference::OnlyLeft { size, .. }) => Some((d, size)),
                    Verdict::Differs(d @ Difference::Size { left_size, .. }) => {
                        Some((d, left_size))
                    }
                    Verdict::Differs(d @ Difference::Checksum { .. }) => Some((d, 0)),
                    Verdict::Differs(d @ Difference::OnlyRight { .. }) => prune.then_some((d, 0)),
                };
                if let Some(work) = work {
                    tx.send(work)
                        .await
                        .map_err(|_| Error::internal("the copy workers stopped"))?;
                }
                Ok(())
            },
        )
        .await;
        drop(tx);
        counts
    };
    let copy = async {
        let permits = Arc::new(Semaphore::new(tuning.concurrency.max(1)));
        let mut tasks: JoinSet<Result<(u64, u64, u64)>> = JoinSet::new();
        let mut stats = CopyStats::default();
        let mut first_error = None;
        while let Some((difference, size)) = rx.recv().await {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::internal("copy semaphore closed"))?;
            let s3 = s3.clone();
            let (staging, root) = (staging.clone(), root.clone());
            tasks.spawn(async move {
                let _permit = permit;
                apply(&s3, &staging, &root, difference, size, tuning).await
            });
            while let Some(done) = tasks.try_join_next() {
                absorb(done, &mut stats, &mut first_error);
            }
        }
        while let Some(done) = tasks.join_next().await {
            absorb(done, &mut stats, &mut first_error);
        }
        first_error.map_or(Ok(stats), Err)
    };
    let (counts, stats) = tokio::join!(compare, copy);
    let stats = stats?;
    Ok((counts?, stats))
}

/// Makes `root` agree with `staging` on one difference: deletes an object only in
/// `root`, copies any other. Returns (copied, bytes, deleted).
async fn apply(
    s3: &aws_sdk_s3::Client,
    staging: &S3Uri,
    root: &S3Uri,
    difference: Difference,
    size: u64,
    tuning: CopyTuning,
) -> Result<(u64, u64, u64)> {
    let under =
        |prefix: &S3Uri, key: &str| prefix.join(key).map_err(|e| Error::contract(e.to_string()));
    if let Difference::OnlyRight { key, .. } = &difference {
        delete(s3, &under(root, key)?).await?;
        return Ok((0, 0, 1));
    }
    let key = difference.key();
    let (from, to) = (under(staging, key)?, under(root, key)?);
    // A checksum difference comes without the staged size (an empty object, asked
    // again, is still 0).
    let size = if size == 0 {
        object_size(s3, &from).await?
    } else {
        size
    };
    copy(s3, &from, &to, size, tuning).await?;
    Ok((1, size, 0))
}

fn absorb(
    done: std::result::Result<Result<(u64, u64, u64)>, tokio::task::JoinError>,
    stats: &mut CopyStats,
    first_error: &mut Option<Error>,
) {
    match done {
        Ok(Ok((copied, bytes, deleted))) => {
            stats.copied += copied;
            stats.bytes += bytes;
            stats.deleted += deleted;
        }
        Ok(Err(err)) => {
            first_error.get_or_insert(err);
        }
        Err(e) => {
            first_error.get_or_insert(Error::from(e));
        }
    }
}

/// `bucket/key` for `x-amz-copy-source`, percent-encoded (keys may hold any UTF-8).
fn copy_source(uri: &S3Uri) -> String {
    let mut out = format!("{}/", uri.bucket);
    for byte in uri.key.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

async fn delete(s3: &aws_sdk_s3::Client, uri: &S3Uri) -> Result<()> {
    s3.delete_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .send()
        .await
        .map_err(|e| Error::from_sdk(&format!("DeleteObject {uri}"), e))?;
    Ok(())
}

/// UploadPartCopy requests in flight for one large object.
const PART_COPY_CONCURRENCY: usize = 8;

/// Server-side copy keeping tags (the stored SHA-256) and metadata: CopyObject up to the
/// threshold, UploadPartCopy ranges above it.
async fn copy(
    s3: &aws_sdk_s3::Client,
    from: &S3Uri,
    to: &S3Uri,
    size: u64,
    tuning: CopyTuning,
) -> Result<()> {
    let source = copy_source(from);
    if size <= tuning.multipart_threshold {
        s3.copy_object()
            .bucket(&to.bucket)
            .key(&to.key)
            .copy_source(&source)
            .tagging_directive(TaggingDirective::Copy)
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("CopyObject {from} -> {to}"), e))?;
        return Ok(());
    }
    copy_in_parts(s3, from, to, size, part_size(size, tuning.part_size)).await
}

/// A multipart copy: UploadPartCopy ranges of `part_size`, in parallel, completed in
/// order; aborted if any part fails.
async fn copy_in_parts(
    s3: &aws_sdk_s3::Client,
    from: &S3Uri,
    to: &S3Uri,
    size: u64,
    part_size: u64,
) -> Result<()> {
    // UploadPartCopy carries no tags: read the source's and set them on the new object.
    let tags = s3
        .get_object_tagging()
        .bucket(&from.bucket)
        .key(&from.key)
        .send()
        .await
        .map_err(|e| Error::from_sdk(&format!("GetObjectTagging {from}"), e))?;
    let tagging = tags
        .tag_set()
        .iter()
        .map(|t| format!("{}={}", t.key(), t.value()))
        .collect::<Vec<_>>()
        .join("&");
    let upload = s3
        .create_multipart_upload()
        .bucket(&to.bucket)
        .key(&to.key)
        .set_tagging((!tagging.is_empty()).then_some(tagging))
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
        let parts = copy_parts(s3, from, to, &upload_id, ranges).await?;
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

/// The UploadPartCopy requests of one multipart copy, `PART_COPY_CONCURRENCY` at a time;
/// the completed parts in order.
async fn copy_parts(
    s3: &aws_sdk_s3::Client,
    from: &S3Uri,
    to: &S3Uri,
    upload_id: &str,
    ranges: Vec<(i32, u64, u64)>,
) -> Result<Vec<CompletedPart>> {
    let source = copy_source(from);
    futures::stream::iter(ranges)
        .map(|(number, start, end)| {
            let source = &source;
            async move {
                let out = s3
                    .upload_part_copy()
                    .bucket(&to.bucket)
                    .key(&to.key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .copy_source(source)
                    .copy_source_range(format!("bytes={start}-{end}"))
                    .send()
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
