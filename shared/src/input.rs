//! The execution input (docs/contracts.md) and the normalisation of every trigger shape into it:
//! console/CLI JSON, an EventBridge scheduled event, and a CloudWatch alarm state change
//! (the EventBridge event or the alarm's direct Lambda action payload).

use std::fmt;
use std::str::FromStr;

use aws_lambda_events::cloudwatch_alarms::{CloudWatchAlarm, CloudWatchAlarmData};
use aws_lambda_events::eventbridge::EventBridgeEvent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::s3uri::S3Uri;

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

/// The phases, in the order a run goes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Bringup,
    Restore,
    Validate,
    ParityReport,
    Promote,
    Teardown,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Bringup,
        Phase::Restore,
        Phase::Validate,
        Phase::ParityReport,
        Phase::Promote,
        Phase::Teardown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bringup => "bringup",
            Self::Restore => "restore",
            Self::Validate => "validate",
            Self::ParityReport => "parity-report",
            Self::Promote => "promote",
            Self::Teardown => "teardown",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                Error::input(format!(
                    "phase: expected one of bringup, restore, validate, parity-report, promote, teardown; got {s:?}"
                ))
            })
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
        let input: RunInput = serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner().to_string();
            if path == "." {
                // serde reports unknown and missing fields at the top level itself.
                Error::input(format!("input: {inner}"))
            } else {
                Error::input(format!("{path}: {inner}"))
            }
        })?;
        input.validate()?;
        Ok(input)
    }

    /// The checks serde cannot express. Every error names its field.
    pub fn validate(&self) -> Result<()> {
        if let Some(run_id) = &self.run_id {
            validate_run_id(run_id).map_err(|why| Error::input(format!("run_id: {why}")))?;
        }
        validate_profile_name(&self.profile)
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

    /// Why `phase` does not run for this input, or `None` when it does. Bringup (the
    /// precondition gate: guard, backup, lock) and teardown (which releases the lock)
    /// always run; the `start_at..=stop_after` window selects among the others.
    pub fn skip_reason(&self, phase: Phase) -> Option<String> {
        match phase {
            Phase::Bringup | Phase::Teardown => None,
            _ if phase < self.start_at => Some(format!("start_at={}", self.start_at)),
            _ if phase > self.stop_after => Some(format!("stop_after={}", self.stop_after)),
            _ => None,
        }
    }

    /// Whether `phase` runs for this input.
    pub fn runs(&self, phase: Phase) -> bool {
        self.skip_reason(phase).is_none()
    }
}

/// Run ids end up in S3 keys and execution names: `[A-Za-z0-9_-]`, 1-80, starting alphanumeric.
pub fn validate_run_id(run_id: &str) -> std::result::Result<(), String> {
    let ok = (1..=80).contains(&run_id.len())
        && run_id
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected 1-80 characters of A-Z a-z 0-9 - _ starting with a letter or digit, got {run_id:?}"
        ))
    }
}

/// Profile names become SSM parameter names and file names: `[A-Za-z0-9_.-]`, 1-64.
pub fn validate_profile_name(name: &str) -> std::result::Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a profile name of 1-64 characters of A-Z a-z 0-9 . - _, got {name:?}"
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
        /// Who started it (the caller's IAM ARN), when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
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
    /// A manual start by an unknown caller.
    pub fn manual() -> Self {
        Self::Manual { source: None }
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
        }
        let flat: Flat = serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if path == "." {
                Error::input(format!("trigger: {inner}"))
            } else {
                Error::input(format!("trigger.{path}: {inner}"))
            }
        })?;
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
                    });
                }
                Ok(Self::Schedule {
                    source: flat.source,
                    fired_at: flat.fired_at,
                })
            }
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
    let event: EventBridgeEvent<Value> = serde_path_to_error::deserialize(raw)
        .map_err(|err| Error::input(format!("event {}: {}", err.path(), err.inner())))?;
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
                serde_path_to_error::deserialize(&event.detail).map_err(|err| {
                    Error::input(format!("event detail.{}: {}", err.path(), err.inner()))
                })?;
            let source = event.resources.and_then(|r| r.into_iter().next());
            alarm_run(detail, source, event.time, defaults)
        }
        (source, detail_type) => Err(Error::input(format!(
            "detail-type: drpilot starts on {SCHEDULED_EVENT:?} (aws.events) or {ALARM_STATE_CHANGE:?} (aws.cloudwatch) events, got {detail_type:?} from {source}"
        ))),
    }
}

fn normalize_alarm_action(raw: &Value, defaults: &TriggerDefaults) -> Result<Normalized> {
    let alarm: CloudWatchAlarm<Value, Value> = serde_path_to_error::deserialize(raw)
        .map_err(|err| Error::input(format!("alarm event {}: {}", err.path(), err.inner())))?;
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
