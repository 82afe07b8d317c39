//! The run record bringup keeps at `<receipts>/runs/<run_id>/run.json`: what the run is
//! and every execution that worked on it, by name (`<run_id>.<n>`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backup::BackupRef;
use crate::input::{Mode, RunInput, Trigger};
use crate::receipt::{Failure, RunStatus};
use crate::stage::Phase;

/// An execution's name, read as the run it belongs to and its number in that run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionName {
    pub run_id: String,
    /// `n` of `<run_id>.<n>`; `None` for a name without one (an execution started by an
    /// EventBridge rule, or by hand from the console), which is the run's first.
    pub number: Option<u32>,
}

impl ExecutionName {
    /// The name of execution `number` of `run_id`.
    pub fn format(run_id: &str, number: u32) -> String {
        format!("{run_id}.{number}")
    }

    /// `<run_id>.<n>` → (`run_id`, `n`); any other name is a run id of its own. Run ids
    /// contain no `.`, so the split is unambiguous.
    pub fn parse(name: &str) -> Self {
        if let Some((run_id, number)) = name.rsplit_once('.') {
            if let Ok(number) = number.parse::<u32>() {
                // Only the canonical spelling: no sign, no leading zero, not 0.
                if !run_id.is_empty() && number > 0 && Self::format(run_id, number) == name {
                    return Self {
                        run_id: run_id.to_owned(),
                        number: Some(number),
                    };
                }
            }
        }
        Self {
            run_id: name.to_owned(),
            number: None,
        }
    }

    /// The number this execution has in its run (an unnumbered name counts as the first).
    pub fn ordinal(&self) -> u32 {
        self.number.unwrap_or(1)
    }
}

/// `<receipts>/runs/<run_id>/run.json`: what the run is (written by its first bringup,
/// never changed after) and every execution that worked on it (appended by bringup, the
/// outcome filled in by teardown).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub profile: String,
    pub mode: Mode,
    /// What started the run (its first execution).
    pub trigger: Trigger,
    /// The first execution's start: RTO and RPO are measured from here, however many
    /// executions the run takes.
    pub kickoff_at: DateTime<Utc>,
    pub backup: BackupRef,
    /// The publish pointer's generation when the run's first execution took the lock.
    #[serde(default)]
    pub published_generation: u64,
    pub executions: Vec<ExecutionEntry>,
}

/// One execution of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionEntry {
    pub name: Option<String>,
    pub arn: Option<String>,
    pub started_at: DateTime<Utc>,
    pub start_at: Phase,
    pub stop_after: Phase,
    /// `teardown: false`: the staging and the lock stay with the run afterwards.
    pub hold: bool,
    pub dry_run: bool,
    /// Who or what started this execution.
    pub trigger: Trigger,
    /// How it ended; `null` until its teardown has run.
    pub outcome: Option<ExecutionOutcome>,
}

impl ExecutionEntry {
    pub fn new(
        name: Option<String>,
        arn: Option<String>,
        started_at: DateTime<Utc>,
        input: &RunInput,
        trigger: Trigger,
    ) -> Self {
        Self {
            name,
            arn,
            started_at,
            start_at: input.start_at,
            stop_after: input.stop_after,
            hold: !input.teardown,
            dry_run: input.dry_run,
            trigger,
            outcome: None,
        }
    }

    /// The phases it was asked to run, and whether it held the run: `restore..validate,
    /// held`.
    pub fn window(&self) -> String {
        format!(
            "{}..{}{}{}",
            self.start_at,
            self.stop_after,
            if self.hold { ", held" } else { "" },
            if self.dry_run { ", dry run" } else { "" }
        )
    }

    /// How it ended, in words: `succeeded`, `failed (IntegrityError in restore)`, or
    /// `not finished`.
    pub fn ended(&self) -> String {
        match &self.outcome {
            None => "not finished".to_owned(),
            Some(o) => match &o.failure {
                Some(f) => format!(
                    "{} ({} in {})",
                    o.status.as_str(),
                    f.error,
                    f.phase.map_or("bringup", |p| p.as_str())
                ),
                None => o.status.as_str().to_owned(),
            },
        }
    }

    /// Whether this entry is the execution named `name` / `arn`.
    pub fn is(&self, name: Option<&str>, arn: Option<&str>) -> bool {
        match (arn, &self.arn) {
            (Some(a), Some(b)) => a == b,
            _ => name.is_some() && name == self.name.as_deref(),
        }
    }
}

/// What teardown found at the end of one execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionOutcome {
    pub status: RunStatus,
    pub failure: Option<Failure>,
    pub torn_down: bool,
    pub finished_at: DateTime<Utc>,
}

impl RunRecord {
    /// The entry of the execution named `name` / `arn`, if it is one of this run's.
    pub fn execution_mut(
        &mut self,
        name: Option<&str>,
        arn: Option<&str>,
    ) -> Option<&mut ExecutionEntry> {
        self.executions.iter_mut().find(|e| e.is(name, arn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_names_carry_the_run_and_its_number() {
        assert_eq!(ExecutionName::format("dr-1", 3), "dr-1.3");
        let parsed = ExecutionName::parse("dr-1.3");
        assert_eq!((parsed.run_id.as_str(), parsed.number), ("dr-1", Some(3)));
        for plain in [
            "dr-1",
            "0f3a-uuid",
            "dr-1.",
            "dr-1.x",
            "dr-1.0",
            ".2",
            "dr-1.+2",
            "dr-1.02",
        ] {
            let parsed = ExecutionName::parse(plain);
            assert_eq!(parsed.run_id, plain, "{plain}");
            assert_eq!(parsed.ordinal(), 1, "{plain}");
        }
    }
}
