//! Deleting what components restored, and proving it gone: the one place that knows how
//! each [`RestoredResource`] is deleted and how its absence is checked. Teardown calls
//! [`clean_up`] once per pass of its cleanup loop (the state machine waits between passes:
//! an RDS instance takes minutes to delete); the components phase uses [`rds_instance`] to
//! find a restore an earlier attempt started.

use aws_sdk_rds::error::ProvideErrorMetadata;
use chrono::{DateTime, Utc};

use crate::component::{CreatedResource, ResourceState, RestoredResource};
use crate::error::{Error, ErrorKind, Result};

/// How long teardown waits for one resource to go, from its first deletion request,
/// before it gives up on it (an RDS instance normally goes within 5-10 minutes).
pub const DELETE_PATIENCE_SECONDS: i64 = 1800;

/// The tags every restored instance carries: its run, its profile (two stacks or profiles
/// may use the same run id), the component, and for a snapshot restore the snapshot.
pub const RUN_TAG: &str = "drpilot:run-id";
pub const PROFILE_TAG: &str = "drpilot:profile";
pub const COMPONENT_TAG: &str = "drpilot:component";
pub const SNAPSHOT_TAG: &str = "drpilot:snapshot";
/// The execution (its name) that restored a run-named instance: a retried start of that
/// execution finds its own restore, not an earlier execution's to reuse.
pub const EXECUTION_TAG: &str = "drpilot:execution";

/// Whose restore a run-named instance is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner<'a> {
    pub run_id: &'a str,
    pub profile: &'a str,
}

impl Owner<'_> {
    /// The tags a restore of this owner carries.
    pub fn tags(&self, component: &str) -> Vec<aws_sdk_rds::types::Tag> {
        [
            (RUN_TAG, self.run_id),
            (PROFILE_TAG, self.profile),
            (COMPONENT_TAG, component),
        ]
        .into_iter()
        .map(|(k, v)| aws_sdk_rds::types::Tag::builder().key(k).value(v).build())
        .collect()
    }

    /// Whether `instance` is this owner's restore (tagged for it).
    pub fn owns(&self, instance: &aws_sdk_rds::types::DbInstance) -> bool {
        tag(instance, RUN_TAG) == Some(self.run_id)
            && tag(instance, PROFILE_TAG) == Some(self.profile)
    }

    /// Why `instance` is someone else's, if it says so: tagged for another run or profile.
    fn other(&self, instance: &aws_sdk_rds::types::DbInstance) -> Option<String> {
        let run = tag(instance, RUN_TAG).filter(|r| *r != self.run_id);
        let profile = tag(instance, PROFILE_TAG).filter(|p| *p != self.profile);
        match (run, profile) {
            (None, None) => None,
            (run, profile) => Some(format!(
                "run {}, profile {}",
                run.unwrap_or(self.run_id),
                profile.unwrap_or(self.profile)
            )),
        }
    }
}

/// The value of tag `key` on `instance`.
pub fn tag<'i>(instance: &'i aws_sdk_rds::types::DbInstance, key: &str) -> Option<&'i str> {
    instance
        .tag_list()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// An RDS DB instance, or `None` when RDS says it does not exist.
pub async fn rds_instance(
    rds: &aws_sdk_rds::Client,
    identifier: &str,
) -> Result<Option<aws_sdk_rds::types::DbInstance>> {
    match rds
        .describe_db_instances()
        .db_instance_identifier(identifier)
        .send()
        .await
    {
        Ok(out) => Ok(out.db_instances().first().cloned()),
        Err(err) if err.code() == Some("DBInstanceNotFound") => Ok(None),
        Err(err) => Err(Error::from_sdk(
            &format!("DescribeDBInstances {identifier}"),
            err,
        )),
    }
}

async fn rds_status(rds: &aws_sdk_rds::Client, identifier: &str) -> Result<Option<String>> {
    Ok(rds_instance(rds, identifier)
        .await?
        .map(|i| i.db_instance_status().unwrap_or("unknown").to_owned()))
}

/// Whether an AWS Backup restore job is still running (`None`: it has ended).
async fn job_running(backup: &aws_sdk_backup::Client, job: &str) -> Result<Option<String>> {
    use aws_sdk_backup::types::RestoreJobStatus;
    let out = backup
        .describe_restore_job()
        .restore_job_id(job)
        .send()
        .await
        .map_err(|e| Error::from_sdk(&format!("DescribeRestoreJob {job}"), e))?;
    Ok(match out.status() {
        Some(
            RestoreJobStatus::Completed | RestoreJobStatus::Aborted | RestoreJobStatus::Failed,
        ) => None,
        other => Some(other.map_or("PENDING", |s| s.as_str()).to_owned()),
    })
}

/// One cleanup pass over `resource`: asks for its deletion while it exists and is not
/// being deleted, then records what is known now — [`ResourceState::Deleted`] only once
/// the service answers that it does not exist. A deletion the service refuses for good
/// (deletion protection, access denied) or one still not done after
/// [`DELETE_PATIENCE_SECONDS`] is [`ResourceState::DeleteFailed`], with why.
///
/// `execution` names the teardown's execution: what an earlier execution gave up on is
/// tried again (the operator fixed it and reran teardown).
pub async fn clean_up(
    rds: &aws_sdk_rds::Client,
    backup: &aws_sdk_backup::Client,
    owner: Owner<'_>,
    execution: Option<&str>,
    resource: &mut CreatedResource,
    now: DateTime<Utc>,
) {
    // An error reading or asking RDS is recorded on the resource, never the end of
    // teardown: a transient one is tried again next pass, any other gives up on it.
    if let Err(err) = pass(rds, backup, owner, execution, resource, now).await {
        resource.detail = Some(err.message.clone());
        if err.kind != ErrorKind::Retryable {
            resource.state = ResourceState::DeleteFailed;
        }
        give_up_if_late(resource, now);
    }
}

async fn pass(
    rds: &aws_sdk_rds::Client,
    backup: &aws_sdk_backup::Client,
    owner: Owner<'_>,
    execution: Option<&str>,
    resource: &mut CreatedResource,
    now: DateTime<Utc>,
) -> Result<()> {
    if resource.state == ResourceState::DeleteFailed && resource.checked_by.as_deref() != execution
    {
        resource.state = ResourceState::Present;
        resource.delete_requested_at = None;
    }
    resource.checked_by = execution.map(str::to_owned);
    if resource.settled() {
        return Ok(());
    }
    let RestoredResource::RdsDbInstance { identifier } = &resource.resource;
    let identifier = identifier.clone();
    resource.checked_at = Some(now);
    // What a restore job creates appears when the job ends: wait for it (AWS Backup
    // cannot stop one), so nothing it makes afterwards is left untracked.
    if let Some(job) = resource.restore_job.clone() {
        if let Some(status) = job_running(backup, &job).await? {
            resource.delete_requested_at.get_or_insert(now);
            resource.state = ResourceState::Present;
            resource.detail = Some(format!("waiting for restore job {job} ({status}) to end"));
            give_up_if_late(resource, now);
            return Ok(());
        }
    }
    let instance = rds_instance(rds, &identifier).await?;
    // The run-named instance is this run's (the components phase refused to start over
    // one that existed before), unless its tags say it is another run's or profile's. An
    // AWS Backup restore is tagged only once its job completes, so an untagged one is this
    // run's too.
    if let Some(other) = instance.as_ref().and_then(|i| owner.other(i)) {
        resource.state = ResourceState::DeleteFailed;
        resource.detail = Some(format!(
            "left alone: its tags say it is another's ({other})"
        ));
        return Ok(());
    }
    let mut status = instance.map(|i| i.db_instance_status().unwrap_or("unknown").to_owned());
    if status.as_deref().is_some_and(|s| s != "deleting") {
        resource.delete_requested_at.get_or_insert(now);
        let asked = rds
            .delete_db_instance()
            .db_instance_identifier(&identifier)
            .skip_final_snapshot(true)
            .delete_automated_backups(true)
            .send()
            .await;
        match asked {
            Ok(_) => {}
            Err(err) if err.code() == Some("DBInstanceNotFound") => {}
            // Not deletable yet (still creating, modifying): the next pass asks again.
            Err(err) if err.code() == Some("InvalidDBInstanceState") => {
                resource.state = ResourceState::Present;
                resource.detail = Some(format!(
                    "not deletable yet ({}): {}",
                    status.as_deref().unwrap_or("unknown"),
                    err.message().unwrap_or("InvalidDBInstanceState")
                ));
                give_up_if_late(resource, now);
                return Ok(());
            }
            Err(err) => {
                return Err(Error::from_sdk(
                    &format!("DeleteDBInstance {identifier}"),
                    err,
                ))
            }
        }
        status = rds_status(rds, &identifier).await?;
    }
    match status {
        None => {
            resource.state = ResourceState::Deleted;
            resource.detail = Some("gone: RDS answers DBInstanceNotFound".into());
        }
        Some(status) => {
            // Deleting already (an earlier pass, or someone else): patience runs from now.
            resource.delete_requested_at.get_or_insert(now);
            resource.state = ResourceState::Deleting;
            resource.detail = Some(format!("RDS reports it {status}"));
        }
    }
    give_up_if_late(resource, now);
    Ok(())
}

fn give_up_if_late(resource: &mut CreatedResource, now: DateTime<Utc>) {
    let since = resource.delete_requested_at.unwrap_or(now);
    if !resource.settled() && (now - since).num_seconds() > DELETE_PATIENCE_SECONDS {
        resource.state = ResourceState::DeleteFailed;
        resource.detail = Some(format!(
            "still there {} s after teardown first asked for its deletion ({})",
            (now - since).num_seconds(),
            resource.detail.take().unwrap_or_default()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teardown_gives_up_on_a_deletion_only_after_its_patience() {
        let now = Utc::now();
        let mut resource = CreatedResource::new(RestoredResource::RdsDbInstance {
            identifier: "pg-drpilot-r".into(),
        });
        resource.state = ResourceState::Deleting;
        resource.detail = Some("RDS reports it deleting".into());
        resource.delete_requested_at = Some(now - chrono::TimeDelta::seconds(600));
        give_up_if_late(&mut resource, now);
        assert_eq!(resource.state, ResourceState::Deleting);
        resource.delete_requested_at =
            Some(now - chrono::TimeDelta::seconds(DELETE_PATIENCE_SECONDS + 1));
        give_up_if_late(&mut resource, now);
        assert_eq!(resource.state, ResourceState::DeleteFailed);
        let detail = resource.detail.unwrap();
        assert!(
            detail.contains("still there") && detail.contains("deleting"),
            "{detail}"
        );
    }
}
