//! The component kinds, each a small module behind [`Kind`]: what it checks before
//! anything is created, what it creates, how it starts and how it is polled. The
//! functions below pick the module for a component's kind.

mod aws_backup;
mod http;
mod lambda;
mod rds_snapshot;
mod ssm_command;

use chrono::{DateTime, Utc};
use drpilot_shared::component::{ComponentKind, ComponentReceipt, ComponentSpec, RestoredResource};
use drpilot_shared::profile::Profile;
use drpilot_shared::restored::Owner;
use drpilot_shared::run::RunContext;
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::{AwsClients, Error, Result};

pub use http::HttpProbe;

/// Where a component stands after a step.
#[derive(Debug)]
pub enum Progress {
    /// Not there yet: why (the state machine waits and polls again).
    Waiting(String),
    /// Verified; `restored_point` is when the restored data was taken (its RPO's anchor).
    Verified {
        restored_point: Option<DateTime<Utc>>,
    },
    /// The component's verdict is a failure (the error names why).
    Failed(Error),
}

/// The clients the kinds call, built once per process, each recorded in the call ledger.
pub struct Clients {
    pub rds: aws_sdk_rds::Client,
    pub backup: aws_sdk_backup::Client,
    pub lambda: aws_sdk_lambda::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub http: HttpProbe,
}

impl Clients {
    /// From `clients` (the function's own, see [`AwsClients::for_function`]), recording to
    /// its ledger.
    pub fn new(clients: &AwsClients) -> Self {
        Self {
            rds: clients.rds(),
            backup: clients.backup(),
            lambda: clients.lambda(),
            ssm: clients.ssm.clone(),
            http: HttpProbe::new(),
        }
    }
}

/// What a kind works with for one component of one run.
pub struct Cx<'a> {
    pub run: &'a RunContext,
    pub profile: &'a Profile,
    pub spec: &'a ComponentSpec,
    pub store: &'a ReceiptStore,
    pub clients: &'a Clients,
}

impl Cx<'_> {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The run whose restores these are, as their tags say.
    pub fn owner(&self) -> Owner<'_> {
        Owner {
            run_id: &self.run.run_id,
            profile: &self.run.input.profile,
        }
    }
}

/// One kind of component.
pub(crate) trait Kind {
    /// Everything that can be checked without changing anything; `Ok` says, in one line,
    /// what starting would do. An error here stops the run before any component starts.
    async fn check(&self, cx: &Cx<'_>) -> Result<String>;
    /// What starting creates (on record before it exists, so teardown can delete it).
    fn creates(&self, _cx: &Cx<'_>) -> Vec<RestoredResource> {
        Vec::new()
    }
    /// Starts the restore or check; the kind keeps what its polls need in `receipt.state`
    /// and its facts in `receipt.details`.
    async fn start(&self, cx: &Cx<'_>, receipt: &mut ComponentReceipt) -> Result<Progress>;
    /// One poll of what `start` started.
    async fn poll(&self, cx: &Cx<'_>, receipt: &mut ComponentReceipt) -> Result<Progress>;
}

pub async fn check(cx: &Cx<'_>) -> Result<String> {
    match &cx.spec.kind {
        ComponentKind::RdsSnapshot(k) => k.check(cx).await,
        ComponentKind::AwsBackup(k) => k.check(cx).await,
        ComponentKind::Lambda(k) => k.check(cx).await,
        ComponentKind::SsmCommand(k) => k.check(cx).await,
        ComponentKind::Http(k) => k.check(cx).await,
    }
}

pub fn creates(cx: &Cx<'_>) -> Vec<RestoredResource> {
    match &cx.spec.kind {
        ComponentKind::RdsSnapshot(k) => k.creates(cx),
        ComponentKind::AwsBackup(k) => k.creates(cx),
        ComponentKind::Lambda(k) => k.creates(cx),
        ComponentKind::SsmCommand(k) => k.creates(cx),
        ComponentKind::Http(k) => k.creates(cx),
    }
}

pub async fn start(cx: &Cx<'_>, receipt: &mut ComponentReceipt) -> Result<Progress> {
    match &cx.spec.kind {
        ComponentKind::RdsSnapshot(k) => k.start(cx, receipt).await,
        ComponentKind::AwsBackup(k) => k.start(cx, receipt).await,
        ComponentKind::Lambda(k) => k.start(cx, receipt).await,
        ComponentKind::SsmCommand(k) => k.start(cx, receipt).await,
        ComponentKind::Http(k) => k.start(cx, receipt).await,
    }
}

pub async fn poll(cx: &Cx<'_>, receipt: &mut ComponentReceipt) -> Result<Progress> {
    match &cx.spec.kind {
        ComponentKind::RdsSnapshot(k) => k.poll(cx, receipt).await,
        ComponentKind::AwsBackup(k) => k.poll(cx, receipt).await,
        ComponentKind::Lambda(k) => k.poll(cx, receipt).await,
        ComponentKind::SsmCommand(k) => k.poll(cx, receipt).await,
        ComponentKind::Http(k) => k.poll(cx, receipt).await,
    }
}

/// Refuses a restore target that exists and is not this run's own restore: drpilot
/// neither adopts nor deletes an instance it did not create.
pub async fn ensure_ours(cx: &Cx<'_>, identifier: &str) -> Result<()> {
    let Some(instance) =
        drpilot_shared::restored::rds_instance(&cx.clients.rds, identifier).await?
    else {
        return Ok(());
    };
    if cx.owner().owns(&instance) {
        return Ok(());
    }
    Err(Error::input(format!(
        "the restore target, DB instance {identifier}, already exists and is not this run's restore (not tagged {}={} and {}={}): drpilot neither adopts nor deletes it",
        drpilot_shared::restored::RUN_TAG,
        cx.run.run_id,
        drpilot_shared::restored::PROFILE_TAG,
        cx.run.input.profile
    )))
}

/// What a kind that restores an RDS instance to its run-named `target` creates (nothing
/// when the target cannot be named: the start then fails before creating anything).
pub fn run_named_instance(target: Result<String>) -> Vec<RestoredResource> {
    target
        .map(|identifier| vec![RestoredResource::RdsDbInstance { identifier }])
        .unwrap_or_default()
}

/// Statuses after which an RDS instance will not become available by itself.
const HOPELESS: [&str; 6] = [
    "failed",
    "incompatible-restore",
    "incompatible-parameters",
    "incompatible-network",
    "storage-full",
    "inaccessible-encryption-credentials",
];

/// What a restored instance says about its restore (`rds_snapshot`, and an `aws_backup`
/// instance an earlier execution restored): verified once `available`, failed when gone or
/// in a status it will not leave by itself, still waiting in any other (`creating`,
/// `backing-up`, `modifying`, ...). `restored_point` is the RPO's anchor.
pub fn instance_progress(
    target: &str,
    instance: Option<&aws_sdk_rds::types::DbInstance>,
    restored_point: Option<DateTime<Utc>>,
) -> Progress {
    let Some(instance) = instance else {
        return Progress::Failed(Error::new(
            drpilot_shared::ErrorKind::ServiceError,
            format!("the restored DB instance {target} does not exist"),
        ));
    };
    match instance.db_instance_status().unwrap_or("unknown") {
        "available" => Progress::Verified { restored_point },
        s if HOPELESS.contains(&s) => Progress::Failed(Error::new(
            drpilot_shared::ErrorKind::ServiceError,
            format!("the restored DB instance {target} is {s}"),
        )),
        s => Progress::Waiting(format!("DB instance {target} is {s}")),
    }
}

/// The last `limit` characters of `text` (command output, a verifier's message).
pub fn tail(text: &str, limit: usize) -> String {
    let count = text.chars().count();
    text.chars().skip(count.saturating_sub(limit)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_status_is_a_verdict_or_another_poll() {
        let at = Some(Utc::now());
        let with = |status: &str| {
            aws_sdk_rds::types::DbInstance::builder()
                .db_instance_status(status)
                .build()
        };
        let verdict = |status: &str| instance_progress("x", Some(&with(status)), at);
        assert!(
            matches!(verdict("available"), Progress::Verified { restored_point } if restored_point == at)
        );
        for waiting in [
            "creating",
            "backing-up",
            "modifying",
            "configuring-enhanced-monitoring",
        ] {
            assert!(
                matches!(verdict(waiting), Progress::Waiting(ref why) if why.contains(waiting)),
                "{waiting}"
            );
        }
        for hopeless in ["failed", "incompatible-restore", "storage-full"] {
            assert!(
                matches!(verdict(hopeless), Progress::Failed(ref e) if e.message.contains(hopeless)),
                "{hopeless}"
            );
        }
        assert!(
            matches!(instance_progress("x", None, at), Progress::Failed(ref e) if e.message.contains("does not exist"))
        );
    }
}
