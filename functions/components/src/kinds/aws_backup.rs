//! `aws_backup`: `StartRestoreJob` from the newest completed recovery point of a resource
//! in a vault, with the recovery point's own restore metadata
//! (`GetRecoveryPointRestoreMetadata`) overridden by the profile's and the restored DB
//! instance named for the run; polled with `DescribeRestoreJob`, whose fields the receipt
//! keeps; the outcome reported back with `PutRestoreValidationResult`. RPO: kickoff minus
//! the recovery point's creation.
//!
//! The local emulator has no AWS Backup restore jobs: tests/aws_backup.rs drives this
//! module with aws-smithy-mocks.

use std::collections::HashMap;

use aws_sdk_backup::types::{
    RecoveryPointByBackupVault, RecoveryPointStatus, RestoreJobStatus, RestoreValidationStatus,
};
use drpilot_shared::component::{
    restored_identifier, AwsBackup, ComponentReceipt, RestoredResource,
};
use drpilot_shared::restored::rds_instance;
use drpilot_shared::{Error, ErrorKind, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use drpilot_shared::time::utc;

use super::{ensure_ours, instance_progress, run_named_instance, Cx, Kind, Progress};

/// The restore metadata key that names the restored RDS DB instance.
const IDENTIFIER_KEY: &str = "DBInstanceIdentifier";

/// What the kind's steps share.
trait BackupTarget {
    fn target(&self, cx: &Cx<'_>) -> Result<String>;
    async fn newest_recovery_point(&self, cx: &Cx<'_>) -> Result<RecoveryPointByBackupVault>;
}

impl BackupTarget for AwsBackup {
    /// The restored instance's identifier: the run-named one (the profile may not override
    /// it), never the source's.
    fn target(&self, cx: &Cx<'_>) -> Result<String> {
        let source = RestoredResource::of_backup_source(&self.resource_arn)
            .map_err(|why| Error::input(format!("resource_arn: {why}")))?;
        let target = restored_identifier(cx.name(), &cx.run.run_id);
        if target.eq_ignore_ascii_case(source) {
            return Err(Error::input(format!(
                "restore_metadata.{IDENTIFIER_KEY}: the restore target {target:?} would reuse the source's identifier"
            )));
        }
        Ok(target)
    }

    async fn newest_recovery_point(&self, cx: &Cx<'_>) -> Result<RecoveryPointByBackupVault> {
        let mut newest: Option<RecoveryPointByBackupVault> = None;
        let mut pages = cx
            .clients
            .backup
            .list_recovery_points_by_backup_vault()
            .backup_vault_name(&self.vault)
            .by_resource_arn(&self.resource_arn)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                Error::from_sdk(
                    &format!("ListRecoveryPointsByBackupVault {}", self.vault),
                    e,
                )
            })?;
            for point in page.recovery_points() {
                if point.status() != Some(&RecoveryPointStatus::Completed)
                    || point.creation_date().is_none()
                {
                    continue;
                }
                if newest
                    .as_ref()
                    .is_none_or(|n| point.creation_date() > n.creation_date())
                {
                    newest = Some(point.clone());
                }
            }
        }
        newest.ok_or_else(|| {
            Error::contract(format!(
                "resource_arn: no completed recovery point of {} in vault {}",
                self.resource_arn, self.vault
            ))
        })
    }
}

/// An instance an earlier execution of the run restored: verified once available (its
/// RPO is not measured again: the recovery point it came from is that execution's).
async fn reused(cx: &Cx<'_>, target: &str) -> Result<Progress> {
    let instance = rds_instance(&cx.clients.rds, target).await?;
    Ok(instance_progress(target, instance.as_ref(), None))
}

impl Kind for AwsBackup {
    async fn check(&self, cx: &Cx<'_>) -> Result<String> {
        let target = self.target(cx)?;
        ensure_ours(cx, &target).await?;
        let point = self.newest_recovery_point(cx).await?;
        Ok(format!(
            "would restore recovery point {} of {} to DB instance {target}",
            point.recovery_point_arn().unwrap_or_default(),
            self.resource_arn
        ))
    }

    fn creates(&self, cx: &Cx<'_>) -> Vec<RestoredResource> {
        run_named_instance(self.target(cx))
    }

    async fn start(&self, cx: &Cx<'_>, receipt: &mut ComponentReceipt) -> Result<Progress> {
        let target = self.target(cx)?;
        // An earlier execution of this run restored it already (a held run): reused.
        if rds_instance(&cx.clients.rds, &target).await?.is_some() {
            receipt.details = json!({
                "vault": self.vault,
                "resource_arn": self.resource_arn,
                "restored_instance": target,
                "reused": true,
            });
            receipt.state = json!({"reused": target});
            return reused(cx, &target).await;
        }
        let point = self.newest_recovery_point(cx).await?;
        let point_arn = point.recovery_point_arn().unwrap_or_default().to_owned();
        let created_at = point.creation_date().and_then(utc);
        let inferred = cx
            .clients
            .backup
            .get_recovery_point_restore_metadata()
            .backup_vault_name(&self.vault)
            .recovery_point_arn(&point_arn)
            .send()
            .await
            .map_err(|e| {
                Error::from_sdk(&format!("GetRecoveryPointRestoreMetadata {point_arn}"), e)
            })?;
        // AWS Backup reads the keys case-insensitively: an override replaces the point's own
        // key whatever its case.
        let mut metadata: HashMap<String, String> =
            inferred.restore_metadata().cloned().unwrap_or_default();
        let mut set = |key: &str, value: String| {
            metadata.retain(|k, _| !k.eq_ignore_ascii_case(key));
            metadata.insert(key.to_owned(), value);
        };
        for (key, value) in &self.restore_metadata {
            set(key, value.clone());
        }
        set(IDENTIFIER_KEY, target.clone());
        // A drill's copy must be deletable by teardown, whatever the source had.
        set("DeletionProtection", "false".to_owned());
        // One job per execution and component, however often the start is retried.
        let token = hex::encode(Sha256::digest(format!(
            "{}/{}/{}",
            cx.run.run_id,
            cx.run.execution_arn.as_deref().unwrap_or_default(),
            cx.name()
        )));
        let started = cx
            .clients
            .backup
            .start_restore_job()
            .recovery_point_arn(&point_arn)
            .iam_role_arn(&self.iam_role_arn)
            .set_metadata(Some(metadata))
            .idempotency_token(&token[..32])
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("StartRestoreJob {point_arn}"), e))?;
        let job = started
            .restore_job_id()
            .ok_or_else(|| Error::internal("StartRestoreJob answered without a restore job id"))?
            .to_owned();
        receipt.state = json!({"restore_job_id": job, "recovery_point_created_at": created_at});
        // Teardown waits for the job before it looks for what the job creates.
        for resource in &mut receipt.created_resources {
            resource.restore_job = Some(job.clone());
        }
        receipt.details = json!({
            "vault": self.vault,
            "resource_arn": self.resource_arn,
            "recovery_point_arn": point_arn,
            "recovery_point_created_at": created_at,
            "restore_job_id": job,
            "restored_instance": target,
        });
        Ok(Progress::Waiting(format!("restore job {job} started")))
    }

    async fn poll(&self, cx: &Cx<'_>, receipt: &mut ComponentReceipt) -> Result<Progress> {
        if let Some(target) = receipt.state["reused"].as_str() {
            return reused(cx, target).await;
        }
        let job = receipt.state["restore_job_id"]
            .as_str()
            .ok_or_else(|| Error::internal("aws_backup polled without a restore job id"))?
            .to_owned();
        let created_at = receipt.state["recovery_point_created_at"]
            .as_str()
            .and_then(|t| t.parse().ok());
        let out = cx
            .clients
            .backup
            .describe_restore_job()
            .restore_job_id(&job)
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("DescribeRestoreJob {job}"), e))?;
        let status = out.status().map(|s| s.as_str().to_owned());
        receipt.details["job"] = json!({
            "status": status,
            "status_message": out.status_message(),
            "percent_done": out.percent_done(),
            "backup_size_in_bytes": out.backup_size_in_bytes(),
            "expected_completion_time_minutes": out.expected_completion_time_minutes(),
            "created_resource_arn": out.created_resource_arn(),
            "resource_type": out.resource_type(),
            "creation_date": out.creation_date().and_then(utc),
            "completion_date": out.completion_date().and_then(utc),
            "validation_status": out.validation_status().map(|s| s.as_str()),
        });
        let (verdict, validation, message) = match out.status() {
            Some(RestoreJobStatus::Completed) => {
                // Tagged for the run like a snapshot restore, so teardown knows it for this run's.
                if let Some(arn) = out.created_resource_arn() {
                    cx.clients
                        .rds
                        .add_tags_to_resource()
                        .resource_name(arn)
                        .set_tags(Some(cx.owner().tags(cx.name())))
                        .send()
                        .await
                        .map_err(|e| Error::from_sdk(&format!("AddTagsToResource {arn}"), e))?;
                }
                (
                    Progress::Verified {
                        restored_point: created_at,
                    },
                    RestoreValidationStatus::Successful,
                    format!(
                        "drpilot run {}: restore completed and verified",
                        cx.run.run_id
                    ),
                )
            }
            Some(RestoreJobStatus::Aborted | RestoreJobStatus::Failed) => {
                let why = format!(
                    "restore job {job} {}: {}",
                    status.as_deref().unwrap_or("failed"),
                    out.status_message().unwrap_or("no status message")
                );
                return Ok(Progress::Failed(Error::new(ErrorKind::ServiceError, why)));
            }
            _ => {
                return Ok(Progress::Waiting(format!(
                    "restore job {job} is {} ({} done)",
                    status.as_deref().unwrap_or("pending"),
                    out.percent_done().unwrap_or("0%")
                )))
            }
        };
        cx.clients
            .backup
            .put_restore_validation_result()
            .restore_job_id(&job)
            .validation_status(validation.clone())
            .validation_status_message(message)
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("PutRestoreValidationResult {job}"), e))?;
        receipt.details["validation_reported"] = json!(validation.as_str());
        Ok(verdict)
    }
}
