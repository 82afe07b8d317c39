//! divergence: how both sites changed since the baseline the DR run started from (the
//! manifests of the backup it promoted), written as the plan (one JSON line per key
//! that is not unchanged, with its class and copy-back's action). Keys changed on both
//! sites differently stop the failback with `DivergenceError`, nothing copied, unless
//! the input sets `discard_divergent` (with approver and ticket): then the DR site's
//! versions win.

use drpilot_shared::failback::{DivergenceDetails, FailbackRun};
use drpilot_shared::parity::{DifferenceLog, INLINE_DIFFERENCES};
use drpilot_shared::phase::Failed;
use drpilot_shared::stage::FailbackStep;
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::{Error, ErrorKind, Result, S3Uri};
use tracing::info;

use crate::merge::{self, Class, Sides};
use crate::{Failback, FailbackStepOutput, StepClock};

impl Failback {
    pub(crate) async fn divergence(
        &self,
        run: &FailbackRun,
        attempt: u32,
    ) -> Result<FailbackStepOutput<DivergenceDetails>> {
        let profile = self.profiles.load(&run.input.profile).await?;
        let store = ReceiptStore::new(self.clients.s3.clone(), profile.receipts.clone());
        let clock = StepClock::start(
            &run.run_id,
            FailbackStep::Divergence,
            attempt,
            run.input.dry_run,
        );
        let ended = self.plan(run, &store).await.map(|d| (d.clone(), d));
        let (details, receipt) = clock.end(&store, ended).await?;
        Ok(FailbackStepOutput { receipt, details })
    }

    /// The sides a failback compares.
    pub(crate) fn sides<'a>(
        &'a self,
        run: &'a FailbackRun,
        primary_s3: &'a aws_sdk_s3::Client,
    ) -> Sides<'a> {
        Sides {
            dr_s3: &self.clients.s3,
            primary_s3,
            backup: &run.dr.backup.uri,
            dr_root: &run.dr_root,
            primary_root: &run.primary_root,
            baseline_taken_at: run.dr.backup.created_at,
            promoted_at: run.dr.promoted_at,
        }
    }

    async fn plan(
        &self,
        run: &FailbackRun,
        store: &ReceiptStore,
    ) -> std::result::Result<DivergenceDetails, Failed<DivergenceDetails>> {
        let primary_s3 = self.clients.s3_in(&run.primary_region);
        let sides = self.sides(run, &primary_s3);
        let mut log = DifferenceLog::new()?;
        let (mut divergent_keys, mut primary_changed_keys) = (Vec::new(), Vec::new());
        let counts = merge::survey(&sides, run.input.discard_divergent, async |verdict| {
            let keep = |keys: &mut Vec<String>| {
                if keys.len() < INLINE_DIFFERENCES {
                    keys.push(verdict.key.clone());
                }
            };
            match verdict.class {
                Class::Unchanged => return Ok(()),
                Class::Divergent => keep(&mut divergent_keys),
                Class::PrimaryChanged => keep(&mut primary_changed_keys),
                _ => {}
            }
            log.push(verdict)
        })
        .await?;
        let report = plan_uri(store, &run.run_id)?;
        let listed = if log.logged() == log.count() {
            "all of them are".to_owned()
        } else {
            format!("the first {} of its differences are", log.logged())
        };
        log.upload(&self.clients.s3, &report).await?;
        info!(run_id = %run.run_id, dr_changed = counts.dr_changed, primary_changed = counts.primary_changed, divergent = counts.divergent, "divergence measured");
        let details = DivergenceDetails {
            counts,
            report: report.clone(),
            divergent_keys,
            primary_changed_keys,
            discard_divergent: run.input.discard_divergent,
            approver: run.input.approver.clone(),
            ticket: run.input.ticket.clone(),
        };
        if details.counts.divergent > 0 && !run.input.discard_divergent {
            let error = Error::new(
                ErrorKind::DivergenceError,
                format!(
                    "{} keys changed on both sites differently since backup {} (e.g. {}); {listed} in {report}; nothing was copied. Reconcile them on the primary, or fail back with discard_divergent (and approver, ticket) to keep the DR site's versions",
                    details.counts.divergent,
                    run.dr.backup.backup_id,
                    details.divergent_keys.join(", ")
                ),
            );
            return Err(Failed::with_details(error, details));
        }
        Ok(details)
    }
}

/// `<receipts>/runs/<run_id>/failback/divergence.jsonl`: the plan.
pub fn plan_uri(store: &ReceiptStore, run_id: &str) -> Result<S3Uri> {
    store
        .run_dir(run_id)?
        .join("failback/divergence.jsonl")
        .map_err(|e| Error::input(format!("run_id: {e}")))
}
