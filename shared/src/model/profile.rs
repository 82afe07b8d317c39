//! Profiles: where a protected system's data lives and what a good restore of it means.
//! Loaded from SSM Parameter Store (`/drpilot/profiles/<name>`) or, when
//! `DRPILOT_PROFILE_DIR` is set, from `<dir>/<name>.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use aws_sdk_ssm::operation::get_parameter::GetParameterError;
use serde::{Deserialize, Serialize};

use crate::component::{self, ComponentSpec};
use crate::error::{decode_slice, Error, Result};
use crate::input::NameRule;
use crate::s3uri::{as_prefix, RelativeKey, S3Uri};

pub const SSM_PREFIX: &str = "/drpilot/profiles/";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The bucket and prefixes a run restores into and promotes within.
    pub target: Target,
    /// Where backups live: `s3://bucket/prefix/backups/`, one `<backup_id>/` below it each.
    pub backups: S3Uri,
    /// Where receipts and run summaries go.
    pub receipts: S3Uri,
    /// The account and region the phases must run in.
    pub account_id: String,
    pub region: String,
    pub rto_target_seconds: u64,
    pub rpo_target_seconds: u64,
    /// Checks validate runs besides the manifest comparison.
    #[serde(default)]
    pub checks: Vec<Check>,
    /// Optional pointer to the control-plane bundle restore stages with the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlane>,
    /// How long a run lock stays valid without its owner releasing it.
    #[serde(default = "default_lock_ttl")]
    pub lock_ttl_seconds: u64,
    /// A sharded backup's plan groups consecutive shards into ranges of at most this many
    /// objects: one child's work per phase, bounded so it fits Lambda's 15 minutes
    /// (docs/limits.md).
    #[serde(default = "default_objects_per_range")]
    pub objects_per_range: u64,
    /// Delete objects only in `root/` on promote (otherwise reported as drift).
    #[serde(default)]
    pub prune_drift: bool,
    /// With `prune_drift`: the most drift promote deletes, as a percentage of the objects
    /// the promotion touches (staging's and `root/`'s together, per range of the plan).
    /// More is refused before anything is written: a staging emptied or replaced after
    /// validation would otherwise make all of `root/` drift.
    #[serde(default = "default_prune_drift_max_percent")]
    pub prune_drift_max_percent: u8,
    /// validate re-reads and hashes every staged object instead of trusting the SHA-256
    /// restore stored with it.
    #[serde(default)]
    pub full_validation: bool,
    /// Databases and services restored and verified beside the S3 data, each with its
    /// own RTO (see [`crate::component`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ComponentSpec>,
    /// How many components restore at once.
    #[serde(default = "default_component_concurrency")]
    pub component_concurrency: u32,
    /// The primary site a failback returns the data to (the target is the DR site).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<Primary>,
    /// The approver of a promotion (or failback confirmation) must not be the principal
    /// that started the run; the approve function enforces it.
    #[serde(default)]
    pub two_person_rule: bool,
    /// What makes two approvers two people: an assumed role is one person (`role`, the
    /// default) unless the role's trust policy makes each session name a person's own
    /// (`session`; see `docs/security.md`).
    #[serde(default)]
    pub approver_identity: crate::identity::PersonRule,
    /// A drill may promote without an approval (`auto_promote` + `allow_promote_bypass`
    /// in its input) only when the profile's owners allow it here: the input alone is
    /// written by whoever may start an execution.
    #[serde(default)]
    pub allow_drill_promote_bypass: bool,
    /// A drill's failback may confirm with the literals (`FAILBACK`, `CONFIRM-<run>`)
    /// instead of two sealed approvals only when the profile allows it here.
    #[serde(default)]
    pub allow_drill_failback_literals: bool,
    /// How long evidence is kept: the receipts location's Object Lock retention, which
    /// reports state and readiness checks (`EvidenceRetentionDays` in the template).
    #[serde(default = "default_evidence_retention_days")]
    pub evidence_retention_days: u32,
    /// A successful drill is due at least this often (readiness's `DaysSinceLastDrill`
    /// and the evidence's on-schedule share).
    #[serde(default = "default_drill_interval_days")]
    pub drill_interval_days: u32,
}

/// The primary site's data: the `root/` a failback copies the DR site's `root/` back into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Primary {
    pub bucket: String,
    #[serde(default = "default_root")]
    pub root_prefix: String,
    /// The primary bucket's region; the profile's `region` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl Primary {
    pub fn root(&self) -> S3Uri {
        S3Uri {
            bucket: self.bucket.clone(),
            key: as_prefix(&self.root_prefix),
        }
    }
}

fn default_component_concurrency() -> u32 {
    4
}

/// Three years: what SOC 2 and ISO 27001 auditors ask DR test results be kept.
fn default_evidence_retention_days() -> u32 {
    1095
}

/// The template's drill schedule runs monthly; a few days' slack.
fn default_drill_interval_days() -> u32 {
    35
}

fn default_prune_drift_max_percent() -> u8 {
    10
}

fn default_objects_per_range() -> u64 {
    crate::plan::OBJECTS_PER_RANGE
}

/// Longer than a run can take with the template's default approval timeout (24 h): a
/// lock must not expire while its run waits for a person.
fn default_lock_ttl() -> u64 {
    48 * 3600
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub bucket: String,
    #[serde(default = "default_root")]
    pub root_prefix: String,
    #[serde(default = "default_staging")]
    pub staging_prefix: String,
    #[serde(default = "default_audit")]
    pub audit_prefix: String,
    #[serde(default = "default_locks")]
    pub locks_prefix: String,
}

fn default_root() -> String {
    "root/".into()
}
fn default_staging() -> String {
    "_staging/".into()
}
fn default_audit() -> String {
    "audit/".into()
}
fn default_locks() -> String {
    "locks/".into()
}

impl Target {
    fn location(&self, prefix: &str) -> S3Uri {
        S3Uri {
            bucket: self.bucket.clone(),
            key: as_prefix(prefix),
        }
    }
    /// Production data: `root/`.
    pub fn root(&self) -> S3Uri {
        self.location(&self.root_prefix)
    }
    /// A run's staging: `_staging/<run_id>/`.
    pub fn staging(&self, run_id: &str) -> Result<S3Uri> {
        self.location(&self.staging_prefix)
            .join(run_id)
            .map(|uri| uri.as_prefix())
            .map_err(|e| Error::input(format!("run_id: {e}")))
    }
    pub fn audit(&self) -> S3Uri {
        self.location(&self.audit_prefix)
    }
    /// The publish pointer: `audit/published.json` (see [`crate::published`]).
    pub fn published(&self) -> S3Uri {
        S3Uri {
            bucket: self.bucket.clone(),
            key: format!("{}published.json", as_prefix(&self.audit_prefix)),
        }
    }
    /// The run lock object: `locks/drill.lock`.
    pub fn lock(&self) -> S3Uri {
        S3Uri {
            bucket: self.bucket.clone(),
            key: format!("{}drill.lock", as_prefix(&self.locks_prefix)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Check {
    /// A CloudWatch metric statistic over a window, compared with a threshold
    /// (e.g. `SyncFailed` Sum over the last hour equals 0).
    CloudwatchMetric {
        /// What the receipt calls this check.
        name: String,
        namespace: String,
        metric_name: String,
        #[serde(default)]
        dimensions: BTreeMap<String, String>,
        #[serde(default = "default_stat")]
        stat: Statistic,
        /// How far back from validation the statistic covers: a whole number of minutes,
        /// since CloudWatch periods are multiples of 60 s.
        #[serde(default = "default_window")]
        window_seconds: u64,
        #[serde(default)]
        comparison: Comparison,
        #[serde(default)]
        threshold: f64,
        /// Whether a window with no datapoints passes the check. Required: whether
        /// "no data" means "healthy" (a failure counter nobody incremented) or "broken"
        /// (a heartbeat that stopped) is the profile author's call, never a default.
        missing_data_passes: bool,
    },
}

/// The CloudWatch statistics a check can compare. Each combines across the periods
/// CloudWatch may split a window into as itself: sums add, minima take the smallest,
/// maxima the largest, and an average is the window's sum over its sample count.
/// Percentiles are left out on purpose: they cannot be combined across periods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Statistic {
    Sum,
    SampleCount,
    Minimum,
    Maximum,
    Average,
}

impl Statistic {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sum => "Sum",
            Self::SampleCount => "SampleCount",
            Self::Minimum => "Minimum",
            Self::Maximum => "Maximum",
            Self::Average => "Average",
        }
    }

    /// What to ask CloudWatch for to know this statistic over a window that may come back
    /// split into periods: an average is combined from the sums and the sample counts.
    pub fn queried(self) -> &'static [Statistic] {
        match self {
            Self::Average => &[Self::Sum, Self::SampleCount],
            Self::Sum => &[Self::Sum],
            Self::SampleCount => &[Self::SampleCount],
            Self::Minimum => &[Self::Minimum],
            Self::Maximum => &[Self::Maximum],
        }
    }

    /// The window's value from the per-period values CloudWatch returned for each
    /// [`queried`](Self::queried) statistic; `None` when there are none.
    pub fn over_window(self, values_of: impl Fn(Statistic) -> Vec<f64>) -> Option<f64> {
        if self == Self::Average {
            let count: f64 = values_of(Self::SampleCount).iter().sum();
            return (count > 0.0).then(|| values_of(Self::Sum).iter().sum::<f64>() / count);
        }
        let values = values_of(self);
        if values.is_empty() {
            return None;
        }
        Some(match self {
            Self::Minimum => values.iter().copied().fold(f64::INFINITY, f64::min),
            Self::Maximum => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            _ => values.iter().sum(),
        })
    }
}

impl std::fmt::Display for Statistic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_stat() -> Statistic {
    Statistic::Sum
}
fn default_window() -> u64 {
    3600
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    #[default]
    Equal,
    LessThanOrEqual,
    GreaterThanOrEqual,
}

impl Comparison {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Equal => (value - threshold).abs() < f64::EPSILON,
            Self::LessThanOrEqual => value <= threshold,
            Self::GreaterThanOrEqual => value >= threshold,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlane {
    /// `<prefix>/control-plane/current.json`.
    pub pointer: S3Uri,
}

impl Profile {
    /// `lock_ttl_seconds` as the duration a run lock is taken for (a value past what a
    /// duration holds is as good as forever).
    pub fn lock_ttl(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::try_from(self.lock_ttl_seconds).unwrap_or(i64::MAX / 2))
    }

    /// Parses and checks a profile document. `origin` names where it came from.
    pub fn from_json(origin: &str, text: &str) -> Result<Self> {
        let profile: Profile = decode_slice(&format!("profile {origin}"), text.as_bytes())
            .map_err(|e| Error::input(e.to_string()).with_source(e))?;
        profile
            .validate()
            .map_err(|why| Error::input(format!("profile {origin}: {why}")))?;
        Ok(profile)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        self.target.validate()?;
        if self.account_id.len() != 12 || !self.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "account_id: expected 12 digits, got {:?}",
                self.account_id
            ));
        }
        if !is_region(&self.region) {
            return Err(format!(
                "region: expected an AWS region such as eu-west-1, got {:?}",
                self.region
            ));
        }
        if self.rto_target_seconds == 0 || self.rpo_target_seconds == 0 {
            return Err(
                "rto_target_seconds/rpo_target_seconds: expected a positive number of seconds"
                    .into(),
            );
        }
        if !(1..=36500).contains(&self.evidence_retention_days) {
            return Err(format!(
                "evidence_retention_days: expected 1 to 36500 days, got {}",
                self.evidence_retention_days
            ));
        }
        if !(1..=3650).contains(&self.drill_interval_days) {
            return Err(format!(
                "drill_interval_days: expected 1 to 3650 days, got {}",
                self.drill_interval_days
            ));
        }
        if self.lock_ttl_seconds == 0 {
            return Err("lock_ttl_seconds: expected a positive number of seconds".into());
        }
        if self.objects_per_range == 0 {
            return Err("objects_per_range: expected a positive number of objects".into());
        }
        if self.prune_drift_max_percent > 100 {
            return Err(format!(
                "prune_drift_max_percent: expected 0 to 100, got {}",
                self.prune_drift_max_percent
            ));
        }
        for (i, check) in self.checks.iter().enumerate() {
            let Check::CloudwatchMetric {
                name,
                window_seconds,
                ..
            } = check;
            if name.is_empty() {
                return Err(format!("checks[{i}].name: expected a non-empty name"));
            }
            if *window_seconds < 60 || window_seconds % 60 != 0 {
                return Err(format!(
                    "checks[{i}].window_seconds: expected a positive multiple of 60, got {window_seconds}"
                ));
            }
        }
        component::validate(&self.components, self.component_concurrency)?;
        if let Some(primary) = &self.primary {
            primary.validate(&self.target)?;
        }
        Ok(())
    }
}

impl Target {
    /// The target's bucket and prefixes: valid keys, and staging apart from `root/`.
    fn validate(&self) -> std::result::Result<(), String> {
        S3Uri::new(self.bucket.clone(), "").map_err(|e| format!("target.bucket: {e}"))?;
        for (field, prefix) in [
            ("target.root_prefix", &self.root_prefix),
            ("target.staging_prefix", &self.staging_prefix),
            ("target.audit_prefix", &self.audit_prefix),
            ("target.locks_prefix", &self.locks_prefix),
        ] {
            RelativeKey::parse(prefix.trim_end_matches('/'))
                .map_err(|e| format!("{field}: {e}"))?;
        }
        let root = as_prefix(&self.root_prefix);
        let staging = as_prefix(&self.staging_prefix);
        if root.starts_with(&staging) || staging.starts_with(&root) {
            return Err(format!(
            "target.staging_prefix: {staging:?} and root_prefix {root:?} must not contain each other"
        ));
        }
        Ok(())
    }
}

impl Primary {
    /// The primary site's location: a valid key, apart from the DR `target`'s root.
    fn validate(&self, target: &Target) -> std::result::Result<(), String> {
        S3Uri::new(self.bucket.clone(), "").map_err(|e| format!("primary.bucket: {e}"))?;
        RelativeKey::parse(self.root_prefix.trim_end_matches('/'))
            .map_err(|e| format!("primary.root_prefix: {e}"))?;
        let (primary_root, dr_root) = (self.root(), target.root());
        let overlap = primary_root.bucket == dr_root.bucket
            && (primary_root.key.starts_with(&dr_root.key)
                || dr_root.key.starts_with(&primary_root.key));
        if overlap {
            return Err(format!(
                "primary: {primary_root} and the DR target's {dr_root} must not contain each other"
            ));
        }
        if let Some(region) = &self.region {
            if !is_region(region) {
                return Err(format!(
                    "primary.region: expected an AWS region such as eu-west-1, got {region:?}"
                ));
            }
        }
        Ok(())
    }
}

/// An AWS region's shape (`eu-west-1`): lower-case letters, digits and hyphens.
fn is_region(region: &str) -> bool {
    !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Stores `text` as the SSM parameter of profile `name`, as it is (see
/// [`ProfileSource::save`] for the checked write).
pub async fn put_parameter(ssm: &aws_sdk_ssm::Client, name: &str, text: &str) -> Result<()> {
    let parameter = format!("{SSM_PREFIX}{name}");
    ssm.put_parameter()
        .name(&parameter)
        .value(text)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .map_err(|e| Error::from_sdk(&format!("PutParameter {parameter}"), e))?;
    Ok(())
}

/// Where profiles are read from.
#[derive(Clone, Debug)]
pub enum ProfileSource {
    Ssm(aws_sdk_ssm::Client),
    Dir(PathBuf),
}

impl ProfileSource {
    /// `DRPILOT_PROFILE_DIR` when set (local runs), else SSM.
    pub fn from_env(ssm: aws_sdk_ssm::Client) -> Self {
        match std::env::var_os("DRPILOT_PROFILE_DIR") {
            Some(dir) if !dir.is_empty() => Self::Dir(dir.into()),
            _ => Self::Ssm(ssm),
        }
    }

    /// Checks `text` is a valid profile, then stores it as profile `name` (replacing one
    /// of that name): nothing is written when it is not valid.
    pub async fn save(&self, name: &str, text: &str) -> Result<Profile> {
        NameRule::PROFILE
            .check(name)
            .map_err(|why| Error::input(format!("profile: {why}")))?;
        let profile = Profile::from_json(name, text)?;
        match self {
            Self::Ssm(ssm) => put_parameter(ssm, name, text).await?,
            Self::Dir(dir) => {
                let path = dir.join(format!("{name}.json"));
                tokio::fs::write(&path, text)
                    .await
                    .map_err(|e| Error::input(format!("writing {}: {e}", path.display())))?;
            }
        }
        Ok(profile)
    }

    /// Every stored profile with its name, sorted by name: one paginated
    /// `GetParametersByPath` (values decrypted) rather than a read per profile. A profile
    /// that does not parse is an error naming it, as [`Self::load`] would give.
    pub async fn load_all(&self) -> Result<Vec<(String, Profile)>> {
        let mut profiles = Vec::new();
        match self {
            Self::Ssm(ssm) => {
                let mut pages = ssm
                    .get_parameters_by_path()
                    .path(SSM_PREFIX.trim_end_matches('/'))
                    .with_decryption(true)
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| {
                        Error::from_sdk(&format!("GetParametersByPath {SSM_PREFIX}"), e)
                    })?;
                    for parameter in page.parameters() {
                        let Some(name) = parameter.name().and_then(|n| n.strip_prefix(SSM_PREFIX))
                        else {
                            continue;
                        };
                        let origin = format!("{name} (SSM {SSM_PREFIX}{name})");
                        let text = parameter.value().ok_or_else(|| {
                            Error::input(format!("profile {origin}: parameter has no value"))
                        })?;
                        profiles.push((name.to_owned(), Profile::from_json(&origin, text)?));
                    }
                }
            }
            Self::Dir(dir) => {
                let entries = std::fs::read_dir(dir)
                    .map_err(|e| Error::input(format!("reading {}: {e}", dir.display())))?;
                let mut names = Vec::new();
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.extension().is_some_and(|e| e == "json") {
                        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                            names.push(stem.to_owned());
                        }
                    }
                }
                for name in names {
                    let profile = self.load(&name).await?;
                    profiles.push((name, profile));
                }
            }
        }
        profiles.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(profiles)
    }

    pub async fn load(&self, name: &str) -> Result<Profile> {
        NameRule::PROFILE
            .check(name)
            .map_err(|why| Error::input(format!("profile: {why}")))?;
        match self {
            Self::Ssm(ssm) => {
                let parameter = format!("{SSM_PREFIX}{name}");
                let origin = format!("{name} (SSM {parameter})");
                let out = ssm
                    .get_parameter()
                    .name(&parameter)
                    .with_decryption(true)
                    .send()
                    .await
                    .map_err(|err| match err.as_service_error() {
                        Some(GetParameterError::ParameterNotFound(_)) => Error::input(format!(
                            "profile: {name:?} not found: no SSM parameter {parameter}"
                        )),
                        _ => Error::from_sdk(&format!("GetParameter {parameter}"), err),
                    })?;
                let text = out.parameter.and_then(|p| p.value).ok_or_else(|| {
                    Error::input(format!("profile {origin}: parameter has no value"))
                })?;
                Profile::from_json(&origin, &text)
            }
            Self::Dir(dir) => {
                let path = dir.join(format!("{name}.json"));
                let origin = format!("{name} ({})", path.display());
                let text = tokio::fs::read_to_string(&path).await.map_err(|e| {
                    Error::input(format!(
                        "profile: {name:?} not found: cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                Profile::from_json(&origin, &text)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Statistic;

    #[test]
    fn each_statistic_combines_as_itself() {
        let split = [3.0, 1.0, 2.0];
        let periods = |_: Statistic| split.to_vec();
        assert_eq!(Statistic::Sum.over_window(periods), Some(6.0));
        assert_eq!(Statistic::SampleCount.over_window(periods), Some(6.0));
        assert_eq!(Statistic::Minimum.over_window(periods), Some(1.0));
        assert_eq!(Statistic::Maximum.over_window(periods), Some(3.0));
        assert_eq!(Statistic::Sum.over_window(|_| Vec::new()), None);
        // 10 over 4 samples and 2 over 1 sample: 12 / 5, not the mean of the means.
        let split_average = |s: Statistic| match s {
            Statistic::Sum => vec![10.0, 2.0],
            Statistic::SampleCount => vec![4.0, 1.0],
            other => panic!("an average never asks for {other}"),
        };
        assert_eq!(Statistic::Average.over_window(split_average), Some(2.4));
        assert_eq!(Statistic::Average.over_window(|_| Vec::new()), None);
    }
}
