//! The states an operator follows in either state machine, by the names the history and
//! `drpilot status` show.

use std::fmt;

use serde::Serialize;

use crate::failback::FailbackStep;
use crate::input::Phase;

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
