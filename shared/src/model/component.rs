//! Components: the databases and services a run restores and verifies beside the S3 data,
//! each with its own RTO (docs/contracts.md, "Components"). This module holds what the
//! profile says about them ([`ComponentSpec`], checked before anything is created), what
//! a run records of each ([`ComponentReceipt`] at `<receipts>/runs/<run_id>/components/<name>.json`)
//! and the names of what a component creates, so teardown can delete it and prove it gone.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::decode_value;
use crate::input::NameRule;
use crate::time::Objective;

/// One component of a profile: a thing restored and verified with its own RTO.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ComponentSpec {
    pub name: String,
    #[serde(flatten)]
    pub kind: ComponentKind,
    pub rto_target_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo_target_seconds: Option<u64>,
    /// A required component that fails fails the run, and counts in the run's RTO.
    pub required: bool,
    /// Start only once the S3 restore has staged the data (a verifier that reads it).
    pub after_restore: bool,
    /// Seconds between two polls of a restore or check in progress.
    pub poll_seconds: u64,
    /// Seconds from the component's start after which it fails as not verified.
    pub timeout_seconds: u64,
}

/// What a component is and how it is restored or checked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ComponentKind {
    RdsSnapshot(RdsSnapshot),
    AwsBackup(AwsBackup),
    Lambda(LambdaVerifier),
    SsmCommand(SsmCommand),
    Http(HttpCheck),
}

impl ComponentKind {
    pub const NAMES: [&'static str; 5] = [
        "rds_snapshot",
        "aws_backup",
        "lambda",
        "ssm_command",
        "http",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Self::RdsSnapshot(_) => "rds_snapshot",
            Self::AwsBackup(_) => "aws_backup",
            Self::Lambda(_) => "lambda",
            Self::SsmCommand(_) => "ssm_command",
            Self::Http(_) => "http",
        }
    }
}

/// Restore the newest available snapshot of an RDS DB instance to a run-named instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RdsSnapshot {
    /// The source DB instance whose snapshots are restored.
    pub db_instance_identifier: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_instance_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_subnet_group_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vpc_security_group_ids: Vec<String>,
}

/// `StartRestoreJob` from the newest recovery point of a resource in a vault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsBackup {
    pub vault: String,
    /// The protected resource (an RDS DB instance ARN).
    pub resource_arn: String,
    /// The role AWS Backup restores with.
    pub iam_role_arn: String,
    /// Overrides of the recovery point's restore metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub restore_metadata: BTreeMap<String, String>,
}

/// The team's verifier function: invoked with the run, it answers
/// `{"status": "passed|failed", "details": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaVerifier {
    /// Function name or ARN.
    pub function: String,
    /// Extra fields passed in the invocation's `parameters`.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub parameters: Value,
}

/// The team's script through SSM Run Command, on instances by id or by tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsmCommand {
    #[serde(default = "run_shell_script")]
    pub document: String,
    /// The document's parameters, e.g. `{"commands": ["restore-test.sh postgres"]}`.
    #[serde(default)]
    pub parameters: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_ids: Vec<String>,
    /// Run Command targets, e.g. `{"tag:Role": ["postgres"]}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<String, Vec<String>>,
}

fn run_shell_script() -> String {
    "AWS-RunShellScript".into()
}

/// One HTTP request whose answer says whether a service is back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub url: String,
    #[serde(default = "get")]
    pub method: String,
    #[serde(default = "ok")]
    pub expected_status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// One request's timeout.
    #[serde(default = "request_timeout")]
    pub request_timeout_seconds: u64,
}

fn get() -> String {
    "GET".into()
}
fn ok() -> u16 {
    200
}
fn request_timeout() -> u64 {
    10
}

/// The fields every kind shares; the rest of the object is the kind's.
#[derive(Deserialize)]
struct Common {
    name: String,
    kind: String,
    rto_target_seconds: u64,
    #[serde(default)]
    rpo_target_seconds: Option<u64>,
    #[serde(default = "yes")]
    required: bool,
    #[serde(default)]
    after_restore: bool,
    #[serde(default)]
    poll_seconds: Option<u64>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(flatten)]
    settings: serde_json::Map<String, Value>,
}

fn yes() -> bool {
    true
}

const DEFAULT_POLL_SECONDS: u64 = 30;
/// The longest a component may take (a week).
const MAX_TIMEOUT_SECONDS: u64 = 7 * 86_400;

impl<'de> Deserialize<'de> for ComponentSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let common = Common::deserialize(deserializer)?;
        let name = common.name;
        let document = format!("component {name:?} ({})", common.kind);
        let settings = Value::Object(common.settings);
        let decoded = match common.kind.as_str() {
            "rds_snapshot" => decode_value(&document, &settings).map(ComponentKind::RdsSnapshot),
            "aws_backup" => decode_value(&document, &settings).map(ComponentKind::AwsBackup),
            "lambda" => decode_value(&document, &settings).map(ComponentKind::Lambda),
            "ssm_command" => decode_value(&document, &settings).map(ComponentKind::SsmCommand),
            "http" => decode_value(&document, &settings).map(ComponentKind::Http),
            other => {
                return Err(D::Error::custom(format!(
                    "component {name:?}: kind: expected one of {}, got {other:?}",
                    ComponentKind::NAMES.join(", ")
                )))
            }
        };
        let kind = decoded.map_err(|e| D::Error::custom(e.to_string()))?;
        Ok(Self {
            rto_target_seconds: common.rto_target_seconds,
            rpo_target_seconds: common.rpo_target_seconds,
            required: common.required,
            after_restore: common.after_restore,
            poll_seconds: common.poll_seconds.unwrap_or(DEFAULT_POLL_SECONDS),
            // Long enough to see a restore miss its target by a lot, never unbounded.
            timeout_seconds: common.timeout_seconds.unwrap_or_else(|| {
                (common.rto_target_seconds.saturating_mul(3))
                    .clamp(300, MAX_TIMEOUT_SECONDS)
                    .max(common.poll_seconds.unwrap_or(DEFAULT_POLL_SECONDS))
            }),
            name,
            kind,
        })
    }
}

/// Component names go into S3 keys, metric dimensions and the identifiers of what they
/// restore (an RDS identifier starts with a letter and has no `_`).
pub const COMPONENT_NAME: NameRule = NameRule::new("a component name", 32, b"-");

/// The most components a run restores at once.
pub const MAX_CONCURRENCY: u32 = 40;

/// The most polls a run's components may take in all (each `timeout_seconds /
/// poll_seconds`): every poll adds about nine events to the execution's history, which
/// Step Functions caps at 25,000.
pub const MAX_POLLS: u64 = 2_000;

/// Checks the components of a profile as a whole and one by one; the error names the
/// component and the field.
pub fn validate(components: &[ComponentSpec], concurrency: u32) -> Result<(), String> {
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        return Err(format!(
            "component_concurrency: expected 1 to {MAX_CONCURRENCY}, got {concurrency}"
        ));
    }
    let mut seen = BTreeSet::new();
    let mut restored = BTreeMap::new();
    for (i, component) in components.iter().enumerate() {
        let at = format!("components[{i}] ({:?})", component.name);
        COMPONENT_NAME
            .check(&component.name)
            .map_err(|why| format!("components[{i}].name: {why}"))?;
        if !seen.insert(component.name.as_str()) {
            return Err(format!(
                "components[{i}].name: {:?} is the name of an earlier component; names must be unique",
                component.name
            ));
        }
        // What a component restores is named after it: two names must not give one name.
        if let Some(j) = restored.insert(restored_identifier(&component.name, "run"), i) {
            return Err(format!(
                "components[{i}].name: {:?} restores under the same identifier as components[{j}] ({:?}): names must differ in more than case and repeated hyphens",
                component.name, components[j].name
            ));
        }
        component.validate().map_err(|why| format!("{at}.{why}"))?;
    }
    let polls: u64 = components
        .iter()
        .map(|c| c.timeout_seconds / c.poll_seconds.max(1))
        .sum();
    if polls > MAX_POLLS {
        return Err(format!(
            "components: their timeout_seconds / poll_seconds add up to {polls} polls, more than the {MAX_POLLS} one execution's history holds; poll less often"
        ));
    }
    Ok(())
}

impl ComponentSpec {
    /// Field-level checks serde cannot express: `Err("field: why")`.
    fn validate(&self) -> Result<(), String> {
        if self.rto_target_seconds == 0 {
            return Err("rto_target_seconds: expected a positive number of seconds".into());
        }
        if self.rpo_target_seconds == Some(0) {
            return Err("rpo_target_seconds: expected a positive number of seconds".into());
        }
        if !(1..=3600).contains(&self.poll_seconds) {
            return Err(format!(
                "poll_seconds: expected 1 to 3600, got {}",
                self.poll_seconds
            ));
        }
        if self.timeout_seconds < self.poll_seconds || self.timeout_seconds > MAX_TIMEOUT_SECONDS {
            return Err(format!(
                "timeout_seconds: expected at least poll_seconds ({}) and at most a week, got {}",
                self.poll_seconds, self.timeout_seconds
            ));
        }
        let restores = matches!(
            self.kind,
            ComponentKind::RdsSnapshot(_) | ComponentKind::AwsBackup(_)
        );
        if restores && !self.name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(format!(
                "name: a {} component's name starts the restored instance's identifier, which must begin with a letter; got {:?}",
                self.kind.name(),
                self.name
            ));
        }
        if !restores && self.rpo_target_seconds.is_some() {
            return Err(format!(
                "rpo_target_seconds: a {} component restores no point in time, so it has no RPO to measure",
                self.kind.name()
            ));
        }
        self.kind.validate()
    }
}

impl ComponentKind {
    /// The kind's own field checks: `Err("field: why")`.
    fn validate(&self) -> Result<(), String> {
        match self {
            Self::RdsSnapshot(rds) => check_rds_identifier(&rds.db_instance_identifier)
                .map_err(|why| format!("db_instance_identifier: {why}")),
            Self::AwsBackup(backup) => backup.validate(),
            Self::Lambda(lambda) => lambda.validate(),
            Self::SsmCommand(ssm) => ssm.validate(),
            Self::Http(http) => http.validate(),
        }
    }
}

impl AwsBackup {
    fn validate(&self) -> Result<(), String> {
        if self.vault.is_empty() {
            return Err("vault: expected the backup vault's name".into());
        }
        RestoredResource::of_backup_source(&self.resource_arn)
            .map_err(|why| format!("resource_arn: {why}"))?;
        let source = RestoredResource::of_backup_source(&self.resource_arn).unwrap_or_default();
        // AWS Backup reads restore metadata keys case-insensitively.
        let named = self
            .restore_metadata
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("DBInstanceIdentifier"));
        if let Some((_, id)) = named {
            let why = if id.eq_ignore_ascii_case(source) {
                "the restore target would reuse the source's identifier"
            } else {
                "drpilot names the instance it restores (<name>-drpilot-<run_id>), so teardown deletes only what the run created"
            };
            return Err(format!(
                "restore_metadata.DBInstanceIdentifier: {why}; got {id:?}"
            ));
        }
        if !self.iam_role_arn.starts_with("arn:") || !self.iam_role_arn.contains(":role/") {
            return Err(format!(
                "iam_role_arn: expected an IAM role ARN, got {:?}",
                self.iam_role_arn
            ));
        }
        Ok(())
    }
}

impl LambdaVerifier {
    fn validate(&self) -> Result<(), String> {
        if self.function.is_empty() {
            return Err("function: expected a function name or ARN".into());
        }
        if !(self.parameters.is_null() || self.parameters.is_object()) {
            return Err("parameters: expected a JSON object".into());
        }
        Ok(())
    }
}

impl SsmCommand {
    fn validate(&self) -> Result<(), String> {
        if self.document.is_empty() {
            return Err("document: expected an SSM document name".into());
        }
        if self.parameters.is_empty() {
            return Err("parameters: expected the document's parameters, e.g. {\"commands\": [\"restore-test.sh postgres\"]}".into());
        }
        match (self.instance_ids.is_empty(), self.targets.is_empty()) {
            (true, true) => return Err(
                "instance_ids: expected instance_ids or targets (e.g. {\"tag:Role\": [\"db\"]})"
                    .into(),
            ),
            (false, false) => return Err("targets: give instance_ids or targets, not both".into()),
            _ => {}
        }
        if let Some(bad) = self
            .instance_ids
            .iter()
            .find(|id| !id.starts_with("i-") && !id.starts_with("mi-"))
        {
            return Err(format!(
                "instance_ids: expected EC2 instance ids (i-...) or managed node ids (mi-...), got {bad:?}"
            ));
        }
        Ok(())
    }
}

impl HttpCheck {
    fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "url: expected an http:// or https:// URL, got {:?}",
                self.url
            ));
        }
        // No request body is sent, so only methods that need none.
        const METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];
        if !METHODS.contains(&self.method.as_str()) {
            return Err(format!(
                "method: expected one of {}, got {:?}",
                METHODS.join(", "),
                self.method
            ));
        }
        if self.method == "HEAD" && self.body_contains.is_some() {
            return Err("body_contains: a HEAD answer has no body".into());
        }
        if !(100..=599).contains(&self.expected_status) {
            return Err(format!(
                "expected_status: expected an HTTP status 100-599, got {}",
                self.expected_status
            ));
        }
        if !(1..=60).contains(&self.request_timeout_seconds) {
            return Err(format!(
                "request_timeout_seconds: expected 1 to 60, got {}",
                self.request_timeout_seconds
            ));
        }
        Ok(())
    }
}

/// RDS DB instance identifiers: 1-63 letters, digits and hyphens, a letter first, no
/// two hyphens in a row, no hyphen last.
pub fn check_rds_identifier(id: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !id.contains("--")
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected an RDS DB instance identifier (1-63 letters, digits, hyphens; a letter first; no -- and no - last), got {id:?}"
        ))
    }
}

/// The identifier a run restores a component to: `<name>-drpilot-<run_id>` in RDS's
/// alphabet (lower case, `_` as `-`), shortened with a hash of the whole when it would be
/// longer than RDS's 63 characters. The same run always gets the same identifier, so a
/// restore started twice finds the first.
pub fn restored_identifier(component: &str, run_id: &str) -> String {
    let full = format!("{component}-drpilot-{run_id}").to_ascii_lowercase();
    let mut id = String::with_capacity(full.len());
    for c in full.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if !(c == '-' && id.ends_with('-')) {
            id.push(c);
        }
    }
    let id = id.trim_end_matches('-').to_owned();
    if id.len() <= 63 {
        return id;
    }
    let digest = hex::encode(Sha256::digest(full.as_bytes()));
    format!("{}-{}", id[..54].trim_end_matches('-'), &digest[..8])
}

/// Where a component's verdict stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentStatus {
    /// Started; being polled.
    Running,
    Verified,
    Failed,
    /// Not started: a dry run checked it only.
    Skipped,
}

impl ComponentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Verified => "verified",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// Something a component made that teardown must delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RestoredResource {
    /// An RDS DB instance (restored from a snapshot, or by AWS Backup).
    RdsDbInstance { identifier: String },
}

impl RestoredResource {
    /// What AWS Backup restores a resource as, and so what teardown deletes; only the
    /// resource types teardown can delete are accepted.
    pub fn of_backup_source(resource_arn: &str) -> Result<&str, String> {
        let parts: Vec<&str> = resource_arn.splitn(7, ':').collect();
        match parts.as_slice() {
            ["arn", _, "rds", _, _, "db", name] if !name.is_empty() => Ok(name),
            ["arn", _, service, ..] => Err(format!(
                "drpilot deletes what it restores and can delete restored RDS DB instances only (arn:aws:rds:REGION:ACCOUNT:db:NAME); got a {service} resource {resource_arn:?}"
            )),
            _ => Err(format!("expected a resource ARN, got {resource_arn:?}")),
        }
    }

    /// `rds_db_instance drpilot-pg-run-1`.
    pub fn describe(&self) -> String {
        match self {
            Self::RdsDbInstance { identifier } => format!("RDS DB instance {identifier}"),
        }
    }
}

/// What became of a created resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceState {
    /// May exist (created, or about to be): teardown has not deleted it yet.
    Present,
    /// Deletion asked for, not finished.
    Deleting,
    /// Proven gone: the service answers that it does not exist.
    Deleted,
    /// Teardown could not delete it (the detail says why): left, and the run fails.
    DeleteFailed,
}

/// One resource a component created, and its cleanup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedResource {
    #[serde(flatten)]
    pub resource: RestoredResource,
    pub state: ResourceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<DateTime<Utc>>,
    /// The AWS Backup restore job that creates it: teardown waits for the job to end before
    /// it looks for what the job made (AWS Backup cannot stop a restore job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_job: Option<String>,
    /// When teardown first asked for its deletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_requested_at: Option<DateTime<Utc>>,
    /// The execution whose teardown last looked at it: a later execution's teardown tries
    /// again what an earlier one gave up on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_by: Option<String>,
}

impl CreatedResource {
    pub fn new(resource: RestoredResource) -> Self {
        Self {
            resource,
            state: ResourceState::Present,
            detail: None,
            checked_at: None,
            restore_job: None,
            delete_requested_at: None,
            checked_by: None,
        }
    }

    /// Teardown is done with it: gone, or given up on.
    pub fn settled(&self) -> bool {
        matches!(
            self.state,
            ResourceState::Deleted | ResourceState::DeleteFailed
        )
    }
}

/// `<receipts>/runs/<run_id>/components/<name>.json`: one component's restore, verdict,
/// measured RTO/RPO and cleanup. Written when it starts (with what it is about to create),
/// after each poll, when it ends, and by every cleanup step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComponentReceipt {
    pub run_id: String,
    pub name: String,
    pub kind: String,
    pub required: bool,
    pub status: ComponentStatus,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// The error's name, when it failed.
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When it was verified (the end of its RTO).
    pub verified_at: Option<DateTime<Utc>>,
    /// When it fails as not verified.
    pub deadline_at: DateTime<Utc>,
    pub polls: u32,
    /// Kickoff to verified.
    pub rto: Objective,
    /// Kickoff minus the restored point's time, for kinds that restore one.
    pub rpo_seconds: Option<f64>,
    pub rpo_target_seconds: Option<u64>,
    /// The kind's facts: snapshot, restore job fields, command status and output tail, HTTP status...
    pub details: Value,
    /// What the next poll needs (a job id, a command id).
    pub state: Value,
    pub created_resources: Vec<CreatedResource>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// The execution that wrote it: a retried step of the same execution carries on from
    /// it, a later execution starts the component over.
    #[serde(default)]
    pub execution: Option<String>,
}

impl ComponentReceipt {
    /// Whether the RPO met its target; `None` without a target or a measurement.
    pub fn rpo_met(&self) -> Option<bool> {
        Some(self.rpo_seconds? <= self.rpo_target_seconds? as f64)
    }
}

/// One line of the summary's `components` list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComponentOutcome {
    pub name: String,
    pub kind: String,
    pub status: ComponentStatus,
    pub required: bool,
    pub rto_seconds: Option<f64>,
    pub rto_target_seconds: u64,
    pub rto_met: Option<bool>,
    pub rpo_seconds: Option<f64>,
    pub rpo_target_seconds: Option<u64>,
    pub rpo_met: Option<bool>,
    pub verified_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub created_resources: Vec<CreatedResource>,
}

impl From<&ComponentReceipt> for ComponentOutcome {
    fn from(r: &ComponentReceipt) -> Self {
        Self {
            name: r.name.clone(),
            kind: r.kind.clone(),
            status: r.status,
            required: r.required,
            rto_seconds: r.rto.seconds,
            rto_target_seconds: r.rto.target_seconds,
            rto_met: r.rto.met,
            rpo_seconds: r.rpo_seconds,
            rpo_target_seconds: r.rpo_target_seconds,
            rpo_met: r.rpo_met(),
            verified_at: r.verified_at,
            reason: r.reason.clone(),
            created_resources: r.created_resources.clone(),
        }
    }
}

/// The overall RTO of a run: the later of the S3 data's (`s3_seconds`: kickoff to the
/// promotion, or to the validation when not promoted) and the slowest required
/// component's; not measured while a required component is not verified.
pub fn overall_rto(s3_seconds: Option<f64>, components: &[ComponentOutcome]) -> Option<f64> {
    let mut rto = s3_seconds?;
    for c in components.iter().filter(|c| c.required) {
        rto = rto.max(c.rto_seconds?);
    }
    Some(rto)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_identifiers_fit_rds_and_are_stable() {
        assert_eq!(restored_identifier("pg", "drill-1"), "pg-drpilot-drill-1");
        assert_eq!(restored_identifier("pg", "Drill_1"), "pg-drpilot-drill-1");
        let long = "r".repeat(72);
        let id = restored_identifier("orders-db", &long);
        assert!(id.len() <= 63, "{id}");
        check_rds_identifier(&id).unwrap();
        assert_eq!(id, restored_identifier("orders-db", &long));
        assert_ne!(id, restored_identifier("orders-db", &"s".repeat(72)));
    }

    #[test]
    fn backup_sources_drpilot_can_clean_up() {
        assert_eq!(
            RestoredResource::of_backup_source("arn:aws:rds:eu-west-1:123456789012:db:orders"),
            Ok("orders")
        );
        let err = RestoredResource::of_backup_source(
            "arn:aws:dynamodb:eu-west-1:123456789012:table/orders",
        )
        .unwrap_err();
        assert!(err.contains("dynamodb"), "{err}");
    }
}
