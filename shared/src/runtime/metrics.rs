//! The `DRPilot` CloudWatch metrics (docs/contracts.md), dimensioned by `Profile` and `Mode`.

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

pub const NAMESPACE: &str = "DRPilot";

/// One value of one metric.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: &'static str,
    pub value: f64,
    pub unit: StandardUnit,
    /// A dimension besides `Profile` and `Mode` (`Component` for a component's metric).
    pub dimension: Option<(&'static str, String)>,
}

impl Sample {
    pub fn seconds(name: &'static str, value: f64) -> Self {
        Self {
            name,
            value,
            unit: StandardUnit::Seconds,
            dimension: None,
        }
    }
    pub fn count(name: &'static str, value: f64) -> Self {
        Self {
            name,
            value,
            unit: StandardUnit::Count,
            dimension: None,
        }
    }

    /// This sample with one more dimension.
    pub fn with_dimension(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.dimension = Some((name, value.into()));
        self
    }
}

/// Puts `samples` at `at` with dimensions `Profile=<profile>`, `Mode=<mode>` (and each
/// sample's own, if it has one).
pub async fn publish(
    cloudwatch: &aws_sdk_cloudwatch::Client,
    profile: &str,
    mode: &str,
    at: DateTime<Utc>,
    samples: Vec<Sample>,
) -> Result<()> {
    let dimensions = vec![
        Dimension::builder().name("Profile").value(profile).build(),
        Dimension::builder().name("Mode").value(mode).build(),
    ];
    put(cloudwatch, dimensions, at, samples).await
}

/// Puts readiness `samples` at `at` with the one dimension `Profile=<profile>`: readiness
/// belongs to the profile, not to a run's mode.
pub async fn publish_readiness(
    cloudwatch: &aws_sdk_cloudwatch::Client,
    profile: &str,
    at: DateTime<Utc>,
    samples: Vec<Sample>,
) -> Result<()> {
    let dimensions = vec![Dimension::builder().name("Profile").value(profile).build()];
    put(cloudwatch, dimensions, at, samples).await
}

async fn put(
    cloudwatch: &aws_sdk_cloudwatch::Client,
    dimensions: Vec<Dimension>,
    at: DateTime<Utc>,
    samples: Vec<Sample>,
) -> Result<()> {
    if samples.is_empty() {
        return Ok(());
    }
    let timestamp = aws_sdk_cloudwatch::primitives::DateTime::from_millis(at.timestamp_millis());
    let data: Vec<MetricDatum> = samples
        .into_iter()
        .map(|s| {
            let mut dimensions = dimensions.clone();
            if let Some((name, value)) = s.dimension {
                dimensions.push(Dimension::builder().name(name).value(value).build());
            }
            MetricDatum::builder()
                .metric_name(s.name)
                .value(s.value)
                .unit(s.unit)
                .timestamp(timestamp)
                .set_dimensions(Some(dimensions))
                .build()
        })
        .collect();
    cloudwatch
        .put_metric_data()
        .namespace(NAMESPACE)
        .set_metric_data(Some(data))
        .send()
        .await
        .map_err(|e| Error::from_sdk(&format!("PutMetricData {NAMESPACE}"), e))?;
    Ok(())
}
