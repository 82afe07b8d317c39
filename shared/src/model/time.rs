//! Time as drpilot records it: AWS timestamps as UTC, durations as seconds, and a
//! measured duration against its target (the RTO and RPO objectives).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A duration in seconds with millisecond precision, as receipts and summaries record
/// RTO, RPO and phase times.
pub fn seconds(duration: chrono::TimeDelta) -> f64 {
    duration.num_milliseconds() as f64 / 1000.0
}

/// An AWS SDK timestamp as a UTC time.
pub fn utc(t: &aws_smithy_types::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(t.to_millis().ok()?)
}

/// A measured value against its target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    /// Measured seconds; `null` when the run did not get far enough to measure it.
    pub seconds: Option<f64>,
    pub target_seconds: u64,
    /// `null` when not measured.
    pub met: Option<bool>,
}

impl Objective {
    /// `met`, `MISSED` or `not measured`.
    pub fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        }
    }

    /// The measurement in words: `25.7 s (target 900 s, met)`.
    pub fn describe(&self) -> String {
        let measured = self
            .seconds
            .map_or("not measured".to_owned(), |s| format!("{s:.1} s"));
        format!(
            "{measured} (target {} s, {})",
            self.target_seconds,
            self.verdict()
        )
    }

    pub fn measure(seconds: Option<f64>, target_seconds: u64) -> Self {
        Self {
            seconds,
            target_seconds,
            met: seconds.map(|s| s <= target_seconds as f64),
        }
    }
}
