//! readiness: watches between drills, and watches recoveries while they run.
//!
//! - `readiness` (hourly schedule): the newest backup's age against the RPO target, its
//!   contract (all three objects, sizes as `metadata.json` declares, the manifests' hash),
//!   its encryption (SSE-KMS key and its rotation, `kms:GetKeyRotationStatus`), a stale
//!   lock, days since the last successful drill, and the recovery time predicted from the
//!   last measured restore rates and the current backup's size and object count against
//!   the RTO target, and the account's unreserved Lambda concurrency against what a run's
//!   fan-out needs (`lambda_concurrency`). Writes `<receipts>/readiness/latest.json` (and the history), puts
//!   `BackupAgeSeconds`, `RpoTargetSeconds`, `DaysSinceLastDrill`,
//!   `PredictedRecoverySeconds`, `RtoTargetSeconds` and `ReadinessFailures` (dimension
//!   `Profile`); the template's alarms compare them and notify.
//! - `rto-watch` (every minute): each running recovery of the drill state machine that has
//!   passed its profile's RTO target is notified once on the topic; the marker
//!   `runs/<run>/rto-watch.json` (written with `If-None-Match`) makes it once, and teardown
//!   puts it in the summary.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use drpilot_shared::backup::{self, sorted_entries, MANIFESTS, STATE};
use drpilot_shared::details::RestoreDetails;
use drpilot_shared::input::{normalize, Mode, TriggerDefaults};
use drpilot_shared::lock::RunLock;
use drpilot_shared::metrics::{self, Sample};
use drpilot_shared::objects::{put_json, put_json_if, Conditional, Precondition};
use drpilot_shared::profile::{Profile, ProfileSource};
use drpilot_shared::readiness::{BackupSeen, Prediction, ReadinessCheck, ReadinessReport};
use drpilot_shared::receipt::RunStatus;
use drpilot_shared::record::ExecutionName;
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::summary::{RtoWatchMarker, RunSummary};
use drpilot_shared::time::{seconds, utc};
use drpilot_shared::{AwsClients, Error, Phase, Result};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// Lambda concurrency a run needs beside its fan-out's children: the phase function
/// that started the Map, the approve function, readiness and one to spare.
pub const CONCURRENCY_BESIDE_FAN_OUT: u32 = 4;

/// The drill state machine whose running recoveries `rto-watch` watches.
pub const STATE_MACHINE_ENV: &str = "DRPILOT_STATE_MACHINE";
/// The topic `rto-watch` notifies.
pub const TOPIC_ENV: &str = "DRPILOT_TOPIC_ARN";

/// What the schedules send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ReadinessRequest {
    Readiness {
        /// The profile to check; `DRPILOT_DEFAULT_PROFILE` when absent.
        #[serde(default)]
        profile: Option<String>,
    },
    RtoWatch {},
}

/// The answer to either action.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum ReadinessResponse {
    Report(Box<ReadinessReport>),
    Watched(RtoWatchOutcome),
}

/// What one `rto-watch` pass did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RtoWatchOutcome {
    /// Running recoveries looked at.
    pub watched: u32,
    /// Runs notified by this pass.
    pub notified: Vec<String>,
}

pub struct Readiness {
    pub clients: AwsClients,
    pub profiles: ProfileSource,
    pub kms: aws_sdk_kms::Client,
    pub lambda: aws_sdk_lambda::Client,
    pub sfn: aws_sdk_sfn::Client,
    pub sns: aws_sdk_sns::Client,
    pub defaults: TriggerDefaults,
    pub state_machine: Option<String>,
    pub topic: Option<String>,
}

impl Readiness {
    pub fn new(clients: AwsClients) -> Self {
        let clients = clients.for_function("readiness");
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            profiles: ProfileSource::from_env(clients.ssm.clone()),
            kms: clients.kms(),
            lambda: clients.lambda(),
            sfn: clients.sfn(),
            sns: clients.sns(),
            defaults: TriggerDefaults::from_env(),
            state_machine: env(STATE_MACHINE_ENV),
            topic: env(TOPIC_ENV),
            clients,
        }
    }

    pub async fn handle(&self, request: ReadinessRequest) -> Result<ReadinessResponse> {
        match request {
            ReadinessRequest::Readiness { profile } => {
                let name = match profile.or_else(|| self.defaults.profile.clone()) {
                    Some(name) => name,
                    None => {
                        return Err(Error::input(
                            "profile: none given and DRPILOT_DEFAULT_PROFILE is not set on the function",
                        ))
                    }
                };
                let report = self.check(&name).await?;
                Ok(ReadinessResponse::Report(Box::new(report)))
            }
            ReadinessRequest::RtoWatch {} => self.watch().await.map(ReadinessResponse::Watched),
        }
    }

    /// Runs every check of profile `name`, records the report and puts the metrics.
    pub async fn check(&self, name: &str) -> Result<ReadinessReport> {
        let profile = self.profiles.load(name).await?;
        let store = ReceiptStore::new(self.clients.s3.clone(), profile.receipts.clone());
        let now = Utc::now();
        let mut checks = Vec::new();
        let summaries = store.summaries().await?;

        // The newest backup: its contract, its encryption, its age.
        let backup = self.backup_checks(&profile, &mut checks).await;
        let backup_age_seconds = backup.as_ref().map(|b| seconds(now - b.created_at));
        checks.push(backup_age_check(
            &profile,
            backup.as_ref(),
            backup_age_seconds,
        ));

        checks.push(self.lock_check(&profile, now).await?);

        // The last successful drill.
        let last_drill = summaries
            .iter()
            .rev()
            .find(|s| s.mode == Mode::Drill && s.status == RunStatus::Succeeded && !s.dry_run);
        let days_since_last_drill =
            last_drill.map(|s| (now - s.finished_at).num_seconds() as f64 / 86_400.0);
        checks.push(ReadinessCheck {
            name: "last_drill".into(),
            passed: days_since_last_drill
                .is_some_and(|d| d <= f64::from(profile.drill_interval_days)),
            detail: match (last_drill, days_since_last_drill) {
                (Some(s), Some(days)) => format!(
                    "run {} succeeded {days:.1} days ago (a drill is due every {} days)",
                    s.run_id, profile.drill_interval_days
                ),
                _ => "no successful drill on record".into(),
            },
        });

        // The recovery time predicted from the last measured restore.
        let prediction = self.prediction(&store, &summaries).await?;
        let predicted_recovery_seconds = match (&prediction, &backup) {
            (Some(p), Some(b)) => Some(predict(p, b)),
            _ => None,
        };
        checks.push(ReadinessCheck {
            name: "predicted_recovery".into(),
            passed: predicted_recovery_seconds
                .is_some_and(|s| s <= profile.rto_target_seconds as f64),
            detail: match (&prediction, predicted_recovery_seconds) {
                (Some(p), Some(s)) => format!(
                    "{s:.0} s predicted (RTO target {} s) from run {}: restore at {:.1} MB/s and {:.0} objects/s, {:.0} s for the rest",
                    profile.rto_target_seconds,
                    p.from_run,
                    p.bytes_per_second / 1e6,
                    p.objects_per_second,
                    p.other_seconds
                ),
                _ => "nothing measured yet: no successful run with a restore".into(),
            },
        });

        checks.push(self.concurrency_check().await);

        let report = ReadinessReport {
            profile: name.to_owned(),
            checked_at: now,
            ready: checks.iter().all(|c| c.passed),
            checks,
            backup,
            backup_age_seconds,
            rpo_target_seconds: profile.rpo_target_seconds,
            days_since_last_drill,
            last_drill: last_drill.map(|s| s.run_id.clone()),
            drill_interval_days: profile.drill_interval_days,
            predicted_recovery_seconds,
            rto_target_seconds: profile.rto_target_seconds,
            prediction,
        };
        store.put_readiness(&report).await?;
        self.publish(&profile, &report).await?;
        info!(profile = name, ready = report.ready, failures = ?report.failures(), "readiness checked");
        Ok(report)
    }

    /// The newest backup's contract and encryption checks; the backup when it is valid.
    async fn backup_checks(
        &self,
        profile: &Profile,
        checks: &mut Vec<ReadinessCheck>,
    ) -> Option<BackupSeen> {
        match self.newest_backup(profile).await {
            Ok(seen) => {
                checks.push(ReadinessCheck {
                    name: "backup_contract".into(),
                    passed: true,
                    detail: format!(
                        "{} has metadata.json, state.tar.zst ({} bytes) and manifests.tar.zst ({} bytes) as declared; its manifests list {} objects ({} bytes)",
                        seen.uri, seen.state_bytes, seen.manifests_bytes, seen.objects, seen.object_bytes
                    ),
                });
                checks.push(encryption_check(&seen));
                Some(seen)
            }
            Err(err) => {
                checks.push(ReadinessCheck {
                    name: "backup_contract".into(),
                    passed: false,
                    detail: format!("{}: {err}", err.kind.name()),
                });
                None
            }
        }
    }

    /// The report's numbers as metrics (the alarms on them are the stack's).
    async fn publish(&self, profile: &Profile, report: &ReadinessReport) -> Result<()> {
        let mut samples = vec![
            Sample::seconds("RpoTargetSeconds", profile.rpo_target_seconds as f64),
            Sample::seconds("RtoTargetSeconds", profile.rto_target_seconds as f64),
            Sample::count("ReadinessFailures", report.failures().len() as f64),
        ];
        if let Some(age) = report.backup_age_seconds {
            samples.push(Sample::seconds("BackupAgeSeconds", age));
        }
        if let Some(days) = report.days_since_last_drill {
            samples.push(Sample::count("DaysSinceLastDrill", days));
        }
        if let Some(predicted) = report.predicted_recovery_seconds {
            samples.push(Sample::seconds("PredictedRecoverySeconds", predicted));
        }
        metrics::publish_readiness(
            &self.clients.cloudwatch,
            &report.profile,
            report.checked_at,
            samples,
        )
        .await
    }

    /// Whether the account's unreserved Lambda concurrency leaves room for a run: a
    /// Distributed Map's children at once (the stack's `FanOutConcurrency`) and the
    /// functions running beside them ([`CONCURRENCY_BESIDE_FAN_OUT`]). Past it, Lambda
    /// throttles the children and the Map, after its retries, fails the run.
    async fn concurrency_check(&self) -> ReadinessCheck {
        let needed = drpilot_shared::budget::fan_out_concurrency() + CONCURRENCY_BESIDE_FAN_OUT;
        let (passed, detail) = match self.lambda.get_account_settings().send().await {
            Ok(settings) => {
                let limit = settings.account_limit();
                let unreserved = limit.and_then(|l| l.unreserved_concurrent_executions());
                let total = limit.map_or(0, |l| l.concurrent_executions());
                match unreserved {
                    Some(unreserved) => (
                        i64::from(unreserved) >= i64::from(needed),
                        format!(
                            "the account's unreserved Lambda concurrency is {unreserved} (of {total}); a run needs {needed}: {} fan-out children at once and {CONCURRENCY_BESIDE_FAN_OUT} functions beside them",
                            needed - CONCURRENCY_BESIDE_FAN_OUT
                        ),
                    ),
                    None => (false, "GetAccountSettings named no unreserved concurrency".into()),
                }
            }
            Err(err) => {
                let err = Error::from_sdk("GetAccountSettings", err);
                (false, format!("{}: {err}", err.kind.name()))
            }
        };
        ReadinessCheck {
            name: "lambda_concurrency".into(),
            passed,
            detail,
        }
    }

    /// The newest valid backup, its contract objects' sizes checked, its manifests read
    /// (and their hash verified) to count what it holds, and its encryption.
    async fn newest_backup(&self, profile: &Profile) -> Result<BackupSeen> {
        let s3 = &self.clients.s3;
        let found = backup::newest(s3, &profile.backups).await?;
        let (_, meta) = backup::inspect(s3, &found.uri).await?;
        backup::check_sizes(s3, &found.uri, &meta).await?;
        let state_uri = backup::artifact_uri(&found.uri, STATE)?;
        let head = s3
            .head_object()
            .bucket(&state_uri.bucket)
            .key(&state_uri.key)
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("HeadObject {state_uri}"), e))?;
        let (mut entries, tasks) = sorted_entries(s3, &found.uri).await?;
        let (mut objects, mut object_bytes) = (0u64, 0u64);
        while let Some(entry) = entries.recv().await {
            let entry = entry?;
            objects += 1;
            object_bytes += entry.size;
        }
        tasks.finish().await?;
        let encryption = head.server_side_encryption().map(|e| e.as_str().to_owned());
        let kms_key = head.ssekms_key_id().map(str::to_owned);
        let kms_key_rotation = match &kms_key {
            Some(key) => Some(self.rotation(key).await?),
            None => None,
        };
        Ok(BackupSeen {
            uri: found.uri,
            backup_id: found.backup_id,
            created_at: found.created_at,
            state_bytes: meta.artifact(STATE).size,
            manifests_bytes: meta.artifact(MANIFESTS).size,
            objects,
            object_bytes,
            encryption,
            kms_key,
            kms_key_rotation,
        })
    }

    /// Whether KMS rotates `key` automatically.
    async fn rotation(&self, key: &str) -> Result<bool> {
        let answer = self
            .kms
            .get_key_rotation_status()
            .key_id(key)
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("KMS GetKeyRotationStatus {key}"), e))?;
        Ok(answer.key_rotation_enabled())
    }

    /// A lock whose time ran out is stale: its run died without releasing it, and the
    /// next drill would wait on it.
    async fn lock_check(&self, profile: &Profile, now: DateTime<Utc>) -> Result<ReadinessCheck> {
        let lock = RunLock::new(self.clients.s3.clone(), profile.target.lock());
        Ok(match lock.read().await? {
            None => ReadinessCheck {
                name: "lock".into(),
                passed: true,
                detail: "no run holds the lock".into(),
            },
            Some((held, _)) if held.is_expired(now) => ReadinessCheck {
                name: "lock".into(),
                passed: false,
                detail: format!(
                    "stale: run {} took the lock at {} and it expired at {}; check the run and release it",
                    held.run_id, held.acquired_at, held.expires_at
                ),
            },
            Some((held, _)) => ReadinessCheck {
                name: "lock".into(),
                passed: true,
                detail: format!(
                    "held by run {} until {} (a run in progress)",
                    held.run_id, held.expires_at
                ),
            },
        })
    }

    /// The rates of the newest successful run that restored and measured its RTO.
    async fn prediction(
        &self,
        store: &ReceiptStore,
        summaries: &[RunSummary],
    ) -> Result<Option<Prediction>> {
        for summary in summaries.iter().rev() {
            let Some(rto) = summary.rto_seconds else {
                continue;
            };
            if summary.status != RunStatus::Succeeded || summary.dry_run {
                continue;
            }
            let Some(receipt) = store.get_phase(&summary.run_id, Phase::Restore).await? else {
                continue;
            };
            let Ok(restore) = receipt.details::<RestoreDetails>() else {
                continue;
            };
            if restore.seconds <= 0.0 {
                continue;
            }
            return Ok(Some(Prediction {
                from_run: summary.run_id.clone(),
                measured_rto_seconds: rto,
                measured_restore_seconds: restore.seconds,
                measured_objects: restore.objects,
                measured_bytes: restore.bytes,
                bytes_per_second: restore.bytes as f64 / restore.seconds,
                objects_per_second: restore.objects as f64 / restore.seconds,
                other_seconds: (rto - restore.seconds).max(0.0),
            }));
        }
        Ok(None)
    }

    /// One `rto-watch` pass over the drill state machine's running executions.
    pub async fn watch(&self) -> Result<RtoWatchOutcome> {
        let machine = self.state_machine.as_deref().ok_or_else(|| {
            Error::contract(format!("{STATE_MACHINE_ENV} is not set on this function"))
        })?;
        let mut outcome = RtoWatchOutcome::default();
        let mut profiles: BTreeMap<String, Profile> = BTreeMap::new();
        let mut pages = self
            .sfn
            .list_executions()
            .state_machine_arn(machine)
            .status_filter(aws_sdk_sfn::types::ExecutionStatus::Running)
            .into_paginator()
            .send();
        let now = Utc::now();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| Error::from_sdk(&format!("ListExecutions {machine}"), e))?;
            for execution in page.executions() {
                let arn = execution.execution_arn();
                let described = self
                    .sfn
                    .describe_execution()
                    .execution_arn(arn)
                    .send()
                    .await
                    .map_err(|e| Error::from_sdk(&format!("DescribeExecution {arn}"), e))?;
                let raw: serde_json::Value = described
                    .input()
                    .and_then(|i| serde_json::from_str(i).ok())
                    .unwrap_or(serde_json::Value::Null);
                // An input bringup would refuse is bringup's to report, not the watch's.
                let Ok(normalized) = normalize(&raw, &self.defaults) else {
                    continue;
                };
                if normalized.input.mode != Mode::Recovery {
                    continue;
                }
                outcome.watched += 1;
                let run_id = normalized
                    .input
                    .run_id
                    .clone()
                    .unwrap_or_else(|| ExecutionName::parse(execution.name()).run_id);
                let name = normalized.input.profile.clone();
                if !profiles.contains_key(&name) {
                    match self.profiles.load(&name).await {
                        Ok(p) => {
                            profiles.insert(name.clone(), p);
                        }
                        Err(err) => {
                            warn!(run_id = %run_id, profile = %name, error = %err, "cannot watch: profile");
                            continue;
                        }
                    }
                }
                let Some(profile) = profiles.get(&name) else {
                    continue;
                };
                let Some(started_at) = utc(execution.start_date()) else {
                    continue;
                };
                let elapsed = seconds(now - started_at);
                if elapsed <= profile.rto_target_seconds as f64 {
                    continue;
                }
                let marker = RtoWatchMarker {
                    run_id: run_id.clone(),
                    execution_arn: arn.to_owned(),
                    started_at,
                    notified_at: now,
                    elapsed_seconds: elapsed,
                    rto_target_seconds: profile.rto_target_seconds,
                    message_id: None,
                };
                if self.notify_once(&name, profile, &marker).await? {
                    outcome.notified.push(run_id);
                }
            }
        }
        Ok(outcome)
    }

    /// Claims the run's marker and notifies; `false` when an earlier pass did. A failed
    /// publish gives the claim back, so the next pass tries again.
    async fn notify_once(
        &self,
        profile_name: &str,
        profile: &Profile,
        marker: &RtoWatchMarker,
    ) -> Result<bool> {
        let topic = self
            .topic
            .as_deref()
            .ok_or_else(|| Error::contract(format!("{TOPIC_ENV} is not set on this function")))?;
        let store = ReceiptStore::new(self.clients.s3.clone(), profile.receipts.clone());
        let uri = store.rto_watch_uri(&marker.run_id)?;
        if put_json_if(&self.clients.s3, &uri, marker, Some(Precondition::Absent)).await?
            == Conditional::ConditionFailed
        {
            return Ok(false);
        }
        let subject = format!(
            "drpilot recovery {} has passed its RTO target",
            marker.run_id
        );
        let message = format!(
            "drpilot recovery {} (profile {}) has been running {:.0} s, past its RTO target of {} s.\nExecution: {}\nFollow it: drpilot status {}\nThis notice is sent once per run.",
            marker.run_id,
            profile_name,
            marker.elapsed_seconds,
            marker.rto_target_seconds,
            marker.execution_arn,
            marker.run_id
        );
        let sent = self
            .sns
            .publish()
            .topic_arn(topic)
            .subject(subject.chars().take(99).collect::<String>())
            .message(message)
            .send()
            .await;
        match sent {
            Ok(out) => {
                let mut done = marker.clone();
                done.message_id = out.message_id().map(str::to_owned);
                put_json(&self.clients.s3, &uri, &done).await?;
                info!(run_id = %marker.run_id, elapsed = marker.elapsed_seconds, "RTO target passed: notified");
                Ok(true)
            }
            Err(err) => {
                drpilot_shared::objects::delete(&self.clients.s3, &uri).await?;
                Err(Error::from_sdk(&format!("SNS Publish {topic}"), err))
            }
        }
    }
}

/// The newest valid backup's age against the RPO target.
fn backup_age_check(
    profile: &Profile,
    backup: Option<&BackupSeen>,
    age_seconds: Option<f64>,
) -> ReadinessCheck {
    match (backup, age_seconds) {
        (Some(b), Some(age)) => ReadinessCheck {
            name: "backup_age".into(),
            passed: age <= profile.rpo_target_seconds as f64,
            detail: format!(
                "backup {} was taken {:.0} s ago (RPO target {} s)",
                b.backup_id, age, profile.rpo_target_seconds
            ),
        },
        _ => ReadinessCheck {
            name: "backup_age".into(),
            passed: false,
            detail: "no valid backup to measure".into(),
        },
    }
}

/// SSE-KMS needs a rotating key; SSE-S3 (or the bucket default, which since 2023 is
/// SSE-S3 for every new object) has no customer key to rotate.
fn encryption_check(seen: &BackupSeen) -> ReadinessCheck {
    let (passed, detail) = match (&seen.kms_key, seen.kms_key_rotation) {
        (Some(key), Some(true)) => (true, format!("SSE-KMS under {key}, rotation enabled")),
        (Some(key), _) => (
            false,
            format!("SSE-KMS under {key}, automatic rotation is OFF (kms:EnableKeyRotation)"),
        ),
        (None, _) => (
            true,
            format!(
                "{} (S3-managed keys, rotated by S3; no customer key)",
                seen.encryption.as_deref().unwrap_or("SSE-S3")
            ),
        ),
    };
    ReadinessCheck {
        name: "encryption".into(),
        passed,
        detail,
    }
}

/// The measured run's time for the rest of its phases, plus restoring today's backup at
/// the measured rates, bounded by whichever of bytes and objects takes longer.
pub fn predict(p: &Prediction, backup: &BackupSeen) -> f64 {
    let by_bytes = if p.bytes_per_second > 0.0 {
        backup.object_bytes as f64 / p.bytes_per_second
    } else {
        0.0
    };
    let by_objects = if p.objects_per_second > 0.0 {
        backup.objects as f64 / p.objects_per_second
    } else {
        0.0
    };
    p.other_seconds + by_bytes.max(by_objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_scale_with_the_slower_of_bytes_and_objects() {
        let p = Prediction {
            from_run: "r".into(),
            measured_rto_seconds: 100.0,
            measured_restore_seconds: 40.0,
            measured_objects: 4_000,
            measured_bytes: 400_000_000,
            bytes_per_second: 10_000_000.0,
            objects_per_second: 100.0,
            other_seconds: 60.0,
        };
        let seen = |objects, bytes| BackupSeen {
            uri: drpilot_shared::S3Uri::new("bucket-a", "k/").unwrap(),
            backup_id: "b".into(),
            created_at: Utc::now(),
            state_bytes: 0,
            manifests_bytes: 0,
            objects,
            object_bytes: bytes,
            encryption: None,
            kms_key: None,
            kms_key_rotation: None,
        };
        // Same backup: the measured RTO again.
        assert_eq!(predict(&p, &seen(4_000, 400_000_000)), 100.0);
        // Twice the objects, same bytes: objects bound it.
        assert_eq!(predict(&p, &seen(8_000, 400_000_000)), 140.0);
        // Ten times the bytes: bytes bound it.
        assert_eq!(predict(&p, &seen(4_000, 4_000_000_000)), 460.0);
    }
}
