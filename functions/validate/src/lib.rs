//! validate: the staged objects are exactly what the backup's manifests say — every entry
//! present with its size and SHA-256, nothing extra — and the profile's checks pass.
//!
//! Hashes come from what restore stored with each object (`drpilot-sha256` tag or S3
//! checksum); a profile with `full_validation` re-reads and hashes every object instead.
//! Differences are counted in full and written to S3 as JSON lines; the first few appear
//! in the receipt and the error.

use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use chrono::Utc;
use drpilot_shared::archive::RESERVED_PREFIX;
use drpilot_shared::budget::RequestBudget;
use drpilot_shared::details::{CheckResult, Tally, ValidateDetails};
use drpilot_shared::fan_out::{self, FanOutPhase};
use drpilot_shared::listing::{list_sorted_in, Joined, MergeJoin, ObjectInfo};
use drpilot_shared::objects::{sha256_by_reading, stored_sha256};
use drpilot_shared::parity::{DifferenceLog, RangeFindings, MAX_LOGGED_DIFFERENCES};
use drpilot_shared::phase::{Failed, Outcome, PhaseResult, PhaseRun, Rerun};
use drpilot_shared::plan::{PlanItem, RangePass, RangeResult, Reduce};
use drpilot_shared::profile::{Check, Profile, ProfileSource, Statistic};
use drpilot_shared::run::{PhaseOutput, PhaseRequest, RunContext, StepOutput};
use drpilot_shared::s3uri::KeyRange;
use drpilot_shared::stage::Phase;
use drpilot_shared::store::ReceiptStore;
use drpilot_shared::{AwsClients, Error, Result, S3Uri};
use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinSet;
use tracing::info;

use drpilot_shared::backup;
use drpilot_shared::manifest::ManifestEntry;

/// Hash lookups (or full reads) in flight at once.
const HASH_CONCURRENCY: usize = 32;

/// A way the staging differs from the manifests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// In the manifests, not staged.
    Missing { key: String, size: u64 },
    /// Staged, in no manifest.
    Extra { key: String, size: u64 },
    Size {
        key: String,
        expected: u64,
        staged: u64,
    },
    Sha256 {
        key: String,
        expected: String,
        staged: Option<String>,
    },
}

pub struct Validate {
    pub clients: AwsClients,
    pub profiles: ProfileSource,
}

impl Validate {
    pub fn new(clients: AwsClients) -> Self {
        let clients = clients.for_function("validate");
        let profiles = ProfileSource::from_env(clients.ssm.clone());
        Self { clients, profiles }
    }

    /// The Lambda's entry: the whole phase, its preparation, one range's child or the
    /// reducer, as the request says ([`PhaseRequest::step`]).
    pub async fn serve_step(&self, request: PhaseRequest) -> Result<StepOutput> {
        fan_out::serve(self, request).await
    }

    /// The whole phase, its preparation for the fan-out, or its reducer.
    pub async fn handle(&self, request: PhaseRequest) -> Result<PhaseOutput> {
        fan_out::serve_phase(self, request).await
    }

    /// One range's child: the range's manifest entries against the range's staging.
    async fn validate_range(
        &self,
        ctx: &PhaseRun<'_>,
        item: &PlanItem,
    ) -> Result<RangeFindings<Tally>> {
        let (tally, log) = self.compare(ctx.run, ctx.profile, &item.range).await?;
        let at = (ctx.run.run_id.as_str(), Phase::Validate, item.index);
        RangeFindings::upload(&self.clients.s3, ctx.store, at, tally, log).await
    }

    async fn validate(
        &self,
        run: &RunContext,
        profile: &Profile,
        store: &ReceiptStore,
    ) -> PhaseResult<ValidateDetails> {
        // That restore succeeded and its staging is still there, the lifecycle checked.
        if run.input.dry_run {
            return Ok(Outcome::Skipped("dry_run: nothing was staged".to_owned()));
        }

        let (tally, log) = self.compare(run, profile, &KeyRange::all()).await?;
        self.judge(run, profile, store, tally, log).await
    }

    /// The verdict on the comparison's tallies and differences, with the profile's checks.
    async fn judge(
        &self,
        run: &RunContext,
        profile: &Profile,
        store: &ReceiptStore,
        tally: Tally,
        log: DifferenceLog,
    ) -> PhaseResult<ValidateDetails> {
        let differences_uri = store
            .run_dir(&run.run_id)?
            .join("validate/differences.jsonl")?;
        let checks = self.run_checks(profile).await?;
        let first_differences = log.first().to_vec();
        let differences = log.count();
        log.upload(&self.clients.s3, &differences_uri).await?;
        let details = ValidateDetails {
            tally,
            differences,
            differences_uri,
            first_differences,
            checks,
            full: profile.full_validation,
        };
        match failure_message(&details) {
            Some(message) => Err(Failed::with_details(Error::integrity(message), details)),
            None => {
                info!(verified = details.tally.verified, "validated");
                Ok(Outcome::Done(details))
            }
        }
    }

    /// Merge-joins the sorted manifests with the sorted staging listing, of the keys in
    /// `range`.
    async fn compare(
        &self,
        run: &RunContext,
        profile: &Profile,
        range: &KeyRange,
    ) -> Result<(Tally, DifferenceLog)> {
        let s3 = &self.clients.s3;
        let (manifest_rx, manifests) =
            backup::sorted_entries_in(s3, &run.backup.uri, range.clone()).await?;
        let staging = profile.target.staging(&run.run_id)?;
        let (staged_rx, lister) = list_sorted_in(
            s3.clone(),
            &staging,
            vec![RESERVED_PREFIX.to_owned()],
            range.clone(),
        );
        let mut merge = MergeJoin::new(manifest_rx, staged_rx);
        let mut check = StagingCheck {
            s3: s3.clone(),
            // A range's child (a bounded range) shares the run's read rate with the
            // others; the whole phase has it to itself.
            reads: RequestBudget::reads_for_run(run.plan.as_ref(), !range.is_all()),
            staging,
            full: profile.full_validation,
            tally: Tally::default(),
            log: match run.plan.as_ref() {
                Some(plan) if !range.is_all() => DifferenceLog::for_range(plan.ranges)?,
                _ => DifferenceLog::new()?,
            },
            hashing: JoinSet::new(),
        };
        let result = check.run(&mut merge).await;
        lister.abort();
        drop(merge);
        manifests.finish().await?;
        result?;
        Ok((check.tally, check.log))
    }

    /// Each configured check, pass or fail. A failure to ask CloudWatch is an error, not
    /// a failed check.
    async fn run_checks(&self, profile: &Profile) -> Result<Vec<CheckResult>> {
        let mut results = Vec::new();
        for check in &profile.checks {
            let value = self.metric_value(check).await?;
            results.push(judge(check, value));
        }
        Ok(results)
    }

    /// The check's statistic over its window, combined over the periods CloudWatch
    /// returns; `None` when there is no data.
    async fn metric_value(&self, check: &Check) -> Result<Option<f64>> {
        let Check::CloudwatchMetric {
            namespace,
            metric_name,
            dimensions,
            stat,
            window_seconds,
            ..
        } = check;
        let end = Utc::now();
        let start = end - chrono::Duration::seconds(*window_seconds as i64);
        let metric = Metric::builder()
            .namespace(namespace)
            .metric_name(metric_name)
            .set_dimensions(Some(
                dimensions
                    .iter()
                    .map(|(k, v)| Dimension::builder().name(k).value(v).build())
                    .collect(),
            ))
            .build();
        let queries = stat
            .queried()
            .iter()
            .map(|s| {
                MetricDataQuery::builder()
                    .id(s.as_str().to_lowercase())
                    .metric_stat(
                        MetricStat::builder()
                            .metric(metric.clone())
                            // The profile holds windows to multiples of 60 s.
                            .period(i32::try_from(*window_seconds).unwrap_or(i32::MAX))
                            .stat(s.as_str())
                            .build(),
                    )
                    .return_data(true)
                    .build()
            })
            .collect();
        let out = self
            .clients
            .cloudwatch
            .get_metric_data()
            .set_metric_data_queries(Some(queries))
            .start_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
                start.timestamp(),
            ))
            .end_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
                end.timestamp() + 1,
            ))
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("GetMetricData {namespace}/{metric_name}"), e))?;
        let values_of = |s: Statistic| -> Vec<f64> {
            let id = s.as_str().to_lowercase();
            out.metric_data_results()
                .iter()
                .filter(|r| r.id() == Some(id.as_str()))
                .flat_map(|r| r.values().iter().copied())
                .collect()
        };
        // CloudWatch may split the window into more than one period.
        Ok(stat.over_window(values_of))
    }
}

/// A check's verdict on the value its metric had (`None`: no data in the window).
fn judge(check: &Check, value: Option<f64>) -> CheckResult {
    let Check::CloudwatchMetric {
        name,
        namespace,
        metric_name,
        stat,
        window_seconds,
        comparison,
        threshold,
        missing_data_passes,
        ..
    } = check;
    match value {
        None => CheckResult {
            name: name.clone(),
            passed: *missing_data_passes,
            value: None,
            detail: format!(
                "no {namespace}/{metric_name} data in the last {window_seconds} s ({})",
                if *missing_data_passes {
                    "the check allows missing data"
                } else {
                    "the check fails on missing data"
                }
            ),
        },
        Some(value) => CheckResult {
            name: name.clone(),
            passed: comparison.holds(value, *threshold),
            value: Some(value),
            detail: format!(
                "{stat} of {namespace}/{metric_name} over {window_seconds} s is {value}, expected {comparison:?} {threshold}"
            ),
        },
    }
}

/// Validate's steps: the manifests split by the plan's ranges, each range compared with
/// its part of the staging.
impl FanOutPhase for Validate {
    type Details = ValidateDetails;
    type RangeDetails = RangeFindings<Tally>;
    /// Reads only: a range's child ends in one pass (docs/limits.md).
    type Cursor = ();
    const RERUN: Rerun = Rerun::StartOver;

    fn clients(&self) -> &AwsClients {
        &self.clients
    }

    fn profiles(&self) -> &ProfileSource {
        &self.profiles
    }

    async fn whole(&self, ctx: &PhaseRun<'_>) -> PhaseResult<ValidateDetails> {
        self.validate(ctx.run, ctx.profile, ctx.store).await
    }

    async fn range(
        &self,
        ctx: &PhaseRun<'_>,
        item: &PlanItem,
        _: Option<()>,
    ) -> Result<RangePass<RangeFindings<Tally>, ()>> {
        Ok(RangePass::Done(self.validate_range(ctx, item).await?))
    }

    async fn reduce(
        &self,
        ctx: &PhaseRun<'_>,
        _: &Reduce,
        results: Vec<RangeResult>,
    ) -> PhaseResult<ValidateDetails> {
        let (tally, log) = RangeFindings::<Tally>::gather(&self.clients.s3, &results).await?;
        self.judge(ctx.run, ctx.profile, ctx.store, tally, log)
            .await
    }
}

/// The comparison of the staging with the manifests, one joined entry at a time: counts
/// and differences, with the hashes looked up (or recomputed) `HASH_CONCURRENCY` at once.
struct StagingCheck {
    s3: aws_sdk_s3::Client,
    /// Paces the hash lookups: 64 children × [`HASH_CONCURRENCY`] would pass S3's
    /// 5,500 GET/HEAD a second on one staging prefix.
    reads: RequestBudget,
    staging: S3Uri,
    /// Recompute every hash (the profile's `full_validation`).
    full: bool,
    tally: Tally,
    log: DifferenceLog,
    hashing: JoinSet<Result<Option<Finding>>>,
}

impl StagingCheck {
    async fn run(&mut self, merge: &mut MergeJoin<ManifestEntry, ObjectInfo>) -> Result<()> {
        while let Some(joined) = merge.next().await? {
            match joined {
                Joined::OnlyLeft(m) => {
                    self.tally.expected_objects += 1;
                    self.tally.missing += 1;
                    self.log.push(&Finding::Missing {
                        key: m.key,
                        size: m.size,
                    })?;
                }
                Joined::OnlyRight(o) => {
                    self.tally.staged_objects += 1;
                    self.tally.extra += 1;
                    self.log.push(&Finding::Extra {
                        key: o.key,
                        size: o.size,
                    })?;
                }
                Joined::Both(m, o) => {
                    self.tally.expected_objects += 1;
                    self.tally.staged_objects += 1;
                    if m.size != o.size {
                        self.tally.size_mismatches += 1;
                        self.log.push(&Finding::Size {
                            key: m.key,
                            expected: m.size,
                            staged: o.size,
                        })?;
                    } else {
                        self.check_hash(m).await?;
                    }
                }
            }
        }
        while !self.hashing.is_empty() {
            let done = self.hashing.join_next().await;
            record(done, &mut self.tally, &mut self.log)?;
        }
        Ok(())
    }

    /// Starts comparing the staged object's hash with the manifest's, waiting for a slot.
    async fn check_hash(&mut self, m: ManifestEntry) -> Result<()> {
        while self.hashing.len() >= HASH_CONCURRENCY {
            let done = self.hashing.join_next().await;
            record(done, &mut self.tally, &mut self.log)?;
        }
        let (s3, reads) = (self.s3.clone(), self.reads.clone());
        let full = self.full;
        let uri = self
            .staging
            .join(&m.key)
            .map_err(|e| Error::contract(e.to_string()))?;
        self.hashing.spawn(async move {
            let staged = if full {
                reads.send(|| sha256_by_reading(&s3, &uri)).await?
            } else {
                reads.send(|| stored_sha256(&s3, &uri)).await?
            };
            if staged.as_deref() == Some(m.sha256.as_str()) {
                return Ok(None);
            }
            Ok(Some(Finding::Sha256 {
                key: m.key,
                expected: m.sha256,
                staged,
            }))
        });
        Ok(())
    }
}

/// What failed, in words: the differences (counted, with the first few) and each failed
/// check; `None` when the staging is exactly the backup and every check passed.
fn failure_message(details: &ValidateDetails) -> Option<String> {
    let tally = &details.tally;
    let mut parts = Vec::new();
    if details.differences > 0 {
        parts.push(format!(
            "{} differences between the manifests and the staging (missing {}, extra {}, size {}, sha256 {}); first: {}; the first {} of them in {}",
            details.differences,
            tally.missing,
            tally.extra,
            tally.size_mismatches,
            tally.sha256_mismatches,
            details
                .first_differences
                .iter()
                .take(5)
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            details.differences.min(MAX_LOGGED_DIFFERENCES),
            details.differences_uri
        ));
    }
    for check in details.checks.iter().filter(|c| !c.passed) {
        parts.push(format!("check {:?} failed: {}", check.name, check.detail));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn record(
    done: Option<std::result::Result<Result<Option<Finding>>, tokio::task::JoinError>>,
    tally: &mut Tally,
    log: &mut DifferenceLog,
) -> Result<()> {
    let Some(done) = done else { return Ok(()) };
    let finding = done.map_err(Error::from)??;
    match finding {
        None => tally.verified += 1,
        Some(finding) => {
            tally.sha256_mismatches += 1;
            log.push(&finding)?;
        }
    }
    Ok(())
}
