//! preflight: whether this failback may start, every check receipted. The input first
//! (nothing is read before it is valid), then the read-only checks, all of them run so
//! the receipt shows each; the lock is taken only when every one passed.

use aws_sdk_scheduler::types::ScheduleState;
use chrono::{DateTime, Utc};
use drpilot_shared::backup::BackupRef;
use drpilot_shared::details::PromoteDetails;
use drpilot_shared::failback::{
    DrPromotion, FailbackInput, FailbackRun, PreflightCheck, PreflightDetails,
};
use drpilot_shared::input::{Mode, NameRule};
use drpilot_shared::lock::RunLock;
use drpilot_shared::objects::get_json;
use drpilot_shared::phase::Failed;
use drpilot_shared::profile::{Primary, Profile};
use drpilot_shared::published::{PublishKind, Published};
use drpilot_shared::receipt::PhaseStatus;
use drpilot_shared::record::ExecutionName;
use drpilot_shared::run::ExecutionInfo;
use drpilot_shared::stage::FailbackStep;
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::{Error, ErrorKind, Phase, Result, S3Uri};
use serde::Deserialize;
use serde_json::Value;
use tracing::info;

use crate::{Failback, StepClock};

/// What preflight reads of the DR run's audit record (promote writes more).
#[derive(Deserialize)]
struct PromotionAudit {
    run_id: String,
    mode: Mode,
    backup_uri: S3Uri,
    backup_id: String,
    backup_created_at: DateTime<Utc>,
    promoted_at: DateTime<Utc>,
}

/// The run id: the input's, else the execution name's run part.
pub fn run_id(input: &FailbackInput, execution: &ExecutionInfo) -> Result<String> {
    if let Some(id) = &input.run_id {
        return Ok(id.clone());
    }
    let run_id = execution
        .name
        .as_deref()
        .map(|name| ExecutionName::parse(name).run_id)
        .ok_or_else(|| Error::input("run_id: not given and the execution has no name"))?;
    NameRule::RUN_ID
        .check(&run_id)
        .and_then(|()| NameRule::check_run_kind(&run_id, true))
        .map_err(|why| Error::input(format!("run_id (from the execution name): {why}")))?;
    Ok(run_id)
}

impl Failback {
    pub(crate) async fn preflight(
        &self,
        raw: &Value,
        execution: &ExecutionInfo,
        attempt: u32,
    ) -> Result<FailbackRun> {
        let input = FailbackInput::from_json(raw)?;
        let run_id = run_id(&input, execution)?;
        let profile = self.profiles.load(&input.profile).await?;
        let primary = profile.primary.clone().ok_or_else(|| {
            Error::input(format!(
                "profile: {:?} names no primary site (primary: {{bucket, root_prefix, region}}): there is nothing to fail back to",
                input.profile
            ))
        })?;
        let store = ReceiptStore::new(self.clients.s3.clone(), profile.receipts.clone());
        let clock = StepClock::start(&run_id, FailbackStep::Preflight, attempt, input.dry_run);
        let ended = self
            .check(&run_id, &input, execution, &profile, &primary, &store)
            .await;
        let (run, _) = clock.end(&store, ended).await?;
        info!(run_id = %run.run_id, dr_run_id = %run.dr.run_id, generation = run.published_generation, "failback may start");
        Ok(run)
    }

    async fn check(
        &self,
        run_id: &str,
        input: &FailbackInput,
        execution: &ExecutionInfo,
        profile: &Profile,
        primary: &Primary,
        store: &ReceiptStore,
    ) -> std::result::Result<(FailbackRun, PreflightDetails), Failed<PreflightDetails>> {
        let mut checks = Checks::default();

        let dr = self.dr_promotion(store, &input.dr_run_id).await;
        checks.record(
            "dr_promoted",
            dr.as_ref()
                .map(|d| {
                    format!(
                        "run {} ({}) promoted backup {} at {}; audit record {}",
                        d.run_id,
                        d.mode,
                        d.backup.backup_id,
                        d.promoted_at.to_rfc3339(),
                        d.audit_record
                    )
                })
                .map_err(Clone::clone),
        );
        let generation = self.generation(profile, run_id, &input.dr_run_id).await;
        checks.record(
            "generation",
            generation
                .as_ref()
                .map(|g| {
                    format!(
                        "{} is at generation {g}, the DR run's",
                        profile.target.published()
                    )
                })
                .map_err(Clone::clone),
        );
        checks.record("schedule", self.schedule_disabled().await);
        let primary_region = primary
            .region
            .clone()
            .unwrap_or_else(|| profile.region.clone());
        checks.record(
            "primary_reachable",
            self.primary_reachable(primary, &primary_region).await,
        );
        // A failback is what its DR run was: a drill's may confirm with the literals, a
        // recovery's needs two approvers, whatever the input says.
        let mode = dr.as_ref().ok().map_or(Mode::Recovery, |d| d.mode);
        if let Some(mismatch) = dr.as_ref().ok().and_then(|d| mode_mismatch(input, d)) {
            checks.record("mode", Err(mismatch));
        }
        if input.has_literals() {
            checks.record("confirmations", literal_confirmations(input, mode, profile));
        }
        let lock = RunLock::new(self.clients.s3.clone(), profile.target.lock());
        let free = self.lock_free(&lock, run_id).await;
        let free_detail = free.as_ref().ok().cloned();
        checks.record("lock", free);
        let Checks {
            mut details,
            first_failure,
        } = checks;
        if let Some(err) = first_failure {
            return Err(Failed::with_details(err, details));
        }
        let (Ok(dr), Ok(generation)) = (dr, generation) else {
            return Err(
                Error::internal("preflight passed without the DR run or the generation").into(),
            );
        };
        if !input.dry_run {
            let ttl = profile.lock_ttl();
            let acquired = lock
                .acquire(run_id, execution.arn.as_deref(), ttl)
                .await
                .map_err(|e| Failed::with_details(e, details.clone()))?;
            if let Some(check) = details.checks.iter_mut().find(|c| c.name == "lock") {
                check.detail = format!("{}; taken: {acquired:?}", free_detail.unwrap_or_default());
            }
        }
        let run = FailbackRun {
            run_id: run_id.to_owned(),
            input: input.clone(),
            mode,
            execution_arn: execution.arn.clone(),
            kickoff_at: execution.start_time.unwrap_or_else(Utc::now),
            dr,
            dr_root: profile.target.root(),
            primary_root: primary.root(),
            primary_region,
            published_generation: generation,
            literal_confirmations: input.has_literals(),
        };
        Ok((run, details))
    }

    /// The DR run's promotion: a successful promote receipt whose audit record exists.
    async fn dr_promotion(&self, store: &ReceiptStore, dr_run_id: &str) -> Result<DrPromotion> {
        let never = |why: String| {
            Error::input(format!(
                "dr_run_id: run {dr_run_id} did not promote ({why}): only a run whose promotion made the DR site live can be failed back"
            ))
        };
        let uri = store.phase_uri(dr_run_id, Phase::Promote)?;
        let receipt = store
            .get_phase(dr_run_id, Phase::Promote)
            .await?
            .ok_or_else(|| never(format!("no promote receipt at {uri}")))?;
        if receipt.status != PhaseStatus::Success {
            return Err(never(format!(
                "its promote ended {}",
                receipt.status.as_str()
            )));
        }
        let promoted: PromoteDetails = receipt.details()?;
        if !promoted.promoted {
            return Err(never("its promote receipt says not promoted".into()));
        }
        let audit: PromotionAudit = get_json(&self.clients.s3, &promoted.audit_record)
            .await?
            .ok_or_else(|| {
                never(format!(
                    "its audit record {} is missing",
                    promoted.audit_record
                ))
            })?;
        if audit.run_id != dr_run_id {
            return Err(never(format!(
                "its audit record {} is run {}'s",
                promoted.audit_record, audit.run_id
            )));
        }
        // The record in the target bucket is operational and unlocked: whether the DR run
        // was a drill or a recovery (which decides whether literals may confirm) comes
        // from the run record and the audit record's locked evidence copy, and all three
        // must agree.
        let copy_uri = store.evidence_audit_uri(dr_run_id, &promoted.audit_record)?;
        let copy: PromotionAudit =
            get_json(&self.clients.s3, &copy_uri)
                .await?
                .ok_or_else(|| {
                    never(format!(
                        "the evidence copy {copy_uri} of its audit record is missing"
                    ))
                })?;
        let (run_record, _) = store
            .get_record(dr_run_id)
            .await?
            .ok_or_else(|| never("it has no run record".into()))?;
        if copy.run_id != dr_run_id
            || copy.mode != run_record.mode
            || audit.mode != run_record.mode
            || audit.backup_uri != copy.backup_uri
            || audit.promoted_at != copy.promoted_at
        {
            return Err(Error::integrity(format!(
                "dr_run_id: run {dr_run_id}'s records disagree: its run record says {}, the evidence copy {copy_uri} says {} (run {}, backup {}), the audit record {} says {} (backup {}); the audit record in the target bucket was changed after promotion",
                run_record.mode,
                copy.mode,
                copy.run_id,
                copy.backup_uri,
                promoted.audit_record,
                audit.mode,
                audit.backup_uri
            )));
        }
        Ok(DrPromotion {
            run_id: dr_run_id.to_owned(),
            mode: run_record.mode,
            audit_record: promoted.audit_record,
            promoted_at: copy.promoted_at,
            backup: BackupRef {
                uri: copy.backup_uri,
                backup_id: copy.backup_id,
                created_at: copy.backup_created_at,
                git_sha: None,
            },
        })
    }

    /// The live generation, which must be the DR run's promotion (or this failback's own
    /// publication, after a crash past it: then the one before it).
    async fn generation(&self, profile: &Profile, run_id: &str, dr_run_id: &str) -> Result<u64> {
        let uri = profile.target.published();
        let current = Published::read(&self.clients.s3, &uri).await?;
        match &current.pointer {
            Some(p) if p.run_id == dr_run_id && p.kind == PublishKind::Promotion => Ok(p.generation),
            Some(p) if p.run_id == run_id && p.kind == PublishKind::Failback => {
                Ok(p.generation.saturating_sub(1))
            }
            Some(p) => Err(Error::contract(format!(
                "generation: {uri} is at generation {} ({:?} by run {} at {}), not run {dr_run_id}'s promotion: the DR site no longer serves what {dr_run_id} promoted; fail back the live one",
                p.generation,
                p.kind,
                p.run_id,
                p.promoted_at.to_rfc3339()
            ))),
            None => Err(Error::contract(format!(
                "generation: {uri} does not exist: nothing was published on the DR site"
            ))),
        }
    }

    /// The stack's drill schedule must be disabled: a drill starting while the data
    /// moves back would restore over it.
    async fn schedule_disabled(&self) -> Result<String> {
        let Some(schedule) = &self.schedule else {
            return Ok(
                "no drill schedule is configured for this stack (DRPILOT_DRILL_SCHEDULE is unset)"
                    .into(),
            );
        };
        let got = self
            .scheduler
            .get_schedule()
            .name(&schedule.name)
            .group_name(&schedule.group)
            .send()
            .await;
        let out = match got {
            Ok(out) => out,
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                return Ok(format!(
                    "schedule {}/{} does not exist: nothing starts drills",
                    schedule.group, schedule.name
                ))
            }
            Err(err) => {
                return Err(Error::from_sdk(
                    &format!("GetSchedule {}/{}", schedule.group, schedule.name),
                    err,
                ))
            }
        };
        match out.state() {
            Some(ScheduleState::Enabled) => Err(Error::new(
                ErrorKind::ContractError,
                format!(
                    "schedule: the drill schedule {}/{} is ENABLED, and a drill starting during the failback would restore over the data moving back; disable it first: sam deploy --parameter-overrides EnableTriggers=false (or disable {} in the EventBridge Scheduler console), then start the failback again",
                    schedule.group, schedule.name, schedule.name
                ),
            )),
            state => Ok(format!(
                "schedule {}/{} is {}",
                schedule.group,
                schedule.name,
                state.map_or("in no state", |s| s.as_str())
            )),
        }
    }

    async fn primary_reachable(&self, primary: &Primary, region: &str) -> Result<String> {
        let root = primary.root();
        let s3 = self.clients.s3_in(region);
        let listed = s3
            .list_objects_v2()
            .bucket(&root.bucket)
            .prefix(&root.key)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| {
                let err = Error::from_sdk(&format!("ListObjectsV2 {root}"), e);
                Error::new(
                    err.kind,
                    format!("primary: {root} ({region}) is not reachable: {err}"),
                )
            })?;
        Ok(format!(
            "{root} ({region}) answered: {}",
            if listed.key_count().unwrap_or(0) > 0 {
                "it holds objects"
            } else {
                "it is empty"
            }
        ))
    }

    /// No other run holds the lock (an expired one counts as free).
    async fn lock_free(&self, lock: &RunLock, run_id: &str) -> Result<String> {
        match lock.read().await? {
            None => Ok(format!("{} is free", lock.uri())),
            Some((holder, _)) if holder.run_id == run_id => {
                Ok(format!("{} is this failback's already", lock.uri()))
            }
            Some((holder, _)) if holder.is_expired(Utc::now()) => Ok(format!(
                "{} is held by run {} but expired at {}",
                lock.uri(),
                holder.run_id,
                holder.expires_at.to_rfc3339()
            )),
            Some((holder, _)) => Err(Error::new(
                ErrorKind::LockHeld,
                format!(
                    "lock: {} is held by run {} (execution {}) until {}: a failback waits until no run holds it",
                    lock.uri(),
                    holder.run_id,
                    holder.execution_arn.as_deref().unwrap_or("unknown"),
                    holder.expires_at.to_rfc3339()
                ),
            )),
        }
    }
}

/// The preflight's checks as they are made: each one's verdict, and the first failure.
#[derive(Default)]
struct Checks {
    details: PreflightDetails,
    first_failure: Option<Error>,
}

impl Checks {
    fn record(&mut self, name: &str, result: Result<String>) {
        let (passed, detail) = match result {
            Ok(detail) => (true, detail),
            Err(err) => {
                let detail = format!("{}: {err}", err.kind.name());
                self.first_failure.get_or_insert(err);
                (false, detail)
            }
        };
        self.details.checks.push(PreflightCheck {
            name: name.into(),
            passed,
            detail,
        });
    }
}

/// The input's `mode` when it is not the DR run's (a failback is what its DR run was).
fn mode_mismatch(input: &FailbackInput, dr: &DrPromotion) -> Option<Error> {
    let asked = input.mode.filter(|asked| *asked != dr.mode)?;
    Some(Error::input(format!(
        "mode: the DR run {} was a {}, so its failback is one too, not a {asked}",
        dr.run_id, dr.mode
    )))
}

/// The literal confirmations: right for this DR run, a drill's, and allowed by the
/// profile.
fn literal_confirmations(input: &FailbackInput, mode: Mode, profile: &Profile) -> Result<String> {
    input.check_literals(mode)?;
    if !profile.allow_drill_failback_literals {
        return Err(Error::input(format!(
            "confirm1: profile {} does not allow a failback confirmed by the literals (its allow_drill_failback_literals is off); two approvers confirm with drpilot approve",
            input.profile
        )));
    }
    Ok("the literal confirmations of a drill".to_owned())
}
