//! What a run goes through: a drill's phases ([`Phase`]), a failback's steps
//! ([`FailbackStep`]), and the states an operator follows in either state machine
//! ([`Stage`]), by the names the history and `drpilot status` show.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The phases, in the order a run goes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Bringup,
    Restore,
    /// The profile's components, restored and verified beside the S3 restore.
    Components,
    Validate,
    ParityReport,
    Promote,
    Teardown,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Bringup,
        Phase::Restore,
        Phase::Components,
        Phase::Validate,
        Phase::ParityReport,
        Phase::Promote,
        Phase::Teardown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bringup => "bringup",
            Self::Restore => "restore",
            Self::Components => "components",
            Self::Validate => "validate",
            Self::ParityReport => "parity-report",
            Self::Promote => "promote",
            Self::Teardown => "teardown",
        }
    }

    /// The name of the phase's Task state in the state machine.
    pub fn state_name(self) -> &'static str {
        match self {
            Self::Bringup => "Bringup",
            Self::Restore => "Restore",
            Self::Components => "Components",
            Self::Validate => "Validate",
            Self::ParityReport => "ParityReport",
            Self::Promote => "Promote",
            Self::Teardown => "Teardown",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
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
                    "phase: expected one of bringup, restore, components, validate, parity-report, promote, teardown; got {s:?}"
                ))
            })
    }
}

/// A failback's steps, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailbackStep {
    Preflight,
    Divergence,
    CopyBack,
    Teardown,
}

impl FailbackStep {
    pub const ALL: [FailbackStep; 4] = [
        Self::Preflight,
        Self::Divergence,
        Self::CopyBack,
        Self::Teardown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preflight => "preflight",
            Self::Divergence => "divergence",
            Self::CopyBack => "copy-back",
            Self::Teardown => "teardown",
        }
    }
}

impl fmt::Display for FailbackStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state of a state machine an operator follows: a drill phase, the wait for an
/// approval between parity-report and promote, a failback step, or one of a failback's
/// two confirmations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Phase(Phase),
    Approval,
    Failback(FailbackStep),
    /// Confirmation 1 or 2 of a failback.
    Confirmation(u8),
}

impl Stage {
    /// The state that waits for `drpilot approve`/`deny`.
    pub const APPROVAL_STATE: &'static str = "RequestApproval";

    /// Every stage of a drill, in the order a run goes through them.
    pub fn all() -> impl Iterator<Item = Stage> {
        Phase::ALL.into_iter().flat_map(|phase| {
            let approval = (phase == Phase::Promote).then_some(Stage::Approval);
            approval.into_iter().chain([Stage::Phase(phase)])
        })
    }

    /// Every stage of a failback, in order (its teardown state is the drill's name).
    pub fn failback() -> impl Iterator<Item = Stage> {
        [
            Stage::Failback(FailbackStep::Preflight),
            Stage::Failback(FailbackStep::Divergence),
            Stage::Confirmation(1),
            Stage::Confirmation(2),
            Stage::Failback(FailbackStep::CopyBack),
        ]
        .into_iter()
    }

    /// The stage a state machine state is, if it is one.
    pub fn of_state(state: &str) -> Option<Stage> {
        Stage::all()
            .chain(Stage::failback())
            .find(|stage| stage.state_name() == state)
    }

    pub fn state_name(self) -> &'static str {
        match self {
            Self::Phase(phase) => phase.state_name(),
            Self::Approval => Self::APPROVAL_STATE,
            Self::Failback(FailbackStep::Preflight) => "Preflight",
            Self::Failback(FailbackStep::Divergence) => "Divergence",
            Self::Failback(FailbackStep::CopyBack) => "CopyBack",
            Self::Failback(FailbackStep::Teardown) => Phase::Teardown.state_name(),
            Self::Confirmation(1) => "Confirm1",
            Self::Confirmation(_) => "Confirm2",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Phase(phase) => phase.as_str(),
            Self::Approval => "approval",
            Self::Failback(step) => step.as_str(),
            Self::Confirmation(1) => "confirm-1",
            Self::Confirmation(_) => "confirm-2",
        }
    }
}

impl Serialize for Stage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}
