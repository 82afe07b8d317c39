//! Request budgets: S3 serves at least 3,500 PUT/COPY/POST/DELETE and 5,500 GET/HEAD
//! requests a second per partitioned prefix and answers `503 SlowDown` past what it serves
//! now; under sustained load it partitions the prefix further and serves more. A
//! fanned-out phase has many children writing to, or reading from, one run's staging or
//! `root/` at once, so each function paces its requests with a token bucket that starts
//! at its share of [`PREFIX_PUT_RATE`] ([`RequestBudget::writes_for_run`]) or of
//! [`PREFIX_GET_RATE`] ([`RequestBudget::reads_for_run`]) — the floor S3 guarantees,
//! less a margin — and climbs from there: additive increase ([`INCREASE_PER_SECOND`]
//! requests a second, every second of successful requests) up to one partition's worth,
//! multiplicative decrease (half) whenever S3 still says `SlowDown` after the SDK's own
//! retries. A long restore so converges on what S3 actually serves instead of keeping to
//! the floor. A request S3 throttled is retried here, after the new pace, a bounded
//! number of times. A range's child's write budget also carries its run's [`Fence`]: the
//! writers ask [`RequestBudget::check_fence`] before each object they start.
//!
//! Deletes are writes too: [`delete_prefix`] pays one token a key of each DeleteObjects,
//! retries the keys S3 answered with a per-key error inside its 200, and stops at a
//! deadline with what is left, so that a staging larger than one invocation can delete
//! is deleted over several.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::fence::{fence_uri, Fence};
use crate::objects::{abort_uploads, key_pages};
use crate::plan::PlanRef;
use crate::run::RunContext;
use crate::s3uri::S3Uri;
use crate::store::ReceiptStore;

/// The aggregate write rate a run keeps under, per prefix (S3's 3,500 less a margin).
pub const PREFIX_PUT_RATE: f64 = 3_000.0;

/// The aggregate read rate a run keeps under, per prefix (S3's 5,500 GET/HEAD less a
/// margin): validate's stored-hash lookups, parity's and promote's content checks.
pub const PREFIX_GET_RATE: f64 = 5_000.0;

/// Children of a Distributed Map that may run at once (the ASL's `MaxConcurrency`), unless
/// the stack's `FanOutConcurrency` says otherwise ([`FAN_OUT_CONCURRENCY_ENV`]).
pub const MAX_CHILDREN: u32 = 64;

/// Environment variable: the stack's `FanOutConcurrency` (the Maps' `MaxConcurrency`).
pub const FAN_OUT_CONCURRENCY_ENV: &str = "DRPILOT_FAN_OUT_CONCURRENCY";

/// Environment variable: the stack's `S3WriteRate` (in place of [`PREFIX_PUT_RATE`]).
pub const WRITE_RATE_ENV: &str = "DRPILOT_S3_WRITE_RATE";

/// Environment variable: the stack's `S3ReadRate` (in place of [`PREFIX_GET_RATE`]).
pub const READ_RATE_ENV: &str = "DRPILOT_S3_READ_RATE";

/// Children of a Distributed Map that may run at once: the stack's `FanOutConcurrency`,
/// or [`MAX_CHILDREN`].
pub fn fan_out_concurrency() -> u32 {
    positive(std::env::var(FAN_OUT_CONCURRENCY_ENV).ok())
        .map_or(MAX_CHILDREN, |n| n.min(f64::from(u32::MAX)) as u32)
}

/// A run's writes a second on a prefix: the stack's `S3WriteRate`, or [`PREFIX_PUT_RATE`].
pub fn prefix_write_rate() -> f64 {
    positive(std::env::var(WRITE_RATE_ENV).ok()).unwrap_or(PREFIX_PUT_RATE)
}

/// A run's reads a second on a prefix: the stack's `S3ReadRate`, or [`PREFIX_GET_RATE`].
pub fn prefix_read_rate() -> f64 {
    positive(std::env::var(READ_RATE_ENV).ok()).unwrap_or(PREFIX_GET_RATE)
}

/// A setting's whole number of at least 1, if it is one.
fn positive(setting: Option<String>) -> Option<f64> {
    setting
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| *n >= 1)
        .map(|n| n as f64)
}

/// The slowest a budget goes after repeated `SlowDown`s, in requests a second.
const MIN_RATE: f64 = 5.0;

/// How fast a budget climbs while S3 keeps up: requests a second added per second of
/// successful writes (per function: a Map of 64 children climbs 320 a second together).
pub const INCREASE_PER_SECOND: f64 = 5.0;

/// The fastest one function writes: one partition's worth, whatever S3 serves the run.
pub const MAX_CHILD_RATE: f64 = 3_500.0;

/// The fastest one function reads: one partition's worth.
pub const MAX_CHILD_READ_RATE: f64 = 5_500.0;

/// How often a request S3 keeps throttling is tried again here.
const SLOW_DOWN_RETRIES: u32 = 5;

/// A token bucket of S3 requests of one kind (writes, or reads), shared by every task of
/// one function.
#[derive(Clone, Debug)]
pub struct RequestBudget {
    state: Arc<Mutex<Bucket>>,
    fence: Option<Fence>,
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    max_rate: f64,
    tokens: f64,
    last: Instant,
    slow_downs: u64,
}

impl RequestBudget {
    /// `rate` requests a second to start with (a burst of one second's worth), climbing
    /// while S3 keeps up.
    pub fn new(rate: f64) -> Self {
        Self::up_to(rate, MAX_CHILD_RATE)
    }

    /// `rate` requests a second to start with, climbing up to `ceiling`.
    pub fn up_to(rate: f64, ceiling: f64) -> Self {
        let rate = rate.max(MIN_RATE);
        Self {
            state: Arc::new(Mutex::new(Bucket {
                rate,
                max_rate: ceiling.max(rate),
                tokens: rate,
                last: Instant::now(),
                slow_downs: 0,
            })),
            fence: None,
        }
    }

    /// The same budget, whose writers stop once `fence` is up (a range's child).
    pub fn with_fence(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Before a writer starts an object: `Ok` unless this budget's fence is up.
    pub async fn check_fence(&self) -> Result<()> {
        match &self.fence {
            // Boxed: the writers' loops await this for every object and should not carry
            // an S3 request's future in their own state.
            Some(fence) => Box::pin(fence.check()).await,
            None => Ok(()),
        }
    }

    /// This function's share of the run's write rate ([`prefix_write_rate`]): all of it
    /// for a phase running inline, `1 / min(ranges, fan-out concurrency)` of it for one
    /// range's child.
    pub fn writes_for_run(plan: Option<&PlanRef>, child: bool) -> Self {
        Self::new(prefix_write_rate() / sharing(plan, child))
    }

    /// This function's share of the run's read rate ([`prefix_read_rate`]), as
    /// [`Self::writes_for_run`] shares the writes.
    pub fn reads_for_run(plan: Option<&PlanRef>, child: bool) -> Self {
        Self::up_to(
            prefix_read_rate() / sharing(plan, child),
            MAX_CHILD_READ_RATE,
        )
    }

    /// A range's child's budget: its share of the rate, stopped by its run's fence.
    pub fn writes_for_child(
        s3: &aws_sdk_s3::Client,
        store: &ReceiptStore,
        run: &RunContext,
    ) -> Result<Self> {
        let fence = Fence::new(
            s3.clone(),
            fence_uri(store, &run.run_id)?,
            run.execution_arn.clone(),
        );
        Ok(Self::writes_for_run(run.plan.as_ref(), true).with_fence(fence))
    }

    /// Requests a second it allows now.
    pub fn rate(&self) -> f64 {
        self.lock().rate
    }

    /// `SlowDown`s it has seen.
    pub fn slow_downs(&self) -> u64 {
        self.lock().slow_downs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        // A panic while holding the lock leaves the numbers usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for one request's token.
    pub async fn acquire(&self) {
        self.acquire_many_until(1, None).await;
    }

    /// Waits for `requests` tokens (a DeleteObjects counts one a key), unless the wait
    /// would pass `stop_at`: then `false` at once, with no token taken. More than a
    /// second's burst is taken once the bucket is full, leaving a debt the next requests
    /// wait out: the pace holds over time whatever the batch size.
    pub async fn acquire_many_until(&self, requests: u32, stop_at: Option<Instant>) -> bool {
        loop {
            let wait = {
                let mut bucket = self.lock();
                let now = Instant::now();
                let elapsed = now.duration_since(bucket.last).as_secs_f64();
                bucket.tokens = (bucket.tokens + elapsed * bucket.rate).min(bucket.rate);
                bucket.last = now;
                let needed = f64::from(requests.max(1)).min(bucket.rate);
                if bucket.tokens >= needed {
                    bucket.tokens -= f64::from(requests.max(1));
                    return true;
                }
                Duration::from_secs_f64((needed - bucket.tokens) / bucket.rate)
            };
            if stop_at.is_some_and(|at| Instant::now() + wait > at) {
                return false;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// S3 said `SlowDown`: half the pace.
    pub fn slow_down(&self) {
        let mut bucket = self.lock();
        bucket.rate = (bucket.rate / 2.0).max(MIN_RATE);
        bucket.tokens = bucket.tokens.min(0.0);
        bucket.slow_downs += 1;
        tracing::warn!(rate = bucket.rate, "S3 said SlowDown: slower requests");
    }

    /// A request went through: a little faster ([`INCREASE_PER_SECOND`] a second of
    /// such requests, so `INCREASE_PER_SECOND / rate` each), up to [`MAX_CHILD_RATE`].
    pub fn succeeded(&self) {
        let mut bucket = self.lock();
        bucket.rate = (bucket.rate + INCREASE_PER_SECOND / bucket.rate).min(bucket.max_rate);
    }

    /// Sends one request within the budget: waits for its token, and when S3 still
    /// throttles it after the SDK's retries, slows the budget and tries again (at most
    /// [`SLOW_DOWN_RETRIES`] times); any other outcome is the request's.
    pub async fn send<T, E, F, Fut>(&self, mut request: F) -> Result<T, E>
    where
        E: Throttled,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut tries = 0;
        loop {
            self.acquire().await;
            match request().await {
                Ok(out) => {
                    self.succeeded();
                    return Ok(out);
                }
                Err(err) if err.is_slow_down() && tries < SLOW_DOWN_RETRIES => {
                    tries += 1;
                    self.slow_down();
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// How many functions share a run's rate: one for a phase running inline, up to the
/// fan-out's concurrency for a range's child.
fn sharing(plan: Option<&PlanRef>, child: bool) -> f64 {
    let functions = match plan {
        Some(plan) if child => plan.ranges.clamp(1, fan_out_concurrency()),
        _ => 1,
    };
    f64::from(functions)
}

/// S3's throttling answer (`503 SlowDown`).
pub fn is_slow_down<E: ProvideErrorMetadata>(err: &E) -> bool {
    err.code() == Some("SlowDown")
}

/// An error that can say S3 throttled the request: an SDK call's own, or drpilot's
/// wrapping one ([`Error::aws_code`]).
pub trait Throttled {
    fn is_slow_down(&self) -> bool;
}

impl<E: ProvideErrorMetadata> Throttled for E {
    fn is_slow_down(&self) -> bool {
        is_slow_down(self)
    }
}

impl Throttled for Error {
    fn is_slow_down(&self) -> bool {
        self.aws_code() == Some("SlowDown")
    }
}

/// How often keys S3 answered with a per-key error are sent again within one pass.
const KEY_RETRIES: u32 = 6;

/// What one [`delete_prefix`] pass did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deletion {
    /// Objects this pass deleted.
    pub deleted: u64,
    /// Whether the prefix is now empty (and its unfinished uploads aborted); `false`
    /// when the pass stopped at its deadline.
    pub complete: bool,
}

/// Told of each page [`delete_prefix`] deletes: a caller's count of deletes that must
/// survive a crash between a page's DeleteObjects and the caller's next write (teardown's
/// journal) is written before the page goes.
pub trait DeleteLog {
    /// Before the DeleteObjects of `keys` (one listing page, in key order).
    fn before_page(&mut self, keys: &[String]) -> impl Future<Output = Result<()>> + Send;
    /// After it: `deleted` of the page's keys are gone.
    fn after_page(&mut self, deleted: u64);
}

/// Deletes no caller counts beyond the [`Deletion`] a pass answers.
impl DeleteLog for () {
    async fn before_page(&mut self, _keys: &[String]) -> Result<()> {
        Ok(())
    }
    fn after_page(&mut self, _deleted: u64) {}
}

/// Deletes every object under `prefix`, a listing page (1,000 keys) a request, paced by
/// `budget` (one token a key). Keys S3 answers with a per-key error inside the 200 are
/// sent again after a pause ([`KEY_RETRIES`] times; a `SlowDown` among them slows the
/// budget); keys still failing after that fail the pass, naming the first. A request S3
/// throttles is sent again, slower, until `stop_at` (without one, [`KEY_RETRIES`] times). Past
/// `stop_at` (checked before each page after the first, and while S3 throttles) the
/// pass ends incomplete; another pass continues where it left off. Idempotent: an empty
/// prefix deletes nothing. `log` hears of each page before and after it goes.
pub async fn delete_prefix(
    s3: &aws_sdk_s3::Client,
    prefix: &S3Uri,
    budget: &RequestBudget,
    stop_at: Option<Instant>,
    log: &mut impl DeleteLog,
) -> Result<Deletion> {
    let prefix = prefix.as_prefix();
    if prefix.key.is_empty() {
        return Err(Error::input(format!(
            "refusing to delete a whole bucket ({prefix})"
        )));
    }
    let mut deleted = 0u64;
    let mut pages = key_pages(s3, &prefix);
    while let Some(keys) = pages.next().await {
        let keys = keys.map_err(|e| Error::from_sdk(&format!("ListObjectsV2 {prefix}"), e))?;
        if keys.is_empty() {
            continue;
        }
        if deleted > 0 && is_past(stop_at) {
            return Ok(Deletion {
                deleted,
                complete: false,
            });
        }
        log.before_page(&keys).await?;
        let (count, finished) = delete_keys(s3, &prefix, keys, budget, stop_at).await?;
        log.after_page(count);
        deleted += count;
        if !finished {
            return Ok(Deletion {
                deleted,
                complete: false,
            });
        }
    }
    abort_uploads(s3, &prefix).await?;
    Ok(Deletion {
        deleted,
        complete: true,
    })
}

/// Whether a pass's deadline has come.
fn is_past(stop_at: Option<Instant>) -> bool {
    stop_at.is_some_and(|at| Instant::now() >= at)
}

/// Deletes `keys` (one page) until none is left: how many it deleted, and whether all
/// (`false`: the pass's time ran out while S3 throttled).
async fn delete_keys(
    s3: &aws_sdk_s3::Client,
    prefix: &S3Uri,
    mut keys: Vec<String>,
    budget: &RequestBudget,
    stop_at: Option<Instant>,
) -> Result<(u64, bool)> {
    let mut deleted = 0u64;
    // Per-key retries and throttled requests are counted apart: S3 answers both under
    // the same load, and only the first are bounded when the pass has a deadline.
    let (mut key_tries, mut throttled) = (0u32, 0u32);
    let mut paid = false;
    loop {
        let count = keys.len() as u64;
        let objects = keys
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::internal(format!("building DeleteObjects: {e}")))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| Error::internal(format!("building DeleteObjects: {e}")))?;
        // A request S3 throttled is not paid again: its keys were never served.
        if !paid {
            if !budget.acquire_many_until(count as u32, stop_at).await {
                return Ok((deleted, false));
            }
            paid = true;
        }
        let out = match s3
            .delete_objects()
            .bucket(&prefix.bucket)
            .delete(delete)
            .send()
            .await
        {
            Ok(out) => out,
            // Throttled after the SDK's own retries: slower, and again, until the pass's
            // time is up (or, for a pass without a deadline, KEY_RETRIES times).
            Err(err) if is_slow_down(&err) && (stop_at.is_some() || throttled < KEY_RETRIES) => {
                throttled += 1;
                budget.slow_down();
                if is_past(stop_at) {
                    return Ok((deleted, false));
                }
                tokio::time::sleep(Duration::from_millis(100 << throttled.min(4))).await;
                continue;
            }
            Err(err) => return Err(Error::from_sdk(&format!("DeleteObjects {prefix}"), err)),
        };
        let failed: Vec<String> = out
            .errors()
            .iter()
            .filter_map(|e| e.key().map(str::to_owned))
            .collect();
        deleted += count - failed.len() as u64;
        // Each key is a request served: the pace climbs per key, as it was paid.
        for _ in 0..(count - failed.len() as u64) {
            budget.succeeded();
        }
        if failed.is_empty() {
            return Ok((deleted, true));
        }
        let first = &out.errors()[0];
        if key_tries >= KEY_RETRIES {
            return Err(Error::retryable(format!(
                "DeleteObjects {prefix}: {} keys not deleted after {} tries, first {:?}: {} {}",
                failed.len(),
                key_tries + 1,
                first.key().unwrap_or_default(),
                first.code().unwrap_or_default(),
                first.message().unwrap_or_default(),
            )));
        }
        tracing::warn!(
            prefix = %prefix,
            failed = failed.len(),
            code = first.code().unwrap_or_default(),
            "DeleteObjects answered per-key errors: sending those keys again"
        );
        if out.errors().iter().any(|e| e.code() == Some("SlowDown")) {
            budget.slow_down();
        }
        key_tries += 1;
        if is_past(stop_at) {
            return Ok((deleted, false));
        }
        tokio::time::sleep(Duration::from_millis(100 << key_tries.min(5))).await;
        keys = failed;
        paid = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bucket_makes_requests_past_its_burst_wait() {
        let budget = RequestBudget::new(20.0);
        let started = Instant::now();
        for _ in 0..30 {
            budget.acquire().await;
        }
        // 20 at once (a second's burst), then 10 at 20 a second: at least half a second
        // of waiting (a lower bound only: a busy machine may take longer).
        let elapsed = started.elapsed().as_secs_f64();
        assert!(elapsed >= 0.45, "{elapsed}");
    }

    #[test]
    fn slow_downs_halve_and_successes_climb_past_the_floor_up_to_a_partition() {
        let budget = RequestBudget::new(100.0);
        budget.slow_down();
        budget.slow_down();
        assert_eq!(budget.rate(), 25.0);
        // A second's worth of successes at a rate adds INCREASE_PER_SECOND to it.
        for _ in 0..25 {
            budget.succeeded();
        }
        let climbed = budget.rate();
        assert!((29.0..31.0).contains(&climbed), "{climbed}");
        // Past the share it started from, as long as S3 keeps up, up to one partition.
        for _ in 0..200_000 {
            budget.succeeded();
        }
        assert!(budget.rate() > 100.0, "{}", budget.rate());
        for _ in 0..2_000_000 {
            budget.succeeded();
        }
        assert_eq!(budget.rate(), MAX_CHILD_RATE);
        for _ in 0..20 {
            budget.slow_down();
        }
        assert_eq!(budget.rate(), MIN_RATE);
        assert_eq!(budget.slow_downs(), 22);
    }

    #[test]
    fn a_setting_is_a_whole_number_of_at_least_one() {
        assert_eq!(positive(Some(" 250 ".into())), Some(250.0));
        for bad in ["0", "-3", "1.5", "fast", ""] {
            assert_eq!(positive(Some(bad.into())), None, "{bad}");
        }
        assert_eq!(positive(None), None);
    }

    #[test]
    fn a_child_gets_its_share_of_the_prefix_rate() {
        let plan = |ranges| PlanRef {
            bucket: "b".into(),
            key: "k".into(),
            ranges,
        };
        assert_eq!(
            RequestBudget::writes_for_run(None, false).rate(),
            PREFIX_PUT_RATE
        );
        assert_eq!(
            RequestBudget::writes_for_run(Some(&plan(4)), true).rate(),
            750.0
        );
        assert_eq!(
            RequestBudget::writes_for_run(Some(&plan(4)), false).rate(),
            PREFIX_PUT_RATE
        );
        assert_eq!(
            RequestBudget::writes_for_run(Some(&plan(1000)), true).rate(),
            PREFIX_PUT_RATE / f64::from(MAX_CHILDREN)
        );
        assert_eq!(
            RequestBudget::reads_for_run(Some(&plan(4)), true).rate(),
            PREFIX_GET_RATE / 4.0
        );
    }
}
