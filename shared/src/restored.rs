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

/// The tag every restored instance carries with its run's id: teardown deletes only
/// instances carrying it for the run it tears down.
pub const RUN_TAG: &str = "drpilot:run-id";

/// Whether `instance` is the restore of run `run_id`.
pub fn tagged_for(instance: &aws_sdk_rds::types::DbInstance, run_id: &str) -> bool {
    run_tag(instance) == Some(run_id)
}

fn run_tag(instance: &aws_sdk_rds::types::DbInstance) -> Option<&str> {
    instance
        .tag_list()
        .iter()
        .find(|t| t.key() == Some(RUN_TAG))
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
    run_id: &str,
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
    let instance = rds_instance(rds, &identifier).await?;
    // The run-named instance is this run's (the components phase refused to start over
    // one that existed before), unless it says it belongs to another run. An AWS Backup
    // restore is tagged only once its job completes, so an untagged one is this run's too.
    if let Some(other) = instance.as_ref().and_then(run_tag).filter(|t| *t != run_id) {
        resource.state = ResourceState::DeleteFailed;
        resource.detail = Some(format!(
            "left alone: it is tagged {RUN_TAG}={other}, another run's"
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
                return give_up_if_late(resource, now);
            }
            Err(err) => {
                let err = Error::from_sdk(&format!("DeleteDBInstance {identifier}"), err);
                resource.detail = Some(err.message);
                if err.kind != ErrorKind::Retryable {
                    resource.state = ResourceState::DeleteFailed;
                    return Ok(());
                }
                return give_up_if_late(resource, now);
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
            resource.state = ResourceState::Deleting;
            resource.detail = Some(format!("RDS reports it {status}"));
        }
    }
    give_up_if_late(resource, now)
}

fn give_up_if_late(resource: &mut CreatedResource, now: DateTime<Utc>) -> Result<()> {
    let since = resource.delete_requested_at.unwrap_or(now);
    if !resource.settled() && (now - since).num_seconds() > DELETE_PATIENCE_SECONDS {
        resource.state = ResourceState::DeleteFailed;
        resource.detail = Some(format!(
            "still there {} s after teardown first asked for its deletion ({})",
            (now - since).num_seconds(),
            resource.detail.take().unwrap_or_default()
        ));
    }
    Ok(())
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
        give_up_if_late(&mut resource, now).unwrap();
        assert_eq!(resource.state, ResourceState::Deleting);
        resource.delete_requested_at =
            Some(now - chrono::TimeDelta::seconds(DELETE_PATIENCE_SECONDS + 1));
        give_up_if_late(&mut resource, now).unwrap();
        assert_eq!(resource.state, ResourceState::DeleteFailed);
        let detail = resource.detail.unwrap();
        assert!(
            detail.contains("still there") && detail.contains("deleting"),
            "{detail}"
        );
    }
}
