//! copy-back: with two confirmations, makes the primary hold the DR site's changes. One
//! more pass of the three-way comparison feeds promote's copy engine (server-side,
//! skipping what is already the same, so a re-run after an interruption resumes where it
//! stopped); the primary's own changes stay; a key that became divergent since the
//! divergence step is left alone and fails the step. A recount proves nothing of the DR
//! site's is missing, then the audit record is written and the next generation published.

use chrono::{DateTime, Utc};
use drpilot_shared::approval::{Approval, Sealer, FAILBACK_CONFIRMATION_STATES};
use drpilot_shared::budget::{RequestBudget, PREFIX_PUT_RATE};
use drpilot_shared::copy::{apply_changes, Change, CopyStats, CopyTuning, Journal, CHANGE_BUFFER};
use drpilot_shared::failback::{
    Confirmation, CopyBackDetails, DivergenceCounts, DivergenceDetails, FailbackRun,
};
use drpilot_shared::input::Mode;
use drpilot_shared::lock::RunLock;
use drpilot_shared::parity::ParityCounts;
use drpilot_shared::phase::Failed;
use drpilot_shared::profile::Profile;
use drpilot_shared::published::{self, PublishKind, PublishedPointer};
use drpilot_shared::receipt::PhaseStatus;
use drpilot_shared::stage::FailbackStep;
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::time::seconds;
use drpilot_shared::{Error, ErrorKind, Result, S3Uri};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::info;

use crate::divergence::plan_uri;
use crate::merge::{self, Action, Class, Sides};
use crate::{Failback, FailbackStepOutput, StepClock};

impl Failback {
    pub(crate) async fn copy_back(
        &self,
        run: &FailbackRun,
        answers: Option<&[Value]>,
        attempt: u32,
    ) -> Result<FailbackStepOutput<CopyBackDetails>> {
        let profile = self.profiles.load(&run.input.profile).await?;
        let store = ReceiptStore::new(self.clients.s3.clone(), profile.receipts.clone());
        // A re-run after success changes nothing more.
        if let Some(done) = store
            .get_failback(&run.run_id, FailbackStep::CopyBack)
            .await?
        {
            if done.status == PhaseStatus::Success {
                let details = serde_json::from_value(done.details).map_err(|e| {
                    Error::integrity(format!(
                        "the copy-back receipt of failback {}: {e}",
                        run.run_id
                    ))
                })?;
                return Ok(FailbackStepOutput {
                    receipt: store.failback_uri(&run.run_id, FailbackStep::CopyBack)?,
                    details,
                });
            }
        }
        let clock = StepClock::start(
            &run.run_id,
            FailbackStep::CopyBack,
            attempt,
            run.input.dry_run,
        );
        let ended = Box::pin(self.copy(run, &profile, &store, answers))
            .await
            .map(|d| (d.clone(), d));
        let (details, receipt) = clock.end(&store, ended).await?;
        Ok(FailbackStepOutput { receipt, details })
    }

    /// Renews this failback's lock for the copy (the approvals may have waited long
    /// enough for it to expire and another run to take it) and checks that the publish
    /// pointer is still at the generation the failback started against; answers the
    /// pointer's location.
    async fn renew_lock(&self, run: &FailbackRun, profile: &Profile) -> Result<S3Uri> {
        let ttl = profile.lock_ttl();
        RunLock::new(self.clients.s3.clone(), profile.target.lock())
            .acquire(&run.run_id, run.execution_arn.as_deref(), ttl)
            .await?;
        let pointer = profile.target.published();
        published::ensure_live(
            &self.clients.s3,
            &pointer,
            run.published_generation,
            &run.run_id,
        )
        .await?;
        Ok(pointer)
    }

    /// What the copy changes on the primary, batch by batch, failure or not, under the
    /// run's `failback/journal/`.
    fn journal(
        &self,
        store: &ReceiptStore,
        run: &FailbackRun,
        started: DateTime<Utc>,
    ) -> Result<Journal> {
        Ok(Journal::new(
            self.clients.s3.clone(),
            store
                .run_dir(&run.run_id)?
                .join("failback/journal")
                .map_err(|e| Error::internal(format!("journal location: {e}")))?,
            started.format("%Y%m%dT%H%M%S%.3fZ").to_string(),
        ))
    }

    async fn copy(
        &self,
        run: &FailbackRun,
        profile: &Profile,
        store: &ReceiptStore,
        answers: Option<&[Value]>,
    ) -> std::result::Result<CopyBackDetails, Failed<CopyBackDetails>> {
        if run.input.dry_run {
            return Err(Error::input("dry_run: a dry run never copies").into());
        }
        let confirmations = confirmations(run, answers, self.sealer.as_ref()).await?;
        let (divergence_started, divergence) = succeeded_divergence(store, run).await?;
        let pointer = self.renew_lock(run, profile).await?;

        let started = Utc::now();
        let primary_s3 = self.clients.s3_in(&run.primary_region);
        let sides = self.sides(run, &primary_s3);
        let discard_before = run.input.discard_divergent.then_some(divergence_started);
        let Copied {
            stats,
            refused,
            refused_keys,
            overwritten,
            ..
        } = {
            let mut journal = self.journal(store, run, started)?;
            Box::pin(copy_changes(
                &sides,
                discard_before,
                &primary_s3,
                self.tuning,
                Some(&mut journal),
            ))
            .await?
        };
        if refused > 0 {
            return Err(Error::new(
                ErrorKind::DivergenceError,
                format!(
                    "{refused} keys became divergent on the primary after the divergence step (e.g. {}): left as the primary has them; the DR site's other changes were copied. Reconcile them and fail back again (a new divergence step shows them)",
                    refused_keys.join(", ")
                ),
            )
            .into());
        }

        let (parity_after, remaining) = recount(&sides, store, run).await?;
        let failed_back_at = Utc::now();
        let audit_record = store
            .audit_record_uri(
                &run.run_id,
                "failback/audit.pending.json",
                &profile.target.audit(),
                "failback",
                failed_back_at,
            )
            .await?;
        // The audit record first: it records a copy that happened, whatever becomes of
        // the publication after it (as promote's does).
        let audit = audit(
            run,
            &confirmations,
            &divergence,
            plan_uri(store, &run.run_id)?,
            &stats,
            &parity_after,
            failed_back_at,
        );
        let published = published::record_and_advance(
            store,
            &run.run_id,
            &audit,
            &pointer,
            run.published_generation,
            PublishedPointer::new(
                &run.run_id,
                PublishKind::Failback,
                &run.dr.backup,
                run.primary_root.clone(),
                failed_back_at,
                audit_record.clone(),
            ),
        )
        .await?;
        info!(run_id = %run.run_id, copied = stats.copied, deleted = stats.deleted, generation = published.generation, "failed back");
        Ok(CopyBackDetails {
            confirmations,
            objects_copied: stats.copied,
            bytes_copied: stats.bytes,
            objects_deleted: stats.deleted,
            divergent_overwritten: overwritten,
            remaining,
            parity_after,
            audit_record,
            pointer,
            generation: published.generation,
            copy_seconds: seconds(failed_back_at - started),
        })
    }
}

/// What [`copy_changes`] did.
#[derive(Clone, Debug, Default)]
pub struct Copied {
    /// The comparison's counts as it found the sites (before its copies).
    pub counts: DivergenceCounts,
    pub stats: CopyStats,
    /// How many divergent keys were left alone, and the first few of them.
    pub refused: u64,
    pub refused_keys: Vec<String>,
    /// Divergent keys where the DR site's version replaced the primary's.
    pub overwritten: u64,
}

/// How many refused keys an error names.
const NAMED_KEYS: usize = 10;

/// One pass of the three-way comparison feeding the copy engine: every key the DR site
/// changed is made on the primary as the DR site has it, `tuning.concurrency` copies at
/// once while the comparison goes on. A divergent key too when `discard_before` is set
/// and the primary's version was written before it (the divergence step's start: what
/// the people who accepted discarding were shown); a primary write after it is left
/// alone and counted as refused.
pub async fn copy_changes(
    sides: &Sides<'_>,
    discard_before: Option<DateTime<Utc>>,
    primary_s3: &aws_sdk_s3::Client,
    tuning: CopyTuning,
    journal: Option<&mut Journal>,
) -> Result<Copied> {
    let (tx, rx) = mpsc::channel::<Change>(CHANGE_BUFFER);
    let (mut refused, mut refused_keys, mut overwritten) = (0_u64, Vec::new(), 0_u64);
    let plan = async {
        let counts = merge::survey(sides, false, async |verdict| {
            // Listed keys, whatever S3 holds (folder markers included).
            let at = |root: &S3Uri| -> Result<S3Uri> { Ok(root.listed(&verdict.key)) };
            let discarded = discard_before.is_some_and(|t| {
                verdict
                    .primary
                    .as_ref()
                    .and_then(|p| p.last_modified)
                    .is_some_and(|m| m.timestamp() < t.timestamp())
            });
            let action = match verdict.action {
                Action::Refuse if discarded => merge::dr_version(verdict.dr.is_some()),
                action => action,
            };
            let change = match action {
                Action::None => return Ok(()),
                Action::Refuse => {
                    refused += 1;
                    if refused_keys.len() < NAMED_KEYS {
                        refused_keys.push(verdict.key.clone());
                    }
                    return Ok(());
                }
                Action::Copy => Change::Copy {
                    from: at(sides.dr_root)?,
                    to: at(sides.primary_root)?,
                    size: verdict.dr_size,
                },
                Action::Delete => Change::Delete(at(sides.primary_root)?),
            };
            if verdict.class == Class::Divergent {
                overwritten += 1;
            }
            tx.send(change)
                .await
                .map_err(|_| Error::internal("the copy workers stopped"))
        })
        .await;
        drop(tx);
        counts
    };
    let budget = RequestBudget::new(PREFIX_PUT_RATE);
    let (counts, stats) = tokio::join!(
        plan,
        apply_changes(primary_s3, rx, tuning, &budget, journal)
    );
    let stats = stats?;
    Ok(Copied {
        counts: counts?,
        stats,
        refused,
        refused_keys,
        overwritten,
    })
}

/// The two confirmations: a drill's literal ones (checked by preflight), or two
/// approvals with approver and ticket by two different people.
/// The two confirmations: the drill's literals, or two sealed approvals by two approvers
/// (and, where the principals are known, two principals).
async fn confirmations(
    run: &FailbackRun,
    answers: Option<&[Value]>,
    sealer: Option<&Sealer>,
) -> Result<Vec<Confirmation>> {
    if run.literal_confirmations {
        return Ok([&run.input.confirm1, &run.input.confirm2]
            .into_iter()
            .map(|literal| Confirmation {
                approver: literal.clone().unwrap_or_default(),
                ticket: None,
                approved_at: None,
                kind: "literal".into(),
                principal: None,
                verified: false,
            })
            .collect());
    }
    let missing = |why: String| Error::new(ErrorKind::ApprovalMissing, why);
    let answers = answers.unwrap_or_default();
    if answers.len() != 2 {
        return Err(missing(format!(
            "confirmations: a failback needs two approvals by two approvers, got {}",
            answers.len()
        )));
    }
    let mut out: Vec<Confirmation> = Vec::new();
    for (i, answer) in answers.iter().enumerate() {
        let answer: Approval = serde_json::from_value(answer.clone()).map_err(|e| {
            missing(format!(
                "confirmations[{i}]: expected {{approver, ticket}}: {e}"
            ))
        })?;
        let (approver, ticket) = (answer.approver.trim(), answer.ticket.trim());
        if approver.is_empty() || ticket.is_empty() {
            return Err(missing(format!(
                "confirmations[{i}]: approver and ticket must both be given"
            )));
        }
        if out
            .iter()
            .any(|c| c.approver.eq_ignore_ascii_case(approver))
        {
            return Err(missing(format!(
                "confirmations[{i}]: {approver} already confirmed; the second confirmation must come from another approver"
            )));
        }
        let state = FAILBACK_CONFIRMATION_STATES[i.min(1)];
        Sealer::required(sealer)?
            .verify(&run.run_id, run.execution_arn.as_deref(), state, &answer)
            .await
            .map_err(|e| match e.kind {
                // Only a refused seal is a missing confirmation; a KMS fault stays what it
                // is (Retryable is retried).
                ErrorKind::ApprovalMissing => missing(format!("confirmations[{i}]: {}", e.message)),
                _ => e,
            })?;
        if let Some(principal) = answer.principal.as_deref() {
            if out
                .iter()
                .any(|c| c.principal.as_deref() == Some(principal))
            {
                return Err(missing(format!(
                    "confirmations[{i}]: {principal} already confirmed; the second confirmation must come from another principal"
                )));
            }
        }
        out.push(Confirmation {
            approver: approver.to_owned(),
            ticket: Some(ticket.to_owned()),
            approved_at: answer.approved_at,
            kind: "approval".into(),
            principal: answer.principal.clone(),
            verified: answer.verified,
        });
    }
    Ok(out)
}

/// The divergence step's receipt, which copy-back builds on: when it started (what a
/// discard of divergent keys is measured against) and its details. It must have succeeded.
async fn succeeded_divergence(
    store: &ReceiptStore,
    run: &FailbackRun,
) -> Result<(DateTime<Utc>, DivergenceDetails)> {
    let divergence = store
        .get_failback(&run.run_id, FailbackStep::Divergence)
        .await?
        .filter(|r| r.status == PhaseStatus::Success)
        .ok_or_else(|| {
            Error::input(format!(
                "copy-back: the divergence step of failback {} has not succeeded",
                run.run_id
            ))
        })?;
    let started = divergence.started_at;
    let details: DivergenceDetails = serde_json::from_value(divergence.details).map_err(|e| {
        Error::integrity(format!(
            "the divergence receipt of failback {}: {e}",
            run.run_id
        ))
    })?;
    Ok((started, details))
}

/// The recount after the copy: nothing of the DR site's changes may be missing on the
/// primary. Answers the parity after the copy and what the survey still found.
async fn recount(
    sides: &Sides<'_>,
    store: &ReceiptStore,
    run: &FailbackRun,
) -> Result<(ParityCounts, DivergenceCounts)> {
    let mut parity_after = ParityCounts::default();
    let mut missing_keys = Vec::new();
    let remaining = merge::survey(sides, false, async |verdict| {
        merge::parity_step(&mut parity_after, verdict);
        let left_out = matches!(
            verdict.class,
            Class::DrChanged | Class::Divergent | Class::PrimaryMissing
        );
        if left_out && missing_keys.len() < NAMED_KEYS {
            missing_keys.push(verdict.key.clone());
        }
        Ok(())
    })
    .await?;
    let missing = remaining.dr_changed + remaining.divergent + remaining.primary_missing;
    if missing > 0 {
        return Err(Error::integrity(format!(
            "after the copy {missing} of the DR site's objects are still not on the primary (e.g. {}; counts {remaining:?}); the plan is {}",
            missing_keys.join(", "),
            plan_uri(store, &run.run_id)?
        )));
    }
    Ok((parity_after, remaining))
}

/// The failback's audit record, `audit/failbacks/failback-<UTC timestamp>.json` in the
/// target bucket (its evidence copy under the run's receipts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailbackAudit {
    pub run_id: String,
    pub execution_arn: Option<String>,
    pub profile: String,
    pub mode: Mode,
    pub dr_run_id: String,
    pub dr_audit_record: S3Uri,
    pub from: S3Uri,
    pub to: S3Uri,
    pub confirmations: Vec<Confirmation>,
    pub discard_divergent: bool,
    pub discard_approver: Option<String>,
    pub discard_ticket: Option<String>,
    pub divergence: DivergenceCounts,
    pub divergence_report: S3Uri,
    pub objects_copied: u64,
    pub bytes_copied: u64,
    pub objects_deleted: u64,
    pub parity_after: ParityCounts,
    pub generation: u64,
    pub failed_back_at: DateTime<Utc>,
}

/// The failback's audit record: what the copy changed on the primary, by whose
/// confirmations, against which divergence.
fn audit(
    run: &FailbackRun,
    confirmations: &[Confirmation],
    divergence: &DivergenceDetails,
    divergence_report: S3Uri,
    stats: &CopyStats,
    parity_after: &ParityCounts,
    failed_back_at: DateTime<Utc>,
) -> FailbackAudit {
    FailbackAudit {
        run_id: run.run_id.clone(),
        execution_arn: run.execution_arn.clone(),
        profile: run.input.profile.clone(),
        mode: run.mode,
        dr_run_id: run.dr.run_id.clone(),
        dr_audit_record: run.dr.audit_record.clone(),
        from: run.dr_root.clone(),
        to: run.primary_root.clone(),
        confirmations: confirmations.to_vec(),
        discard_divergent: run.input.discard_divergent,
        discard_approver: run.input.approver.clone(),
        discard_ticket: run.input.ticket.clone(),
        divergence: divergence.counts.clone(),
        divergence_report,
        objects_copied: stats.copied,
        bytes_copied: stats.bytes,
        objects_deleted: stats.deleted,
        parity_after: parity_after.clone(),
        generation: run.published_generation + 1,
        failed_back_at,
    }
}
