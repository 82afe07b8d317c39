//! bringup: the precondition gate of every execution. Normalises the execution input,
//! checks the function runs in the profile's account and region, finds the backup, takes
//! the run lock and starts the run record. A later execution of the same run continues
//! it: the record's backup and kickoff stand, the lock is renewed, and the phases it
//! starts at must have what they build on. Nothing is written before every check passed.

use chrono::Duration;
use drpilot_shared::backup;
use drpilot_shared::details::BringupDetails;
use drpilot_shared::identity::{self, StsEndpoint};
use drpilot_shared::input::{normalize, NameRule, Normalized, Trigger, TriggerDefaults};
use drpilot_shared::lock::RunLock;
use drpilot_shared::plan;
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::published::Published;
use drpilot_shared::receipt::PhaseClock;
use drpilot_shared::record::{ExecutionEntry, ExecutionName, RunRecord};
use drpilot_shared::resume;
use drpilot_shared::run::{ExecutionInfo, RunContext};
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::time::seconds;
use drpilot_shared::{AwsClients, Error, ErrorKind, Phase, Profile, Result, RunInput, S3Uri};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::info;

/// What the state machine passes: the raw execution input and the execution's identity.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BringupRequest {
    pub input: Value,
    #[serde(default)]
    pub execution: ExecutionInfo,
    /// Step Functions' retry count for this state (0 on the first try).
    #[serde(default)]
    pub retry_count: u32,
}

/// The account and region a function runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub account_id: String,
    pub region: String,
}

impl Caller {
    /// From `arn:aws:lambda:<region>:<account>:function:<name>`; `None` when the runtime
    /// gives no real ARN (`cargo lambda watch` passes a placeholder).
    pub fn from_function_arn(arn: &str) -> Option<Self> {
        let parts: Vec<&str> = arn.split(':').collect();
        match parts.as_slice() {
            ["arn", _partition, "lambda", region, account, "function", ..]
                if !region.is_empty() && account.len() == 12 =>
            {
                Some(Self {
                    account_id: (*account).to_owned(),
                    region: (*region).to_owned(),
                })
            }
            _ => None,
        }
    }
}

/// The environment variable carrying the state machine's approval timeout (seconds), so
/// bringup can tell whether the run's lock outlives the wait for an approval.
pub const APPROVAL_TIMEOUT_ENV: &str = "DRPILOT_APPROVAL_TIMEOUT_SECONDS";

pub struct Bringup {
    pub clients: AwsClients,
    pub sfn: aws_sdk_sfn::Client,
    pub profiles: ProfileSource,
    pub defaults: TriggerDefaults,
    /// How long the state machine waits for an approval (`None`: not configured, no
    /// check).
    pub approval_timeout_seconds: Option<u64>,
    /// Where a starter's proof of identity is sent (its region's STS, or the emulator).
    pub sts: StsEndpoint,
}

impl Bringup {
    pub fn new(clients: AwsClients) -> Self {
        let clients = clients.for_function("bringup");
        let profiles = ProfileSource::from_env(clients.ssm.clone());
        Self {
            sts: StsEndpoint::of_config(&clients.config),
            sfn: clients.sfn(),
            clients,
            profiles,
            defaults: TriggerDefaults::from_env(),
            approval_timeout_seconds: std::env::var(APPROVAL_TIMEOUT_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok()),
        }
    }

    pub async fn handle(&self, request: BringupRequest, function_arn: &str) -> Result<RunContext> {
        let normalized = normalize(&request.input, &self.defaults)?;
        let attempt = request.retry_count.saturating_add(1);
        let max_attempts = normalized.input.max_attempts;
        Box::pin(self.bring_up(&request, normalized, attempt, function_arn))
            .await
            .map_err(|err| err.at_attempt(attempt, max_attempts))
    }

    /// The record of a run this execution starts: the backup it restores (the input's, or
    /// the newest under the profile's backups) and this execution's start as the kickoff.
    /// A new run has nothing before it to build on, so it starts at restore at the latest.
    async fn new_record(
        &self,
        run_id: &str,
        input: &RunInput,
        profile: &Profile,
        this: &ExecutionEntry,
    ) -> Result<RunRecord> {
        if !input.dry_run {
            if let Some(blocked) = resume::blocker(&[], input.start_at) {
                return Err(Error::input(format!(
                    "start_at: run {run_id} is new and {}; a new run starts at bringup or restore",
                    blocked.why
                )));
            }
        }
        let backup = match &input.backup_uri {
            Some(uri) => backup::inspect(&self.clients.s3, uri).await?.0,
            None => backup::newest(&self.clients.s3, &profile.backups).await?,
        };
        info!(run_id = %run_id, backup = %backup.uri, created_at = %backup.created_at, "backup found");
        Ok(RunRecord {
            run_id: run_id.to_owned(),
            profile: input.profile.clone(),
            mode: input.mode,
            trigger: this.trigger.clone(),
            kickoff_at: this.started_at,
            backup,
            published_generation: 0,
            executions: Vec::new(),
        })
    }

    /// Whether this execution is the run's first and whether it is a retried attempt of
    /// one the record lists; a later execution must continue the run as it is (same
    /// profile and mode, none other running) from a phase whose prerequisites it has.
    async fn may_continue(
        &self,
        store: &ReceiptStore,
        record: &RunRecord,
        this: &ExecutionEntry,
        input: &RunInput,
    ) -> Result<(bool, bool)> {
        let (name, arn) = (this.name.as_deref(), this.arn.as_deref());
        let first = record.executions.first().is_none_or(|e| e.is(name, arn));
        let retried = record.executions.iter().any(|e| e.is(name, arn));
        if !first && !retried {
            continues(record, input)?;
            self.none_running(record, this).await?;
        }
        if !first && !input.dry_run {
            let run_id = &record.run_id;
            let receipts = store.phases(run_id).await?;
            if let Some(blocked) = resume::blocker(&receipts, input.start_at) {
                return Err(Error::input(format!(
                    "start_at: {} cannot run in run {run_id} yet: {}; start at {} (drpilot resume {run_id} --from {})",
                    input.start_at, blocked.why, blocked.run_first, blocked.run_first
                )));
            }
        }
        Ok((first, retried))
    }

    async fn bring_up(
        &self,
        request: &BringupRequest,
        normalized: Normalized,
        attempt: u32,
        function_arn: &str,
    ) -> Result<RunContext> {
        let Normalized { input, trigger } = normalized;
        let execution = &request.execution;
        let run_id = run_id(&input, execution.name.as_deref())?;
        drpilot_shared::phase::record_run(&run_id, Phase::Bringup);
        let clock = PhaseClock::start(&run_id, Phase::Bringup, attempt).dry_run(input.dry_run);
        let profile = self.profiles.load(&input.profile).await?;
        self.guard_account(&profile, function_arn).await?;
        allowed_by_profile(&input, &profile)?;
        lock_outlives_the_run(&profile, self.approval_timeout_seconds)?;
        let trigger = self
            .prove_starter(trigger, execution.name.as_deref(), &profile)
            .await?;
        let store = ReceiptStore::new(self.clients.s3.clone(), profile.receipts.clone());
        let this = ExecutionEntry::new(
            execution.name.clone(),
            execution.arn.clone(),
            execution.start_time.unwrap_or_else(|| clock.started_at()),
            &input,
            trigger,
        );
        let lock = RunLock::new(self.clients.s3.clone(), profile.target.lock());
        let ttl = profile.lock_ttl();

        let (record, etag) = match store.get_record(&run_id).await? {
            Some((record, etag)) => (record, Some(etag)),
            None => (
                self.new_record(&run_id, &input, &profile, &this).await?,
                None,
            ),
        };
        let (first, retried) = self.may_continue(&store, &record, &this, &input).await?;

        let acquired = take_lock(&lock, &run_id, &input, execution.arn.as_deref(), ttl).await?;
        let mut record = record;
        if etag.is_none() {
            // Read once the lock is the run's, so no promotion can slip in between: the
            // generation promote will publish over (see `published`).
            record.published_generation =
                Published::read(&self.clients.s3, &profile.target.published())
                    .await?
                    .generation();
        }
        if !retried {
            record.executions.push(this);
            store.put_record(&record, etag.as_deref()).await?;
        }

        // The plan of the heavy phases, from the backup's shards (the same for every
        // execution of the run). A dry run checks every shard inline, so it has none.
        let plan = if input.dry_run {
            None
        } else {
            let (_, meta) = backup::inspect(&self.clients.s3, &record.backup.uri).await?;
            Some(plan::write(&store, &run_id, &meta, profile.objects_per_range).await?)
        };
        let run = RunContext {
            run_id: run_id.clone(),
            plan,
            promotion: input.promotion(),
            input,
            trigger: record.trigger.clone(),
            execution_arn: execution.arn.clone(),
            kickoff_at: record.kickoff_at,
            backup: record.backup.clone(),
            published_generation: record.published_generation,
        };
        if first {
            let details = details(&run, lock.uri().clone(), acquired);
            store.put_phase(&clock.succeeded(&details)?).await?;
            info!(run_id = %run.run_id, mode = %run.input.mode, "bringup done");
        } else {
            // The run was brought up by its first execution; its receipt stands.
            info!(run_id = %run.run_id, start_at = %run.input.start_at, lock = %acquired, executions = record.executions.len(), "continuing the run");
        }
        Ok(run)
    }

    /// Refuses a later execution of a run while an earlier one still runs (one run, one
    /// execution at a time: two would restore, promote and tear down the same staging).
    /// Only executions whose teardown has not recorded an outcome are asked about.
    async fn none_running(&self, record: &RunRecord, this: &ExecutionEntry) -> Result<()> {
        let earlier = record
            .executions
            .iter()
            .filter(|e| e.outcome.is_none())
            .filter_map(|e| e.arn.as_deref())
            .filter(|arn| Some(*arn) != this.arn.as_deref());
        for arn in earlier {
            let described = self
                .sfn
                .describe_execution()
                .execution_arn(arn)
                .send()
                .await;
            let status = match described {
                Ok(out) => out.status().clone(),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_execution_does_not_exist()) =>
                {
                    continue
                }
                Err(e) => return Err(Error::from_sdk(&format!("DescribeExecution {arn}"), e)),
            };
            if status == aws_sdk_sfn::types::ExecutionStatus::Running {
                return Err(Error::new(
                    ErrorKind::LockHeld,
                    format!(
                        "run {}: execution {arn} is still running; a later execution continues the run only after it ended (stop it, or wait)",
                        record.run_id
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Refuses to go on in another account or region than the profile names.
    async fn guard_account(&self, profile: &Profile, function_arn: &str) -> Result<()> {
        let caller = match Caller::from_function_arn(function_arn) {
            Some(caller) => caller,
            None => {
                let identity = self
                    .clients
                    .sts
                    .get_caller_identity()
                    .send()
                    .await
                    .map_err(|e| Error::from_sdk("GetCallerIdentity", e))?;
                let region = self
                    .clients
                    .config
                    .region()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                Caller {
                    account_id: identity.account.unwrap_or_default(),
                    region,
                }
            }
        };
        if caller.account_id != profile.account_id || caller.region != profile.region {
            return Err(Error::new(
                ErrorKind::AccountMismatch,
                format!(
                    "running in account {} region {}, but the profile expects account {} region {}",
                    caller.account_id, caller.region, profile.account_id, profile.region
                ),
            ));
        }
        Ok(())
    }
}

impl Bringup {
    /// A manual start's starter, proven: the input's `trigger.proof` (a signed STS
    /// `GetCallerIdentity` bound to this execution's name) sent to STS, whose answer
    /// becomes `trigger.source` with `verified`. Without a proof the input's claim stays,
    /// unverified — and under the profile's `two_person_rule` the start is refused, since
    /// the rule would have no starter to hold the approver apart from.
    async fn prove_starter(
        &self,
        trigger: Trigger,
        execution_name: Option<&str>,
        profile: &Profile,
    ) -> Result<Trigger> {
        let Trigger::Manual { source, proof, .. } = trigger else {
            return Ok(trigger);
        };
        let Some(proof) = proof else {
            if profile.two_person_rule {
                return Err(Error::input(
                    "trigger.proof: the profile's two_person_rule needs to know who started the run, and this manual start proves no one (drpilot start signs a proof with the caller's credentials)",
                ));
            }
            return Ok(Trigger::Manual {
                source,
                verified: false,
                proof: None,
            });
        };
        let name = execution_name.ok_or_else(|| {
            Error::input("trigger.proof: the execution has no name for the proof to be bound to")
        })?;
        let caller = self
            .sts
            .verify(&proof, &identity::start_digest(name))
            .await
            .map_err(|e| match e.kind {
                ErrorKind::Retryable => e,
                _ => Error::input(format!("trigger.proof: {}", e.message)),
            })?;
        info!(starter = %caller.arn, "starter proven");
        Ok(Trigger::Manual {
            source: Some(caller.arn),
            verified: true,
            proof: None,
        })
    }
}

/// The run this execution works on: the input's `run_id`, else the execution's name
/// without its `.<n>`.
fn run_id(input: &RunInput, execution_name: Option<&str>) -> Result<String> {
    let named = execution_name.map(ExecutionName::parse);
    match (&input.run_id, named) {
        (Some(id), Some(named)) if named.number.is_some() && named.run_id != *id => {
            Err(Error::input(format!(
                "run_id: {id:?}, but the execution is named for run {:?} ({}); executions of run {id} are named {id}.<n>",
                named.run_id,
                execution_name.unwrap_or_default()
            )))
        }
        (Some(id), _) => Ok(id.clone()),
        (None, Some(named)) => {
            NameRule::RUN_ID
                .check(&named.run_id)
                .and_then(|()| NameRule::check_run_kind(&named.run_id, false))
                .map_err(|why| Error::input(format!("run_id (from the execution name): {why}")))?;
            Ok(named.run_id)
        }
        (None, None) => Err(Error::input(
            "run_id: not given, and no execution name to derive it from",
        )),
    }
}

/// What the input asks that only the profile's owners may allow: a backup outside the
/// profile's `backups` (anyone who may start an execution writes the input; the profile
/// lives in SSM, written by the team that owns it) and the approval bypass.
fn allowed_by_profile(input: &RunInput, profile: &Profile) -> Result<()> {
    if let Some(uri) = &input.backup_uri {
        let below = (uri.bucket == profile.backups.bucket)
            .then(|| profile.backups.strip(&uri.key))
            .flatten();
        if below.is_none_or(|rest| rest.trim_matches('/').is_empty()) {
            return Err(Error::input(format!(
                "backup_uri: {uri} is not a backup under the profile's backups location {}",
                profile.backups.as_prefix()
            )));
        }
    }
    if input.approval_bypassed() && !profile.allow_drill_promote_bypass {
        return Err(Error::input(format!(
            "allow_promote_bypass: profile {} does not allow a drill to promote without an approval (its allow_drill_promote_bypass is off)",
            input.profile
        )));
    }
    Ok(())
}

/// The lock must outlive the longest a run can take to reach promote: the components'
/// slowest timeout and the whole approval wait. A shorter one expires while the run
/// waits, another run can take it over, and promote (which re-checks it) refuses.
fn lock_outlives_the_run(profile: &Profile, approval_timeout: Option<u64>) -> Result<()> {
    let Some(approval) = approval_timeout else {
        return Ok(());
    };
    let components = profile
        .components
        .iter()
        .map(|c| c.timeout_seconds)
        .max()
        .unwrap_or(0);
    let needed = approval.saturating_add(components);
    if profile.lock_ttl_seconds < needed {
        return Err(Error::input(format!(
            "lock_ttl_seconds: {} is shorter than the approval timeout ({approval} s) plus the slowest component's timeout ({components} s); set it to at least {needed}",
            profile.lock_ttl_seconds
        )));
    }
    Ok(())
}

/// Refuses a later execution that would change what the run is.
fn continues(record: &RunRecord, input: &RunInput) -> Result<()> {
    let run_id = &record.run_id;
    if input.start_at == Phase::Bringup {
        return Err(Error::input(format!(
            "start_at: run {run_id} was brought up at {} and a later execution continues it from a phase after bringup (drpilot resume {run_id}, or --start-at PHASE); for a new run, use a new run id",
            record.kickoff_at.to_rfc3339()
        )));
    }
    if input.profile != record.profile {
        return Err(Error::input(format!(
            "profile: run {run_id} belongs to profile {}, not {}",
            record.profile, input.profile
        )));
    }
    if input.mode != record.mode {
        return Err(Error::input(format!(
            "mode: run {run_id} is a {}; a later execution cannot make it a {}",
            record.mode, input.mode
        )));
    }
    if let Some(uri) = input
        .backup_uri
        .as_ref()
        .filter(|u| **u != record.backup.uri)
    {
        return Err(Error::input(format!(
            "backup_uri: run {run_id} restores {}; a later execution cannot switch it to {uri}",
            record.backup.uri
        )));
    }
    Ok(())
}
/// Takes the run lock for `run_id` and says how, in words. A dry run changes nothing,
/// the lock included: it only says who holds it.
async fn take_lock(
    lock: &RunLock,
    run_id: &str,
    input: &RunInput,
    execution_arn: Option<&str>,
    ttl: Duration,
) -> Result<String> {
    if input.dry_run {
        return Ok(match lock.read().await? {
            Some((holder, _)) => format!("not taken (dry run); held by run {}", holder.run_id),
            None => "not taken (dry run); free".to_owned(),
        });
    }
    let acquired = lock.acquire(run_id, execution_arn, ttl).await?;
    Ok(format!("{acquired:?}"))
}

/// Bringup's receipt details for the run it brought up.
fn details(run: &RunContext, lock: S3Uri, lock_acquired: String) -> BringupDetails {
    BringupDetails {
        profile: run.input.profile.clone(),
        mode: run.input.mode,
        trigger: run.trigger.clone(),
        backup_uri: run.backup.uri.clone(),
        backup_id: run.backup.backup_id.clone(),
        backup_created_at: run.backup.created_at,
        lock,
        lock_acquired,
        rpo_seconds_at_kickoff: seconds(run.kickoff_at - run.backup.created_at),
    }
}
