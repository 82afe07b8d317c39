//! promote: makes the validated staging the production data. Refuses without an approval
//! (approver and ticket) unless the drill-only bypass applies, and refuses a run whose
//! restore or validate did not succeed. Copies staging into `root/` server-side, skipping
//! objects that are already identical (so a re-run after an interruption resumes), leaves
//! objects only in `root/` alone as drift unless the profile prunes them, re-checks
//! parity, and writes one audit record and the publish pointer.

use chrono::{DateTime, Utc};
use drpilot_shared::approval::{Seal, Sealer, DRILL_APPROVAL_STATE};
use drpilot_shared::archive::RESERVED_PREFIX;
use drpilot_shared::budget::RequestBudget;
use drpilot_shared::copy::{apply_changes, Change, Journal, CHANGE_BUFFER};
pub use drpilot_shared::copy::{CopyStats, CopyTuning};
use drpilot_shared::deadline;
use drpilot_shared::details::{PromoteDetails, Tally, ValidateDetails};
use drpilot_shared::fan_out::{self, FanOutPhase};
use drpilot_shared::listing::{list_sorted_in, Joined, MergeJoin};
use drpilot_shared::lock::RunLock;
use drpilot_shared::metrics::{self, Sample};
use drpilot_shared::objects::get_json;
use drpilot_shared::parity::{
    compare_ranges, Counts, Difference, ParityCounts, RangeFindings, Verdict,
};
use drpilot_shared::phase::{Failed, Outcome, PhaseResult, PhaseRun, Rerun};
use drpilot_shared::plan::{range_uri, Continuation, PlanItem, RangePass, RangeResult, Reduce};
use drpilot_shared::profile::{Profile, ProfileSource};
use drpilot_shared::published::{self, PublishKind, PublishedPointer};
use drpilot_shared::run::{PhaseOutput, PhaseRequest, RunContext, StepOutput};
use drpilot_shared::s3uri::KeyRange;
use drpilot_shared::stage::Phase;
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::time::seconds;
use drpilot_shared::{AwsClients, Error, ErrorKind, Result, S3Uri};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::info;

pub use drpilot_shared::approval::Approval;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    pub run: RunContext,
    #[serde(default)]
    pub retry_count: u32,
    #[serde(default)]
    pub approval: Option<Approval>,
    /// A child of the fan-out: the range it copies.
    #[serde(default)]
    pub range: Option<PlanItem>,
    /// The reducer, after the fan-out.
    #[serde(default)]
    pub reduce: Option<Reduce>,
    /// A range's child again: where its last pass stopped.
    #[serde(default)]
    pub continuation: Option<Continuation>,
}

impl PromoteRequest {
    /// The approval, and the request every heavy phase's step reads.
    fn into_parts(self) -> (Option<Approval>, PhaseRequest) {
        let request = PhaseRequest {
            run: self.run,
            retry_count: self.retry_count,
            range: self.range,
            reduce: self.reduce,
            continuation: self.continuation,
        };
        (self.approval, request)
    }
}

/// What a range's child of promote did: the range's parity before and after its copy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RangePromoted {
    pub parity_before: ParityCounts,
    pub parity_after: ParityCounts,
    pub stats: CopyStats,
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
    /// The IAM principal that approved (through the approve function); `null` on the
    /// local stack or under the bypass.
    #[serde(default)]
    pub principal: Option<String>,
    /// The principal is AWS's word (the Function URL's IAM context).
    #[serde(default)]
    pub principal_verified: bool,
    /// The approval's seal, which promote verified before copying; `null` under the bypass.
    #[serde(default)]
    pub seal: Option<Seal>,
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

pub struct Promote {
    pub clients: AwsClients,
    pub profiles: ProfileSource,
    pub tuning: CopyTuning,
    /// Verifies the approve function's seal on an approval (`DRPILOT_APPROVAL_KEY`).
    pub sealer: Option<Sealer>,
}

impl Promote {
    pub fn new(clients: AwsClients) -> Self {
        let clients = clients.for_function("promote");
        let profiles = ProfileSource::from_env(clients.ssm.clone());
        Self {
            sealer: Sealer::from_env(clients.kms()),
            clients,
            profiles,
            tuning: CopyTuning::default(),
        }
    }

    /// The Lambda's entry: the whole phase, its preparation, one range's child or the
    /// reducer, as the request says ([`PhaseRequest::step`]).
    pub async fn serve_step(&self, request: PromoteRequest) -> Result<StepOutput> {
        let (approval, request) = request.into_parts();
        fan_out::serve(&self.approved(approval.as_ref()), request).await
    }

    /// The whole phase (or its preparation or reducer); see [`Promote::serve_step`].
    pub async fn handle(&self, request: PromoteRequest) -> Result<PhaseOutput> {
        let (approval, request) = request.into_parts();
        fan_out::serve_phase(&self.approved(approval.as_ref()), request).await
    }

    /// Promote's steps for a request that carries `approval`.
    fn approved<'a>(&'a self, approval: Option<&'a Approval>) -> Approved<'a> {
        Approved {
            promote: self,
            approval,
        }
    }

    /// Before anything is copied: an approval (or the bypass), its seal verified, and no
    /// promotion or failback published since the run started. Returns the approval.
    async fn check<'a>(
        &self,
        ctx: &PhaseRun<'_>,
        approval: Option<&'a Approval>,
    ) -> Result<Option<&'a Approval>> {
        let approval = gate(ctx.run, ctx.profile, approval)?;
        if let Some(approval) = approval {
            self.verify(ctx.run, approval).await?;
        }
        self.still_locked(ctx).await?;
        published::ensure_live(
            &self.clients.s3,
            &ctx.profile.target.published(),
            ctx.run.published_generation,
            &ctx.run.run_id,
        )
        .await?;
        Ok(approval)
    }

    /// The run still holds its lock, unexpired: a run that outlived its lock TTL writes
    /// nothing over the run that took it.
    async fn still_locked(&self, ctx: &PhaseRun<'_>) -> Result<()> {
        RunLock::new(self.clients.s3.clone(), ctx.profile.target.lock())
            .ensure_held(&ctx.run.run_id, Utc::now())
            .await
    }

    /// The approval's seal, made by the approve function for this execution's approval
    /// wait.
    async fn verify(&self, run: &RunContext, approval: &Approval) -> Result<()> {
        Sealer::required(self.sealer.as_ref())?
            .verify(
                &run.run_id,
                run.execution_arn.as_deref(),
                DRILL_APPROVAL_STATE,
                approval,
            )
            .await
    }

    /// Before `prune_drift` deletes anything in `range` (the plan's range `index`, or the
    /// whole run): staging must still hold exactly the objects validate counted there (an
    /// emptied or thinned staging would make all of `root/` drift), and the drift to
    /// delete must stay within the profile's `prune_drift_max_percent` of `root/`'s
    /// objects in the range. One listing of each side, read-only; refused with
    /// `IntegrityError` before any write.
    async fn prune_guard(
        &self,
        ctx: &PhaseRun<'_>,
        range: &KeyRange,
        index: Option<u32>,
    ) -> Result<()> {
        let profile = ctx.profile;
        if !profile.prune_drift {
            return Ok(());
        }
        let run_id = &ctx.run.run_id;
        let validated = match index {
            None => {
                let receipt = ctx
                    .store
                    .get_phase(run_id, Phase::Validate)
                    .await?
                    .ok_or_else(|| Error::integrity(format!("run {run_id} has no validate receipt: nothing says what staging should hold")))?;
                receipt.details::<ValidateDetails>()?.tally.staged_objects
            }
            Some(index) => {
                let uri = range_uri(ctx.store, run_id, Phase::Validate, index)?;
                let result: RangeResult = get_json(&self.clients.s3, &uri)
                    .await?
                    .ok_or_else(|| Error::integrity(format!("{uri} is missing: nothing says what range {index}'s staging should hold")))?;
                result
                    .details::<RangeFindings<Tally>>()?
                    .counts
                    .staged_objects
            }
        };
        let staging = profile.target.staging(run_id)?;
        let root = profile.target.root();
        let (left, left_task) = list_sorted_in(
            self.clients.s3.clone(),
            &staging,
            vec![RESERVED_PREFIX.to_owned()],
            range.clone(),
        );
        let (right, right_task) =
            list_sorted_in(self.clients.s3.clone(), &root, Vec::new(), range.clone());
        let mut join = MergeJoin::new(left, right);
        let (mut staged, mut drift) = (0_u64, 0_u64);
        while let Some(step) = join.next().await? {
            match step {
                Joined::OnlyLeft(_) | Joined::Both(..) => staged += 1,
                Joined::OnlyRight(_) => drift += 1,
            }
        }
        left_task.abort();
        right_task.abort();
        let scope = index.map_or("the run".to_owned(), |i| format!("range {i}"));
        if staged != validated {
            return Err(Error::integrity(format!(
                "prune_drift: {staging} holds {staged} objects in {scope}, but validate counted {validated}: staging changed after validation; nothing is copied or deleted"
            )));
        }
        // The share of what the promotion touches (staging and root/ together) that it
        // would delete: a first promotion into a root/ of only stray objects is judged
        // against the backup's size, not refused for being 100% of a small root/.
        let touched = staged + drift;
        let limit = touched * u64::from(profile.prune_drift_max_percent) / 100;
        if drift > limit {
            return Err(Error::integrity(format!(
                "prune_drift: {drift} of the {touched} objects in {staging} and {root} ({scope}) are drift, more than prune_drift_max_percent {}% ({limit}) allows; nothing is copied or deleted (raise the limit in the profile if this is meant)",
                profile.prune_drift_max_percent
            )));
        }
        Ok(())
    }

    /// Copies the staging's keys in `range` (the plan's range `index`, or the whole run)
    /// into `root/` within `budget`, journaling each change, and compares them again; or,
    /// when the invocation's deadline comes first, stops with where it got to (`cursor`
    /// carries an earlier pass's, whose parity before is the range's).
    async fn sync(
        &self,
        run: &RunContext,
        profile: &Profile,
        range: &KeyRange,
        index: Option<u32>,
        budget: &RequestBudget,
        cursor: Option<PromoteCursor>,
    ) -> Result<RangePass<Synced, PromoteCursor>> {
        let staging = profile.target.staging(&run.run_id)?;
        let root = profile.target.root();
        let pass_started = Utc::now();
        let mut journal = Journal::new(
            self.clients.s3.clone(),
            journal_dir(&run.receipts(&self.clients.s3, profile), &run.run_id)?,
            format!(
                "{}-{}",
                pass_started.format("%Y%m%dT%H%M%S%.3fZ"),
                index.map_or("all".to_owned(), |i| format!("range{i:05}"))
            ),
        );
        let sides = SyncSides {
            staging: &staging,
            root: &root,
            range,
            prune: profile.prune_drift,
            stop_at: deadline::work_until().map(tokio::time::Instant::into_std),
        };
        let pass = Box::pin(sync_prefixes(
            &self.clients.s3,
            sides,
            self.tuning,
            budget,
            Some(&mut journal),
        ))
        .await?;
        let so_far = match cursor {
            Some(earlier) => PromoteCursor {
                stats: earlier.stats + pass.stats,
                ..earlier
            },
            None => PromoteCursor {
                started: pass_started,
                parity_before: pass.parity_before,
                stats: pass.stats,
            },
        };
        if pass.left > 0 {
            info!(
                left = pass.left,
                copied = pass.stats.copied,
                "stopped at the deadline"
            );
            let progress = pass.stats.copied + pass.stats.deleted;
            return Ok(RangePass::Stopped {
                cursor: so_far,
                progress,
            });
        }
        let parity_after = compare_ranges(
            &self.clients.s3,
            &staging,
            &root,
            vec![RESERVED_PREFIX.to_owned()],
            range,
            async |_| Ok(()),
        )
        .await?;
        Ok(RangePass::Done(Synced {
            root,
            started: so_far.started,
            promoted_at: Utc::now(),
            parity_before: so_far.parity_before,
            parity_after,
            stats: so_far.stats,
        }))
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
        // One audit record per run: its key is chosen once and remembered.
        let audit_record = store
            .audit_record_uri(
                &run.run_id,
                "promote.pending.json",
                &profile.target.audit(),
                "promotion",
                synced.promoted_at,
            )
            .await?;
        let record = AuditRecord::new(run, profile, approval, synced);
        let pointer = profile.target.published();
        let published = published::record_and_advance(
            store,
            &run.run_id,
            &record,
            &pointer,
            run.published_generation,
            PublishedPointer::new(
                &run.run_id,
                PublishKind::Promotion,
                &run.backup,
                synced.root.clone(),
                synced.promoted_at,
                audit_record.clone(),
            ),
        )
        .await?;
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
            principal: record.principal,
            principal_verified: record.principal_verified,
            sealed: record.seal.is_some(),
            bypass: record.bypass,
            objects_copied: stats.copied,
            bytes_copied: stats.bytes,
            objects_identical: before.identical,
            drift_objects: before.only_right,
            drift_deleted: stats.deleted,
            parity_before: before.clone(),
            parity_after: synced.parity_after.clone(),
            audit_record,
            pointer,
            generation: published.generation,
            copy_seconds: seconds(synced.promoted_at - synced.started),
            time_to_promotion_seconds: time_to_promotion,
        })
    }
}

/// Promote's steps for one request: its approval travels with every step, and each step
/// that copies or publishes checks it again (a step invoked on its own must not write
/// what no one approved).
struct Approved<'a> {
    promote: &'a Promote,
    approval: Option<&'a Approval>,
}

impl FanOutPhase for Approved<'_> {
    type Details = PromoteDetails;
    type RangeDetails = RangePromoted;
    type Cursor = PromoteCursor;
    /// One audit record per run: an earlier success is the answer.
    const RERUN: Rerun = Rerun::KeepSuccess;

    fn clients(&self) -> &AwsClients {
        &self.promote.clients
    }

    fn profiles(&self) -> &ProfileSource {
        &self.promote.profiles
    }

    /// The whole promotion in one invocation (a run without a plan): inline, outside the
    /// Map, it has no deadline to stop at.
    async fn whole(&self, ctx: &PhaseRun<'_>) -> PhaseResult<PromoteDetails> {
        let promote = self.promote;
        let approval = promote.check(ctx, self.approval).await?;
        promote.prune_guard(ctx, &KeyRange::all(), None).await?;
        let budget = RequestBudget::writes_for_run(None, false);
        let synced = match promote
            .sync(ctx.run, ctx.profile, &KeyRange::all(), None, &budget, None)
            .await?
        {
            RangePass::Done(synced) => synced,
            RangePass::Stopped { .. } => {
                return Err(Error::internal("a promotion without a deadline stopped").into())
            }
        };
        let synced = synced.checked(Utc::now())?;
        let details = promote
            .audit(ctx.run, ctx.profile, ctx.store, approval, &synced)
            .await?;
        Ok(Outcome::Done(details))
    }

    /// The approval and the publish pointer, checked once before any range copies.
    async fn prepare(&self, ctx: &PhaseRun<'_>) -> std::result::Result<(), Failed<PromoteDetails>> {
        self.promote.check(ctx, self.approval).await?;
        Ok(())
    }

    /// One range's child: it checks the approval itself, then copies its range from where
    /// `cursor` says an earlier pass stopped.
    async fn range(
        &self,
        ctx: &PhaseRun<'_>,
        item: &PlanItem,
        cursor: Option<PromoteCursor>,
    ) -> Result<RangePass<RangePromoted, PromoteCursor>> {
        let promote = self.promote;
        gate(ctx.run, ctx.profile, self.approval)?;
        if let Some(approval) = self.approval {
            promote.verify(ctx.run, approval).await?;
        }
        promote.still_locked(ctx).await?;
        promote
            .prune_guard(ctx, &item.range, Some(item.index))
            .await?;
        let budget = RequestBudget::writes_for_child(&promote.clients.s3, ctx.store, ctx.run)?;
        let pass = promote
            .sync(
                ctx.run,
                ctx.profile,
                &item.range,
                Some(item.index),
                &budget,
                cursor,
            )
            .await?;
        Ok(match pass {
            RangePass::Done(synced) => RangePass::Done(RangePromoted {
                parity_before: synced.parity_before,
                parity_after: synced.parity_after,
                stats: synced.stats,
            }),
            RangePass::Stopped { cursor, progress } => RangePass::Stopped { cursor, progress },
        })
    }

    /// The reducer: the ranges' copies added up, then the audit record and the pointer.
    async fn reduce(
        &self,
        ctx: &PhaseRun<'_>,
        reduce: &Reduce,
        results: Vec<RangeResult>,
    ) -> PhaseResult<PromoteDetails> {
        let promote = self.promote;
        let approval = promote.check(ctx, self.approval).await?;
        let mut synced = Synced {
            root: ctx.profile.target.root(),
            started: reduce.started_at,
            promoted_at: Utc::now(),
            parity_before: ParityCounts::default(),
            parity_after: ParityCounts::default(),
            stats: CopyStats::default(),
        };
        for result in &results {
            let range: RangePromoted = result.details()?;
            synced.parity_before.add(&range.parity_before);
            synced.parity_after.add(&range.parity_after);
            synced.stats = synced.stats + range.stats;
        }
        let synced = synced.checked(Utc::now())?;
        let details = promote
            .audit(ctx.run, ctx.profile, ctx.store, approval, &synced)
            .await?;
        Ok(Outcome::Done(details))
    }
}

/// Where a range's child of promote stopped (its continuation's cursor): when its
/// first pass began, the range's parity before it, and what the passes copied.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteCursor {
    started: DateTime<Utc>,
    parity_before: ParityCounts,
    stats: CopyStats,
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

impl Synced {
    /// Refuses a promotion that left a staged object out (`IntegrityError`); the
    /// promotion's time is `at`.
    fn checked(mut self, at: DateTime<Utc>) -> Result<Self> {
        let after = &self.parity_after;
        let unpromoted = after.only_left + after.size_differs + after.checksum_differs;
        if unpromoted > 0 {
            return Err(Error::integrity(format!(
                "after promotion {unpromoted} staged objects still differ from {} ({after:?})",
                self.root
            )));
        }
        self.promoted_at = at;
        Ok(self)
    }
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
            principal: approval.and_then(|a| a.principal.clone()),
            principal_verified: approval.is_some_and(|a| a.verified),
            seal: approval.and_then(|a| a.seal.clone()),
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
/// bypass, where the profile allows it), and not a dry run. Returns the approval (`None`
/// under the bypass).
fn gate<'a>(
    run: &RunContext,
    profile: &Profile,
    approval: Option<&'a Approval>,
) -> Result<Option<&'a Approval>> {
    let approval = match approval {
        Some(a) if !a.approver.trim().is_empty() && !a.ticket.trim().is_empty() => Some(a),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::ApprovalMissing,
                "approval: approver and ticket must both be given",
            ))
        }
        None if run.input.approval_bypassed() && profile.allow_drill_promote_bypass => None,
        None if run.input.approval_bypassed() => {
            return Err(Error::new(
                ErrorKind::ApprovalMissing,
                format!(
                    "run {} asks for the approval bypass, but profile {} does not allow it (allow_drill_promote_bypass); approve it with drpilot approve",
                    run.run_id, run.input.profile
                ),
            ))
        }
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

/// Where a run's promotion journal goes: `<receipts>runs/<run>/journal/promote/`, one
/// file per batch of changes ([`Journal`]).
pub fn journal_dir(store: &ReceiptStore, run_id: &str) -> Result<S3Uri> {
    Ok(store.run_dir(run_id)?.join("journal/promote")?.as_prefix())
}

/// What [`sync_prefixes`] makes agree: `root` with `staging`, over `range`, deleting
/// what only `root` holds when `prune`; no change is started past `stop_at`.
#[derive(Clone, Copy, Debug)]
pub struct SyncSides<'a> {
    pub staging: &'a S3Uri,
    pub root: &'a S3Uri,
    pub range: &'a KeyRange,
    pub prune: bool,
    pub stop_at: Option<std::time::Instant>,
}

/// What one [`sync_prefixes`] pass found and did.
#[derive(Clone, Debug)]
pub struct SyncPass {
    /// The two sides compared before this pass changed anything.
    pub parity_before: ParityCounts,
    pub stats: CopyStats,
    /// Changes the comparison found but did not start: its deadline had come.
    pub left: u64,
}

/// Makes `root` hold what `staging` holds: one merge of the two listings; every staged
/// object missing or different in `root` is copied server-side (by the shared copy
/// engine, at most `tuning.concurrency` at once) while the merge goes on; objects only in
/// `root` are deleted when `prune`; each change made goes to `journal`. Past `stop_at`
/// the comparison goes on (the parity before is whole) but starts no change.
pub async fn sync_prefixes(
    s3: &aws_sdk_s3::Client,
    sides: SyncSides<'_>,
    tuning: CopyTuning,
    budget: &RequestBudget,
    journal: Option<&mut Journal>,
) -> Result<SyncPass> {
    let SyncSides {
        staging,
        root,
        range,
        prune,
        stop_at,
    } = sides;
    let mut left = 0u64;
    // With a deadline, the queue holds no more than the copies in flight: what is queued
    // when the deadline comes is still copied, at the budget's pace, inside the margin
    // the invocation keeps after its work (`deadline::work_until`).
    let capacity = match stop_at {
        Some(_) => tuning.concurrency.max(1),
        None => CHANGE_BUFFER,
    };
    let (tx, rx) = mpsc::channel::<Change>(capacity);
    // The keys come from listing these prefixes: any key S3 holds there (a folder
    // marker in root/) must be copied or pruned like the others, not fail every retry.
    let under = |prefix: &S3Uri, key: &str| -> Result<S3Uri> { Ok(prefix.listed(key)) };
    let compare = async {
        let counts = compare_ranges(
            s3,
            staging,
            root,
            vec![RESERVED_PREFIX.to_owned()],
            range,
            async |step| {
                let copy = |key: &str, size: Option<u64>| -> Result<Change> {
                    Ok(Change::Copy {
                        from: under(staging, key)?,
                        to: under(root, key)?,
                        size,
                    })
                };
                let change = match step {
                    Verdict::Identical(_) => None,
                    Verdict::Differs(Difference::OnlyLeft { key, size }) => {
                        Some(copy(&key, Some(size))?)
                    }
                    Verdict::Differs(Difference::Size { key, left_size, .. }) => {
                        Some(copy(&key, Some(left_size))?)
                    }
                    Verdict::Differs(Difference::Checksum { key, .. }) => Some(copy(&key, None)?),
                    Verdict::Differs(Difference::OnlyRight { key, .. }) if prune => {
                        Some(Change::Delete(under(root, &key)?))
                    }
                    Verdict::Differs(Difference::OnlyRight { .. }) => None,
                };
                let Some(change) = change else {
                    return Ok(());
                };
                if stop_at.is_some_and(|at| std::time::Instant::now() >= at) {
                    left += 1;
                } else {
                    tx.send(change)
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
    let (counts, stats) = tokio::join!(compare, apply_changes(s3, rx, tuning, budget, journal));
    let stats = stats?;
    Ok(SyncPass {
        parity_before: counts?,
        stats,
        left,
    })
}
