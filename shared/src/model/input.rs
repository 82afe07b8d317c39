//! The execution input (docs/contracts.md) and the normalisation of every trigger shape into it:
//! console/CLI JSON, an EventBridge scheduled event, and a CloudWatch alarm state change
//! (the EventBridge event or the alarm's direct Lambda action payload).

use std::fmt;

use aws_lambda_events::cloudwatch_alarms::{CloudWatchAlarm, CloudWatchAlarmData};
use aws_lambda_events::eventbridge::EventBridgeEvent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{decode_value, Error, Result};
use crate::s3uri::S3Uri;
use crate::stage::Phase;

/// Why a run exists: an exercise, or the real thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Drill,
    Recovery,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drill => "drill",
            Self::Recovery => "recovery",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The validated execution input every phase works from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInput {
    /// Names the run in every key it writes; defaults to the execution name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub mode: Mode,
    pub profile: String,
    /// The backup to restore; when absent, the newest valid one under the profile's
    /// backup prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_uri: Option<S3Uri>,
    #[serde(default)]
    pub auto_promote: bool,
    #[serde(default)]
    pub allow_promote_bypass: bool,
    /// `false` holds the run's staging for inspection; the lock is still released and the
    /// summary still written.
    #[serde(default = "default_true")]
    pub teardown: bool,
    #[serde(default = "first_phase")]
    pub start_at: Phase,
    #[serde(default = "last_phase")]
    pub stop_after: Phase,
    /// Check and report, change nothing outside the run's own receipts.
    #[serde(default)]
    pub dry_run: bool,
    /// How many attempts a phase gets at a transient (`Retryable`) failure, the first
    /// included: 1 (`--no-retry`) to [`MAX_ATTEMPTS`]. The state machine's retry count
    /// is fixed when it is deployed, so the phases honour this one: at the last attempt
    /// they report the failure as `ServiceError`, which the state machine does not retry.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

/// Attempts at a transient failure when the input does not say (two retries).
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// The most attempts an input may ask for: the state machine's `MaxAttempts` (2) plus
/// the first try. The phases can give up sooner than the state machine, never later.
pub const MAX_ATTEMPTS: u32 = 3;

fn default_attempts() -> u32 {
    DEFAULT_ATTEMPTS
}

fn default_true() -> bool {
    true
}
fn first_phase() -> Phase {
    Phase::Bringup
}
fn last_phase() -> Phase {
    Phase::Teardown
}

impl RunInput {
    /// A drill of `profile` with every default.
    pub fn drill(profile: impl Into<String>) -> Self {
        Self::with_mode(Mode::Drill, profile)
    }

    fn with_mode(mode: Mode, profile: impl Into<String>) -> Self {
        Self {
            run_id: None,
            mode,
            profile: profile.into(),
            backup_uri: None,
            auto_promote: false,
            allow_promote_bypass: false,
            teardown: true,
            start_at: first_phase(),
            stop_after: last_phase(),
            dry_run: false,
            max_attempts: DEFAULT_ATTEMPTS,
        }
    }

    /// Parses console/CLI JSON strictly: unknown fields, wrong types and bad values are
    /// `InputError`s that name the field.
    pub fn from_json(value: &Value) -> Result<Self> {
        if !value.is_object() {
            return Err(Error::input(format!(
                "input: expected a JSON object, got {}",
                json_type(value)
            )));
        }
        let input: RunInput =
            decode_value("input", value).map_err(|e| Error::input(e.to_string()).with_source(e))?;
        input.validate()?;
        Ok(input)
    }

    /// The checks serde cannot express. Every error names its field.
    pub fn validate(&self) -> Result<()> {
        if let Some(run_id) = &self.run_id {
            NameRule::RUN_ID
                .check(run_id)
                .and_then(|()| NameRule::check_run_kind(run_id, false))
                .map_err(|why| Error::input(format!("run_id: {why}")))?;
        }
        NameRule::PROFILE
            .check(&self.profile)
            .map_err(|why| Error::input(format!("profile: {why}")))?;
        if let Some(uri) = &self.backup_uri {
            if uri.key.trim_end_matches('/').is_empty() {
                return Err(Error::input(format!(
                    "backup_uri: expected s3://bucket/prefix/backups/<backup_id>, got {uri} (no key)"
                )));
            }
        }
        if self.start_at > self.stop_after {
            return Err(Error::input(format!(
                "start_at: {} comes after stop_after ({}); nothing would run",
                self.start_at, self.stop_after
            )));
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(Error::input(format!(
                "max_attempts: expected 1 to {MAX_ATTEMPTS} (the state machine retries a transient failure at most {} times), got {}",
                MAX_ATTEMPTS - 1,
                self.max_attempts
            )));
        }
        if self.mode == Mode::Recovery && self.allow_promote_bypass {
            return Err(Error::input(
                "allow_promote_bypass: the approval bypass is for drills only; a recovery needs an approval with approver and ticket",
            ));
        }
        Ok(())
    }

    /// Whether promote may go ahead without an approval: only in a drill, and only when
    /// both flags say so.
    pub fn approval_bypassed(&self) -> bool {
        self.mode == Mode::Drill && self.auto_promote && self.allow_promote_bypass
    }

    /// What the approval gate does for this input (see [`Promotion`]).
    pub fn promotion(&self) -> Promotion {
        if self.dry_run || !self.runs(Phase::Promote) {
            Promotion::Skip
        } else if self.approval_bypassed() {
            Promotion::Bypass
        } else {
            Promotion::Ask
        }
    }

    /// Why `phase` does not run for this input, or `None` when it does. Bringup (the
    /// precondition gate: guard, backup, lock) and teardown (which releases the lock)
    /// always run; the `start_at..=stop_after` window selects among the others.
    pub fn skip_reason(&self, phase: Phase) -> Option<String> {
        match phase {
            Phase::Bringup | Phase::Teardown => None,
            _ if phase < self.start_at => Some(format!("start_at={}", self.start_at)),
            // Components restore beside the S3 restore: "restore only" restores them too.
            Phase::Components if self.stop_after >= Phase::Restore => None,
            _ if phase > self.stop_after => Some(format!("stop_after={}", self.stop_after)),
            _ => None,
        }
    }

    /// Whether `phase` runs for this input.
    pub fn runs(&self, phase: Phase) -> bool {
        self.skip_reason(phase).is_none()
    }
}

/// A new run id for a run in `mode`: sortable by time, unique enough for one state
/// machine, and within [`NameRule::RUN_ID`].
pub fn new_run_id(mode: Mode) -> String {
    new_id(mode.as_str())
}

/// `<kind>-<UTC time>-<random>`: [`new_run_id`] for a run that is not a drill or a
/// recovery (a failback).
pub fn new_id(kind: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{kind}-{}-{}",
        Utc::now().format("%Y%m%d-%H%M%S"),
        &suffix[..6]
    )
}

/// What the state machine's approval gate does, decided once from the input (bringup
/// puts it in the run context; the gate only reads it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Promotion {
    /// Never promote: a dry run, or promote is outside the `start_at`/`stop_after` window.
    Skip,
    /// Promote without asking: a drill with `auto_promote` and `allow_promote_bypass`.
    Bypass,
    /// Ask an operator (approver and ticket) and wait for the answer.
    Ask,
}

/// Failback runs' ids begin with this, and drill and recovery runs' ids never do: both
/// kinds keep their records under `<receipts>/runs/<run_id>/`, and one kind's records
/// (approvals, audit copies) must never be found where the other kind's are looked for.
pub const FAILBACK_RUN_ID_PREFIX: &str = "failback-";

/// The shape of a name drpilot puts into S3 keys, execution names, SSM parameter names
/// and file names: ASCII letters and digits plus a few separators, starting with a letter
/// or digit, of bounded length. One rule per kind of name, checked by one function.
#[derive(Clone, Copy, Debug)]
pub struct NameRule {
    what: &'static str,
    max_len: usize,
    separators: &'static [u8],
}

impl NameRule {
    pub const fn new(what: &'static str, max_len: usize, separators: &'static [u8]) -> Self {
        Self {
            what,
            max_len,
            separators,
        }
    }

    /// Run ids end up in S3 keys and execution names: `<run_id>.<n>` must fit Step
    /// Functions' 80 characters, and `.` is what separates the run from the number.
    pub const RUN_ID: NameRule = NameRule {
        what: "a run id",
        max_len: 72,
        separators: b"-_",
    };
    /// Whether `run_id` belongs to the kind of run it names: failback runs' ids begin
    /// with [`FAILBACK_RUN_ID_PREFIX`], drill and recovery runs' never do.
    pub fn check_run_kind(run_id: &str, failback: bool) -> std::result::Result<(), String> {
        match (failback, run_id.starts_with(FAILBACK_RUN_ID_PREFIX)) {
            (true, false) => Err(format!(
                "a failback's run id begins with {FAILBACK_RUN_ID_PREFIX:?}, got {run_id:?}"
            )),
            (false, true) => Err(format!(
                "{run_id:?} is a failback's run id (they begin with {FAILBACK_RUN_ID_PREFIX:?}); a drill or recovery needs another"
            )),
            _ => Ok(()),
        }
    }

    /// Profile names become SSM parameter names and file names.
    pub const PROFILE: NameRule = NameRule {
        what: "a profile name",
        max_len: 64,
        separators: b"-_.",
    };

    /// Whether `name` follows the rule; the error says what was expected.
    pub fn check(&self, name: &str) -> std::result::Result<(), String> {
        let ok = (1..=self.max_len).contains(&name.len())
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || self.separators.contains(&b));
        if ok {
            return Ok(());
        }
        let separators: Vec<String> = self
            .separators
            .iter()
            .map(|b| char::from(*b).to_string())
            .collect();
        Err(format!(
            "expected {} of 1-{} characters of A-Z a-z 0-9 {} starting with a letter or digit, got {name:?}",
            self.what,
            self.max_len,
            separators.join(" ")
        ))
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What started the run, kept for the receipts and the summary. The execution input
/// may carry it as `trigger` (the deployed schedule and alarm rule pass it); a raw
/// EventBridge or alarm event is turned into it; otherwise the run is manual.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// Console, CLI, or any caller that passes the input JSON itself.
    Manual {
        /// Who started it: the ARN STS proved (`verified`), else what the input claims.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        /// `source` is STS's answer to the starter's signed request, which bringup
        /// executed ([`crate::identity`]); never taken from the input.
        #[serde(default)]
        verified: bool,
        /// The starter's proof of identity (`drpilot start` signs it, bound to the
        /// execution's name); bringup verifies it and drops it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proof: Option<crate::identity::IdentityProof>,
    },
    /// An EventBridge schedule (the monthly drill).
    Schedule {
        /// The schedule's (or rule's) ARN.
        #[serde(default)]
        source: Option<String>,
        #[serde(default)]
        fired_at: Option<DateTime<Utc>>,
    },
    /// A CloudWatch alarm went into ALARM (recovery mode).
    Alarm {
        /// The alarm's ARN.
        #[serde(default)]
        source: Option<String>,
        alarm_name: String,
        #[serde(default)]
        alarm_reason: Option<String>,
        #[serde(default)]
        fired_at: Option<DateTime<Utc>>,
    },
}

impl Trigger {
    /// `manual`, `schedule` or `alarm`, as the input's `trigger.kind` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Manual { .. } => "manual",
            Self::Schedule { .. } => "schedule",
            Self::Alarm { .. } => "alarm",
        }
    }

    /// A manual start by an unknown caller.
    pub fn manual() -> Self {
        Self::Manual {
            source: None,
            verified: false,
            proof: None,
        }
    }

    /// The person STS proved started the run, if one did.
    pub fn proven_starter(&self) -> Option<&str> {
        match self {
            Self::Manual {
                source: Some(source),
                verified: true,
                ..
            } => Some(source),
            _ => None,
        }
    }

    /// Parses the input's `trigger` object; errors name the field. Read through a flat
    /// shape first: serde loses the field path inside an internally tagged enum.
    fn from_input(value: &Value) -> Result<Self> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Flat {
            kind: String,
            #[serde(default)]
            source: Option<String>,
            #[serde(default)]
            alarm_name: Option<String>,
            #[serde(default)]
            alarm_reason: Option<String>,
            #[serde(default)]
            fired_at: Option<DateTime<Utc>>,
            #[serde(default)]
            proof: Option<crate::identity::IdentityProof>,
            /// Accepted (a run record's trigger may be passed back) and never believed:
            /// only bringup's check of `proof` makes a starter verified.
            #[serde(default, rename = "verified")]
            _verified: bool,
        }
        let flat: Flat = decode_value("trigger", value)
            .map_err(|e| Error::input(e.to_string()).with_source(e))?;
        let only_for_alarms = |field: &str, present: bool| {
            if present {
                Err(Error::input(format!(
                    "trigger.{field}: only an alarm trigger has it (kind is {:?})",
                    flat.kind
                )))
            } else {
                Ok(())
            }
        };
        match flat.kind.as_str() {
            "manual" | "schedule" => {
                only_for_alarms("alarm_name", flat.alarm_name.is_some())?;
                only_for_alarms("alarm_reason", flat.alarm_reason.is_some())?;
                if flat.kind == "manual" {
                    if flat.fired_at.is_some() {
                        return Err(Error::input(
                            "trigger.fired_at: a manual start has no firing time",
                        ));
                    }
                    return Ok(Self::Manual {
                        source: flat.source,
                        verified: false,
                        proof: flat.proof,
                    });
                }
                if flat.proof.is_some() {
                    return Err(Error::input(
                        "trigger.proof: only a manual start proves who started it",
                    ));
                }
                Ok(Self::Schedule {
                    source: flat.source,
                    fired_at: flat.fired_at,
                })
            }
            "alarm" if flat.proof.is_some() => Err(Error::input(
                "trigger.proof: only a manual start proves who started it",
            )),
            "alarm" => Ok(Self::Alarm {
                source: flat.source,
                alarm_name: flat.alarm_name.filter(|n| !n.is_empty()).ok_or_else(|| {
                    Error::input("trigger.alarm_name: an alarm trigger names its alarm")
                })?,
                alarm_reason: flat.alarm_reason,
                fired_at: flat.fired_at,
            }),
            other => Err(Error::input(format!(
                "trigger.kind: expected manual, schedule or alarm, got {other:?}"
            ))),
        }
    }
}

/// What a trigger that carries no input of its own runs with.
#[derive(Clone, Debug, Default)]
pub struct TriggerDefaults {
    /// The profile scheduled and alarm runs use (`DRPILOT_DEFAULT_PROFILE` on the function).
    pub profile: Option<String>,
}

impl TriggerDefaults {
    pub fn from_env() -> Self {
        Self {
            profile: std::env::var("DRPILOT_DEFAULT_PROFILE")
                .ok()
                .filter(|p| !p.is_empty()),
        }
    }

    fn profile_for(&self, trigger: &str) -> Result<String> {
        self.profile.clone().ok_or_else(|| {
            Error::input(format!(
                "profile: a {trigger} carries no profile and DRPILOT_DEFAULT_PROFILE is not set on the function"
            ))
        })
    }
}

/// An input after normalisation: the run's settings and what started it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Normalized {
    pub input: RunInput,
    pub trigger: Trigger,
}

const SCHEDULED_EVENT: &str = "Scheduled Event";
const ALARM_STATE_CHANGE: &str = "CloudWatch Alarm State Change";

/// Turns whatever started the execution into one validated [`RunInput`].
pub fn normalize(raw: &Value, defaults: &TriggerDefaults) -> Result<Normalized> {
    let Some(object) = raw.as_object() else {
        return Err(Error::input(format!(
            "input: expected a JSON object, got {}",
            json_type(raw)
        )));
    };
    if object.contains_key("detail-type") && object.contains_key("source") {
        return normalize_eventbridge(raw, defaults);
    }
    if object.contains_key("alarmData") {
        return normalize_alarm_action(raw, defaults);
    }
    // The deployed rules pass the run's settings with a `trigger` beside them.
    let mut settings = object.clone();
    let trigger = match settings.remove("trigger") {
        Some(trigger) => Trigger::from_input(&trigger)?,
        None => Trigger::manual(),
    };
    Ok(Normalized {
        input: RunInput::from_json(&Value::Object(settings))?,
        trigger,
    })
}

fn normalize_eventbridge(raw: &Value, defaults: &TriggerDefaults) -> Result<Normalized> {
    let event: EventBridgeEvent<Value> =
        decode_value("event", raw).map_err(|e| Error::input(e.to_string()).with_source(e))?;
    match (event.source.as_str(), event.detail_type.as_str()) {
        ("aws.events", SCHEDULED_EVENT) | ("aws.scheduler", SCHEDULED_EVENT) => {
            let input = RunInput::drill(defaults.profile_for("scheduled event")?);
            input.validate()?;
            Ok(Normalized {
                input,
                trigger: Trigger::Schedule {
                    source: event.resources.and_then(|r| r.into_iter().next()),
                    fired_at: event.time,
                },
            })
        }
        ("aws.cloudwatch", ALARM_STATE_CHANGE) => {
            let detail: CloudWatchAlarmData<Value, Value> =
                decode_value("event detail", &event.detail)
                    .map_err(|e| Error::input(e.to_string()).with_source(e))?;
            let source = event.resources.and_then(|r| r.into_iter().next());
            alarm_run(detail, source, event.time, defaults)
        }
        (source, detail_type) => Err(Error::input(format!(
            "detail-type: drpilot starts on {SCHEDULED_EVENT:?} (aws.events) or {ALARM_STATE_CHANGE:?} (aws.cloudwatch) events, got {detail_type:?} from {source}"
        ))),
    }
}

fn normalize_alarm_action(raw: &Value, defaults: &TriggerDefaults) -> Result<Normalized> {
    let alarm: CloudWatchAlarm<Value, Value> =
        decode_value("alarm event", raw).map_err(|e| Error::input(e.to_string()).with_source(e))?;
    alarm_run(
        alarm.alarm_data,
        alarm.alarm_arn,
        Some(alarm.time),
        defaults,
    )
}

fn alarm_run(
    data: CloudWatchAlarmData<Value, Value>,
    source: Option<String>,
    time: Option<DateTime<Utc>>,
    defaults: &TriggerDefaults,
) -> Result<Normalized> {
    use aws_lambda_events::cloudwatch_alarms::CloudWatchAlarmStateValue;
    let state = data.state.ok_or_else(|| {
        Error::input(format!(
            "detail.state: alarm {} event has no state",
            data.alarm_name
        ))
    })?;
    if state.value != CloudWatchAlarmStateValue::Alarm {
        return Err(Error::input(format!(
            "detail.state.value: alarm {} is {:?}; a recovery starts only on ALARM",
            data.alarm_name, state.value
        )));
    }
    let mut input = RunInput::with_mode(Mode::Recovery, defaults.profile_for("alarm event")?);
    // A recovery restores the newest backup and waits for a person to approve promotion.
    input.auto_promote = false;
    input.validate()?;
    Ok(Normalized {
        input,
        trigger: Trigger::Alarm {
            source,
            alarm_name: data.alarm_name,
            alarm_reason: Some(state.reason),
            fired_at: time,
        },
    })
}
