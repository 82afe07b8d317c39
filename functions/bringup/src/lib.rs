//! bringup: the precondition gate of every run. Normalises the execution input, checks the
//! function runs in the profile's account and region, finds the backup, and takes the run
//! lock. Nothing is written before every check has passed.

use chrono::Duration;
use drpilot_shared::backup::{self, BackupRef};
use drpilot_shared::details::BringupDetails;
use drpilot_shared::input::{normalize, NameRule, TriggerDefaults};
use drpilot_shared::lock::RunLock;
use drpilot_shared::objects::for_each_child_prefix;
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::receipt::{seconds, PhaseClock};
use drpilot_shared::run::{ExecutionInfo, RunContext};
use drpilot_shared::{AwsClients, Error, ErrorKind, Phase, Profile, Result, S3Uri};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};

/// What the state machine passes: the raw execution input and the execution's identity.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BringupRequest {
    pub input: Value,
    #[serde(default)]
    pub execution: ExecutionInfo,
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

pub struct Bringup {
    pub clients: AwsClients,
    pub profiles: ProfileSource,
    pub defaults: TriggerDefaults,
}

impl Bringup {
    pub fn new(clients: AwsClients) -> Self {
        let clients = clients.for_function("bringup");
        let profiles = ProfileSource::from_env(clients.ssm.clone());
        Self {
            clients,
            profiles,
            defaults: TriggerDefaults::from_env(),
        }
    }

    pub async fn handle(&self, request: BringupRequest, function_arn: &str) -> Result<RunContext> {
        let normalized = normalize(&request.input, &self.defaults)?;
        let input = normalized.input;
        let run_id = match (&input.run_id, &request.execution.name) {
            (Some(id), _) => id.clone(),
            (None, Some(name)) => {
                NameRule::RUN_ID.check(name).map_err(|why| {
                    Error::input(format!("run_id (from the execution name): {why}"))
                })?;
                name.clone()
            }
            (None, None) => {
                return Err(Error::input(
                    "run_id: not given, and no execution name to derive it from",
                ))
            }
        };
        drpilot_shared::phase::record_run(&run_id, Phase::Bringup);
        let clock = PhaseClock::start(&run_id, Phase::Bringup, 1).dry_run(input.dry_run);
        let profile = self.profiles.load(&input.profile).await?;
        self.guard_account(&profile, function_arn).await?;

        let backup = match &input.backup_uri {
            Some(uri) => backup::inspect(&self.clients.s3, uri).await?.0,
            None => newest_backup(&self.clients.s3, &profile.backups).await?,
        };
        info!(run_id = %run_id, backup = %backup.uri, created_at = %backup.created_at, "backup found");

        let lock = RunLock::new(self.clients.s3.clone(), profile.target.lock());
        let ttl =
            Duration::seconds(i64::try_from(profile.lock_ttl_seconds).unwrap_or(i64::MAX / 2));
        // A dry run changes nothing, the lock included: it only says who holds it.
        let acquired = if input.dry_run {
            match lock.read().await? {
                Some((holder, _)) => format!("not taken (dry run); held by run {}", holder.run_id),
                None => "not taken (dry run); free".to_owned(),
            }
        } else {
            let acquired = lock
                .acquire(&run_id, request.execution.arn.as_deref(), ttl)
                .await?;
            format!("{acquired:?}")
        };

        let run = RunContext {
            run_id: run_id.clone(),
            promotion: input.promotion(),
            input,
            trigger: normalized.trigger,
            execution_arn: request.execution.arn.clone(),
            kickoff_at: request
                .execution
                .start_time
                .unwrap_or_else(|| clock.started_at()),
            backup,
        };
        let details = BringupDetails {
            profile: run.input.profile.clone(),
            mode: run.input.mode,
            trigger: run.trigger.clone(),
            backup_uri: run.backup.uri.clone(),
            backup_id: run.backup.backup_id.clone(),
            backup_created_at: run.backup.created_at,
            lock: lock.uri().clone(),
            lock_acquired: acquired,
            rpo_seconds_at_kickoff: seconds(run.kickoff_at - run.backup.created_at),
        };
        run.receipts(&self.clients.s3, &profile)
            .put_phase(&clock.succeeded(&details)?)
            .await?;
        info!(run_id = %run.run_id, mode = %run.input.mode, "bringup done");
        Ok(run)
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

/// The newest valid backup (by `metadata.json` `created_at`) under `prefix`. Invalid
/// backups are skipped with a warning; only the best candidate is kept in memory.
pub async fn newest_backup(s3: &aws_sdk_s3::Client, prefix: &S3Uri) -> Result<BackupRef> {
    let mut best: Option<BackupRef> = None;
    let mut skipped = 0usize;
    for_each_child_prefix(s3, prefix, async |candidate| {
        match backup::inspect(s3, &candidate).await {
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
                warn!(backup = %candidate, error = %err, "skipping invalid backup");
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
