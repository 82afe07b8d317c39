//! `rds_snapshot`: the newest available snapshot of a DB instance, restored to a
//! run-named instance (`<name>-drpilot-<run_id>`), verified when RDS reports it available.
//! RPO: kickoff minus the snapshot's creation time.

use aws_sdk_rds::error::ProvideErrorMetadata;
use aws_sdk_rds::types::{DbSnapshot, Tag};
use drpilot_shared::component::{
    restored_identifier, ComponentReceipt, RdsSnapshot, RestoredResource,
};
use drpilot_shared::restored::{rds_instance, tag, EXECUTION_TAG, SNAPSHOT_TAG};
use drpilot_shared::{Error, Result};
use serde_json::json;

use drpilot_shared::time::utc;

use super::{ensure_ours, instance_progress, run_named_instance, Cx, Kind, Progress};

/// What the kind's steps share.
trait SnapshotTarget {
    fn target(&self, cx: &Cx<'_>) -> Result<String>;
    async fn newest_snapshot(&self, cx: &Cx<'_>) -> Result<DbSnapshot>;
    async fn snapshot(&self, cx: &Cx<'_>, id: &str) -> Result<DbSnapshot>;
}

impl SnapshotTarget for RdsSnapshot {
    fn target(&self, cx: &Cx<'_>) -> Result<String> {
        let target = restored_identifier(cx.name(), &cx.run.run_id);
        if target.eq_ignore_ascii_case(&self.db_instance_identifier) {
            return Err(Error::input(format!(
                "db_instance_identifier: the restore target {target:?} would reuse the source's identifier"
            )));
        }
        Ok(target)
    }

    /// Snapshot `id` (the one an earlier execution restored from).
    async fn snapshot(&self, cx: &Cx<'_>, id: &str) -> Result<DbSnapshot> {
        let out = cx
            .clients
            .rds
            .describe_db_snapshots()
            .db_snapshot_identifier(id)
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("DescribeDBSnapshots {id}"), e))?;
        out.db_snapshots()
            .first()
            .cloned()
            .ok_or_else(|| Error::contract(format!("snapshot {id} no longer exists")))
    }

    /// The newest snapshot of the source in status `available`.
    async fn newest_snapshot(&self, cx: &Cx<'_>) -> Result<DbSnapshot> {
        let mut newest: Option<DbSnapshot> = None;
        let mut pages = cx
            .clients
            .rds
            .describe_db_snapshots()
            .db_instance_identifier(&self.db_instance_identifier)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                Error::from_sdk(
                    &format!("DescribeDBSnapshots {}", self.db_instance_identifier),
                    e,
                )
            })?;
            for snapshot in page.db_snapshots() {
                if snapshot.status() != Some("available")
                    || snapshot.snapshot_create_time().is_none()
                {
                    continue;
                }
                if newest
                    .as_ref()
                    .is_none_or(|n| snapshot.snapshot_create_time() > n.snapshot_create_time())
                {
                    newest = Some(snapshot.clone());
                }
            }
        }
        newest.ok_or_else(|| {
            Error::contract(format!(
                "db_instance_identifier: no available snapshot of DB instance {:?}",
                self.db_instance_identifier
            ))
        })
    }
}

impl Kind for RdsSnapshot {
    async fn check(&self, cx: &Cx<'_>) -> Result<String> {
        let target = self.target(cx)?;
        ensure_ours(cx, &target).await?;
        let snapshot = self.newest_snapshot(cx).await?;
        Ok(format!(
            "would restore snapshot {} of {} to DB instance {target}",
            snapshot.db_snapshot_identifier().unwrap_or_default(),
            self.db_instance_identifier
        ))
    }

    fn creates(&self, cx: &Cx<'_>) -> Vec<RestoredResource> {
        run_named_instance(self.target(cx))
    }

    async fn start(&self, cx: &Cx<'_>, receipt: &mut ComponentReceipt) -> Result<Progress> {
        let target = self.target(cx)?;
        // An earlier execution of this run may have restored it already (a held run): the
        // instance says which snapshot it came from, and is reused. One this execution
        // restored (a retried start) is carried on with, as its first attempt did.
        let existing = rds_instance(&cx.clients.rds, &target).await?;
        let ours = existing.as_ref().filter(|i| cx.owner().owns(i));
        let earlier = ours.and_then(|i| tag(i, SNAPSHOT_TAG)).map(str::to_owned);
        let execution = cx
            .run
            .execution_arn
            .as_deref()
            .and_then(|arn| arn.rsplit(':').next());
        let reused = earlier.is_some()
            && (execution.is_none() || ours.and_then(|i| tag(i, EXECUTION_TAG)) != execution);
        let snapshot = match &earlier {
            Some(id) => self.snapshot(cx, id).await?,
            None => self.newest_snapshot(cx).await?,
        };
        let snapshot_id = snapshot
            .db_snapshot_identifier()
            .unwrap_or_default()
            .to_owned();
        let taken_at = snapshot.snapshot_create_time().and_then(utc);
        receipt.details = json!({
            "source": self.db_instance_identifier,
            "snapshot": snapshot_id,
            "snapshot_created_at": taken_at,
            "restored_instance": target,
            "reused": reused,
        });
        receipt.state = json!({"snapshot_created_at": taken_at});
        if existing.is_none() {
            let snapshot_tag = Tag::builder().key(SNAPSHOT_TAG).value(&snapshot_id).build();
            let execution_tag =
                execution.map(|name| Tag::builder().key(EXECUTION_TAG).value(name).build());
            let restored = cx
                .clients
                .rds
                .restore_db_instance_from_db_snapshot()
                .db_instance_identifier(&target)
                .db_snapshot_identifier(&snapshot_id)
                .set_db_instance_class(self.db_instance_class.clone())
                .set_db_subnet_group_name(self.db_subnet_group_name.clone())
                .set_vpc_security_group_ids(
                    (!self.vpc_security_group_ids.is_empty())
                        .then(|| self.vpc_security_group_ids.clone()),
                )
                // A drill's copy must be deletable by teardown, whatever the source says.
                .deletion_protection(false)
                .set_tags(Some(
                    cx.owner()
                        .tags(cx.name())
                        .into_iter()
                        .chain([snapshot_tag])
                        .chain(execution_tag)
                        .collect(),
                ))
                .send()
                .await;
            match restored {
                Ok(_) => {}
                Err(err) if err.code() == Some("DBInstanceAlreadyExists") => {}
                Err(err) => {
                    return Err(Error::from_sdk(
                        &format!("RestoreDBInstanceFromDBSnapshot {target} from {snapshot_id}"),
                        err,
                    ))
                }
            }
        }
        self.poll(cx, receipt).await
    }

    async fn poll(&self, cx: &Cx<'_>, receipt: &mut ComponentReceipt) -> Result<Progress> {
        let target = self.target(cx)?;
        let taken_at = receipt.state["snapshot_created_at"]
            .as_str()
            .and_then(|t| t.parse().ok());
        let instance = rds_instance(&cx.clients.rds, &target).await?;
        if let Some(instance) = &instance {
            receipt.details["status"] = json!(instance.db_instance_status());
            if let Some(endpoint) = instance.endpoint() {
                receipt.details["endpoint"] = json!(format!(
                    "{}:{}",
                    endpoint.address().unwrap_or_default(),
                    endpoint.port().unwrap_or_default()
                ));
            }
        }
        Ok(instance_progress(&target, instance.as_ref(), taken_at))
    }
}
