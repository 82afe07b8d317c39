//! parity-report: compares two S3 prefixes in one streaming pass — staging vs `root/` in a
//! run, or any two prefixes its role may read when invoked on its own (the template grants
//! the target bucket's staging and `root/`; e.g. a held staging against production,
//! on a schedule) — writes the
//! report (a JSON summary and the differences as JSON lines) to S3, puts the
//! `ParityDelta` metric, and returns a small summary with the report's URI.

use chrono::{DateTime, Utc};
use drpilot_shared::archive::RESERVED_PREFIX;
use drpilot_shared::details::ParityDetails;
use drpilot_shared::error::{decode_value, DecodeError};
use drpilot_shared::fan_out::{self, FanOutPhase};
use drpilot_shared::metrics::{self, Sample};
use drpilot_shared::objects::put_json;
use drpilot_shared::parity::{
    compare_prefixes, compare_ranges, DifferenceLog, ParityCounts, RangeFindings, Verdict,
};
use drpilot_shared::phase::{Outcome, PhaseResult, PhaseRun, Rerun};
use drpilot_shared::plan::{PlanItem, RangePass, RangeResult, Reduce};
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::run::PhaseRequest;
use drpilot_shared::stage::Phase;
use drpilot_shared::{AwsClients, Error, Result, S3Uri};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::info;

/// A comparison outside any run: two prefixes, and the profile whose receipts location
/// and metric dimensions the report uses.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StandaloneRequest {
    pub profile: String,
    pub left: S3Uri,
    pub right: S3Uri,
}

/// Either shape the function accepts.
#[derive(Clone, Debug)]
pub enum ParityRequest {
    Run(Box<PhaseRequest>),
    Standalone(StandaloneRequest),
}

impl ParityRequest {
    /// `{"run": ...}` is a phase of a run; anything else must be a standalone request.
    pub fn from_json(value: Value) -> Result<Self> {
        let input = |e: DecodeError| Error::input(e.to_string()).with_source(e);
        if value.get("run").is_some() {
            Ok(Self::Run(Box::new(
                decode_value("parity-report request", &value).map_err(input)?,
            )))
        } else {
            Ok(Self::Standalone(
                decode_value("parity-report request", &value).map_err(input)?,
            ))
        }
    }
}

/// The report's summary object (`report.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParityReport {
    pub left: S3Uri,
    pub right: S3Uri,
    pub generated_at: DateTime<Utc>,
    pub counts: ParityCounts,
    pub differences: S3Uri,
    pub first_differences: Vec<Value>,
}

pub struct ParityReporter {
    pub clients: AwsClients,
    pub profiles: ProfileSource,
}

impl ParityReporter {
    pub fn new(clients: AwsClients) -> Self {
        let clients = clients.for_function("parity-report");
        let profiles = ProfileSource::from_env(clients.ssm.clone());
        Self { clients, profiles }
    }

    pub async fn handle(&self, request: ParityRequest) -> Result<Value> {
        match request {
            ParityRequest::Run(request) => {
                let out = fan_out::serve(self, *request).await?;
                serde_json::to_value(out).map_err(|e| Error::internal(e.to_string()))
            }
            ParityRequest::Standalone(request) => {
                let profile = self.profiles.load(&request.profile).await?;
                let at = Utc::now();
                let dir = profile
                    .receipts
                    .join(&format!("parity/{}", at.format("%Y%m%dT%H%M%S%.3fZ")))?;
                let report = self
                    .compare(&request.left, &request.right, Vec::new(), &dir)
                    .await?;
                metrics::publish(
                    &self.clients.cloudwatch,
                    &request.profile,
                    "standalone",
                    at,
                    vec![Sample::count("ParityDelta", report.counts.delta as f64)],
                )
                .await?;
                Ok(json!({
                    "counts": report.counts,
                    "report": dir.join("report.json")?,
                    "differences": report.differences,
                }))
            }
        }
    }

    /// One range's child: the range of the staging against the same range of `root/`.
    async fn compare_range(
        &self,
        ctx: &PhaseRun<'_>,
        item: &PlanItem,
    ) -> Result<RangeFindings<ParityCounts>> {
        let (run, profile) = (ctx.run, ctx.profile);
        let staging = profile.target.staging(&run.run_id)?;
        let root = profile.target.root();
        let mut log = DifferenceLog::for_range(run.plan.as_ref().map_or(1, |p| p.ranges))?;
        let counts = compare_ranges(
            &self.clients.s3,
            &staging,
            &root,
            vec![RESERVED_PREFIX.to_owned()],
            &item.range,
            async |step| match step {
                Verdict::Identical(_) => Ok(()),
                Verdict::Differs(difference) => log.push(&difference),
            },
        )
        .await?;
        let at = (run.run_id.as_str(), Phase::ParityReport, item.index);
        RangeFindings::upload(&self.clients.s3, ctx.store, at, counts, log).await
    }

    /// The metric and the receipt's details of a run's report.
    async fn finish_run(
        &self,
        run: &drpilot_shared::run::RunContext,
        report: ParityReport,
        dir: &S3Uri,
    ) -> Result<ParityDetails> {
        metrics::publish(
            &self.clients.cloudwatch,
            &run.input.profile,
            run.input.mode.as_str(),
            report.generated_at,
            vec![Sample::count("ParityDelta", report.counts.delta as f64)],
        )
        .await?;
        Ok(ParityDetails {
            delta: report.counts.delta,
            counts: report.counts,
            report: dir.join("report.json")?,
            differences: report.differences,
        })
    }

    /// Compares `left` with `right` and writes `report.json` and `differences.jsonl`
    /// under `dir`.
    pub async fn compare(
        &self,
        left: &S3Uri,
        right: &S3Uri,
        exclude_left: Vec<String>,
        dir: &S3Uri,
    ) -> Result<ParityReport> {
        let mut log = DifferenceLog::new()?;
        let counts =
            compare_prefixes(
                &self.clients.s3,
                left,
                right,
                exclude_left,
                async |step| match step {
                    Verdict::Identical(_) => Ok(()),
                    Verdict::Differs(difference) => log.push(&difference),
                },
            )
            .await?;
        self.write_report(left, right, counts, log, dir).await
    }

    /// Writes `report.json` and `differences.jsonl` under `dir`.
    async fn write_report(
        &self,
        left: &S3Uri,
        right: &S3Uri,
        counts: ParityCounts,
        log: DifferenceLog,
        dir: &S3Uri,
    ) -> Result<ParityReport> {
        let differences_uri = dir.join("differences.jsonl")?;
        let first_differences = log.first().to_vec();
        log.upload(&self.clients.s3, &differences_uri).await?;
        let report = ParityReport {
            left: left.as_prefix(),
            right: right.as_prefix(),
            generated_at: Utc::now(),
            counts,
            differences: differences_uri,
            first_differences,
        };
        let report_uri = dir.join("report.json")?;
        put_json(&self.clients.s3, &report_uri, &report).await?;
        info!(left = %report.left, right = %report.right, delta = report.counts.delta, "parity compared");
        Ok(report)
    }
}

/// Parity-report's steps: the staging and `root/` compared range by range.
impl FanOutPhase for ParityReporter {
    type Details = ParityDetails;
    type RangeDetails = RangeFindings<ParityCounts>;
    /// Reads only: a range's child ends in one pass (docs/limits.md).
    type Cursor = ();
    const RERUN: Rerun = Rerun::StartOver;

    fn clients(&self) -> &AwsClients {
        &self.clients
    }

    fn profiles(&self) -> &ProfileSource {
        &self.profiles
    }

    async fn whole(&self, ctx: &PhaseRun<'_>) -> PhaseResult<ParityDetails> {
        let (run, profile) = (ctx.run, ctx.profile);
        if run.input.dry_run {
            return Ok(Outcome::Skipped(
                "dry_run: nothing was staged to compare".to_owned(),
            ));
        }
        let dir = ctx.store.run_dir(&run.run_id)?.join("parity")?;
        let staging = profile.target.staging(&run.run_id)?;
        let report = self
            .compare(
                &staging,
                &profile.target.root(),
                vec![RESERVED_PREFIX.to_owned()],
                &dir,
            )
            .await?;
        Ok(Outcome::Done(self.finish_run(run, report, &dir).await?))
    }

    async fn range(
        &self,
        ctx: &PhaseRun<'_>,
        item: &PlanItem,
        _: Option<()>,
    ) -> Result<RangePass<RangeFindings<ParityCounts>, ()>> {
        Ok(RangePass::Done(self.compare_range(ctx, item).await?))
    }

    async fn reduce(
        &self,
        ctx: &PhaseRun<'_>,
        _: &Reduce,
        results: Vec<RangeResult>,
    ) -> PhaseResult<ParityDetails> {
        let (run, profile) = (ctx.run, ctx.profile);
        let (counts, log) =
            RangeFindings::<ParityCounts>::gather(&self.clients.s3, &results).await?;
        let dir = ctx.store.run_dir(&run.run_id)?.join("parity")?;
        let staging = profile.target.staging(&run.run_id)?;
        let report = self
            .write_report(&staging, &profile.target.root(), counts, log, &dir)
            .await?;
        Ok(Outcome::Done(self.finish_run(run, report, &dir).await?))
    }
}
