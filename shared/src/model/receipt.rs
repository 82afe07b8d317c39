//! What a run leaves behind for auditors (docs/contracts.md): one receipt per phase at
//! `<receipts>/runs/<run_id>/phases/<phase>.json`, with the phase's details as a type
//! ([`crate::details`]), and how a phase or a run ended. [`crate::store`] reads and
//! writes them; [`crate::summary`] is the run on one page.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::stage::Phase;

/// The details type of one phase's receipt (the types are in [`crate::details`]).
pub trait PhaseDetails: Serialize + DeserializeOwned {
    const PHASE: Phase;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseStatus {
    Success,
    Failed,
    Skipped,
    /// Only in a step's answer, never in a receipt: the phase fanned out over its plan's
    /// ranges, and its reducer will write the receipt.
    Running,
}

impl PhaseStatus {
    /// The name receipts use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Running => "running",
        }
    }
}

/// A phase's receipt; `S` is what it records: a drill's [`Phase`], or a failback's step
/// (`PhaseReceipt<FailbackStep>`, [`crate::failback::FailbackReceipt`]), whose receipts
/// have the same fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseReceipt<S = Phase> {
    pub run_id: String,
    /// The phase (or failback step). Failback receipts written before the two shared one
    /// type named it `step`.
    #[serde(alias = "step")]
    pub phase: S,
    pub status: PhaseStatus,
    /// Why it failed or was skipped; `null` on success.
    pub reason: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// 1 for the first try; Step Functions retries count up.
    pub attempt: u32,
    /// Phase-specific facts: counts, bytes, URIs of large results.
    pub details: Value,
    /// The run was a dry run: this phase verified and wrote nothing but receipts. Written
    /// only when true, so every other receipt keeps the documented fields.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
}

impl<S> PhaseReceipt<S> {
    /// The name of the error a failed receipt records (`details.error`).
    pub fn error_name(&self) -> Option<&str> {
        self.details.get("error").and_then(Value::as_str)
    }
}

impl PhaseReceipt {
    /// The details as the phase's type: an error names the receipt when it belongs to
    /// another phase or does not have the expected shape.
    pub fn details<D: PhaseDetails>(&self) -> Result<D> {
        if self.phase != D::PHASE {
            return Err(Error::internal(format!(
                "run {}: a {} receipt read as {} details",
                self.run_id,
                self.phase,
                D::PHASE
            )));
        }
        let document = format!("run {}: the {} receipt's details", self.run_id, self.phase);
        crate::error::decode_value(&document, &self.details)
            .map_err(|e| Error::integrity(e.to_string()).with_source(e))
    }
}

/// Times a phase (or a failback step, `S`) from its start and turns into its receipt.
#[derive(Clone, Debug)]
pub struct PhaseClock<S = Phase> {
    run_id: String,
    phase: S,
    attempt: u32,
    started_at: DateTime<Utc>,
    dry_run: bool,
}

impl<S: Copy> PhaseClock<S> {
    pub fn start(run_id: impl Into<String>, phase: S, attempt: u32) -> Self {
        Self {
            run_id: run_id.into(),
            phase,
            attempt: attempt.max(1),
            started_at: Utc::now(),
            dry_run: false,
        }
    }

    /// Marks the receipts of a dry run.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    /// 1 for the first try.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Moves the start back to `at` (a phase whose work began at an earlier step).
    pub fn since(&mut self, at: DateTime<Utc>) {
        self.started_at = self.started_at.min(at);
    }

    /// The receipt of a phase that succeeded with `details`.
    pub fn succeeded<D: Serialize>(&self, details: &D) -> Result<PhaseReceipt<S>> {
        Ok(self.finish(PhaseStatus::Success, None, encode(details)?))
    }

    /// The receipt of a phase that failed with `error`, keeping the details gathered
    /// before it; `details.error` names the error.
    pub fn failed<D: Serialize>(
        &self,
        error: &Error,
        details: Option<&D>,
    ) -> Result<PhaseReceipt<S>> {
        let mut details = match details {
            Some(details) => encode(details)?,
            None => Value::Object(Default::default()),
        };
        if let Some(object) = details.as_object_mut() {
            object.insert("error".into(), Value::from(error.kind.name()));
        }
        Ok(self.finish(PhaseStatus::Failed, Some(error.to_string()), details))
    }

    /// The receipt for a phase the input's `start_at`/`stop_after` window leaves out.
    pub fn skipped(&self, reason: String) -> PhaseReceipt<S> {
        self.finish(
            PhaseStatus::Skipped,
            Some(reason),
            Value::Object(Default::default()),
        )
    }

    pub fn finish(
        &self,
        status: PhaseStatus,
        reason: Option<String>,
        details: Value,
    ) -> PhaseReceipt<S> {
        let finished_at = Utc::now();
        let duration_ms = (finished_at - self.started_at).num_milliseconds().max(0) as u64;
        PhaseReceipt {
            run_id: self.run_id.clone(),
            phase: self.phase,
            status,
            reason,
            started_at: self.started_at,
            finished_at,
            duration_ms,
            attempt: self.attempt,
            details,
            dry_run: self.dry_run,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Succeeded,
    Failed,
}

impl RunStatus {
    /// The name summaries use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub phase: Option<Phase>,
    pub error: String,
    pub cause: String,
}

fn encode<T: Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value)
        .map_err(|e| Error::internal(format!("encoding receipt details: {e}")))
}

pub(crate) fn is_false(value: &bool) -> bool {
    !value
}
