//! The phase lifecycle, in one place: what every phase of a run does around its own work.
//!
//! [`run`] loads the profile, skips a phase outside the input's `start_at`/`stop_after`
//! window (with a `skipped` receipt saying why, or keeping the receipt an earlier
//! execution of the run left), refuses a phase whose earlier phases are not done
//! ([`resume::blocker`]), clears a stale receipt or returns an earlier success (per
//! [`Rerun`]), runs the phase's body, and writes its receipt on every path — success,
//! skipped, or failed with the details gathered so far — before the error goes back to
//! the state machine. A transient failure at the input's last allowed attempt goes back
//! as `ServiceError` ([`Error::at_attempt`]).
//!
//! [`serve`] is the one Lambda entry point: the runtime's own tracing subscriber, a span per invocation
//! (request id, and the run id and phase once known, see [`record_run`]), panics turned
//! into `Internal`, a failure logged once at error level with its name, and errors handed
//! to Step Functions by that name.

use std::future::Future;

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{error, info, Instrument, Span};

use crate::error::{catch_panic, Error, ErrorKind, Result};
use crate::input::Phase;
use crate::plan::{
    Continuation, PlanItem, RangePass, RangeResult, RangeStatus, Reduce, MAX_RANGE_PASSES,
};
use crate::profile::{Profile, ProfileSource};
use crate::receipt::{PhaseClock, PhaseDetails, PhaseStatus};
use crate::resume;
use crate::run::{PhaseOutput, PhaseRequest, RangeOutput, RunContext};
use crate::store::ReceiptStore;

/// How a phase ended when it did not fail.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome<D> {
    /// Done: the receipt's details.
    Done(D),
    /// Nothing to do for this run (a dry run, say): skipped, with why.
    Skipped(String),
}

/// A phase failure, with the details gathered before it (a validation's tallies) so the
/// receipt keeps them.
#[derive(Debug)]
pub struct Failed<D> {
    pub error: Error,
    pub details: Option<D>,
}

impl<D> Failed<D> {
    pub fn with_details(error: Error, details: D) -> Self {
        Self {
            error,
            details: Some(details),
        }
    }
}

impl<D> From<Error> for Failed<D> {
    fn from(error: Error) -> Self {
        Self {
            error,
            details: None,
        }
    }
}

impl<D> From<crate::s3uri::LocationError> for Failed<D> {
    fn from(error: crate::s3uri::LocationError) -> Self {
        Error::from(error).into()
    }
}

/// What a second attempt at a phase does with the receipt of the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rerun {
    /// Remove it and do the work again: an earlier success must not stand while the
    /// phase starts over (restore, validate, parity-report).
    StartOver,
    /// An earlier success is the answer: the work is done and must not be done twice
    /// (promote: one audit record per run).
    KeepSuccess,
}

/// What a phase body works with.
pub struct PhaseRun<'a> {
    pub run: &'a RunContext,
    pub profile: &'a Profile,
    pub store: &'a ReceiptStore,
}

/// Runs `body` as the phase whose details it records (`D::PHASE`) in `request`'s run,
/// with everything around it (module docs): [`begin`], the body, [`finish`].
pub async fn run<D, F>(
    request: &PhaseRequest,
    s3: &aws_sdk_s3::Client,
    profiles: &ProfileSource,
    rerun: Rerun,
    body: F,
) -> Result<PhaseOutput>
where
    D: PhaseDetails,
    F: AsyncFnOnce(&PhaseRun<'_>) -> std::result::Result<Outcome<D>, Failed<D>>,
{
    let attempted = async {
        let started = match begin(request, s3, profiles, D::PHASE, rerun).await? {
            Begun::Ended(output) => return Ok(output),
            Begun::Started(started) => started,
        };
        let result = body(&started.context(&request.run)).await;
        finish(request, &started, result).await
    };
    // Boxed: a body's future holds the SDK's and is large.
    Box::pin(attempted).await
}

/// How [`begin`] left a phase.
pub enum Begun {
    /// Nothing to do: skipped outside the window (receipt written, or an earlier
    /// execution's kept), or an earlier success kept ([`Rerun::KeepSuccess`]).
    Ended(PhaseOutput),
    /// The phase's work may start; [`finish`] writes its receipt. (Boxed: a profile and
    /// the clients are large.)
    Started(Box<Started>),
}

/// A phase under way: its profile, receipts and clock.
pub struct Started {
    pub profile: Profile,
    pub store: ReceiptStore,
    clock: PhaseClock,
}

impl Started {
    /// The phase's work began at an earlier step, at `at`: its receipt's time runs from
    /// there (components: from the first component's start).
    pub fn since(&mut self, at: chrono::DateTime<chrono::Utc>) {
        self.clock.since(at);
    }

    pub fn started_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.started_at()
    }

    pub fn context<'a>(&'a self, run: &'a RunContext) -> PhaseRun<'a> {
        PhaseRun {
            run,
            profile: &self.profile,
            store: &self.store,
        }
    }
}

/// The lifecycle up to a phase's own work: the profile, the window (a `skipped` receipt,
/// or an earlier execution's receipt kept), what it builds on ([`resume::blocker`]), and
/// the earlier receipt of a re-run (per `rerun`). A phase whose work spans several steps
/// of the state machine (components) calls this at its first step and [`finish`] at its
/// last; [`run`] calls both around a body.
pub async fn begin(
    request: &PhaseRequest,
    s3: &aws_sdk_s3::Client,
    profiles: &ProfileSource,
    phase: Phase,
    rerun: Rerun,
) -> Result<Begun> {
    let run = &request.run;
    record_run(&run.run_id, phase);
    let (attempt, max_attempts) = (request.attempt(), run.input.max_attempts);
    let begun = async {
        let profile = profiles.load(&run.input.profile).await?;
        let store = run.receipts(s3, &profile);
        let clock =
            PhaseClock::start(&run.run_id, phase, request.attempt()).dry_run(run.input.dry_run);
        if let Some(reason) = run.input.skip_reason(phase) {
            // An earlier execution's receipt of this phase is the run's record of it: kept.
            if let Some(earlier) = store
                .get_phase(&run.run_id, phase)
                .await?
                .filter(|r| r.status != PhaseStatus::Skipped)
            {
                info!(%reason, earlier = ?earlier.status, "outside this execution's window; the earlier receipt stands");
                let mut output = PhaseOutput::new(&earlier, store.phase_uri(&run.run_id, phase)?);
                output.status = PhaseStatus::Skipped;
                output.reason = Some(format!(
                    "{reason} (its {} of {} stands)",
                    earlier.status.as_str(),
                    earlier.finished_at.to_rfc3339()
                ));
                return Ok(Begun::Ended(output));
            }
            info!(%reason, "skipped");
            let receipt = clock.skipped(reason);
            let uri = store.put_phase(&receipt).await?;
            return Ok(Begun::Ended(PhaseOutput::new(&receipt, uri)));
        }
        // A dry run stages nothing, so there is nothing earlier for it to build on.
        if !run.input.dry_run && resume::builds_on_earlier(phase) {
            let receipts = store.phases(&run.run_id).await?;
            if let Some(blocked) = resume::blocker(&receipts, phase) {
                return Err(Error::input(format!(
                "{phase} cannot run in run {run_id} yet: {why}; run {first} first (drpilot resume {run_id} --from {first})",
                run_id = run.run_id,
                why = blocked.why,
                first = blocked.run_first,
            )));
            }
        }
        match rerun {
            Rerun::StartOver => store.delete_phase(&run.run_id, phase).await?,
            Rerun::KeepSuccess => {
                if let Some(done) = store.get_phase(&run.run_id, phase).await? {
                    if done.status == PhaseStatus::Success {
                        info!("already done: keeping the earlier success");
                        let uri = store.phase_uri(&run.run_id, phase)?;
                        return Ok(Begun::Ended(PhaseOutput::new(&done, uri)));
                    }
                }
            }
        }
        Ok(Begun::Started(Box::new(Started {
            profile,
            store,
            clock,
        })))
    };
    // Every error, whichever step it comes from, is judged against the attempt count.
    Box::pin(begun)
        .await
        .map_err(|err| err.at_attempt(attempt, max_attempts))
}

/// The end of a phase [`begin`] started: its receipt from `result` (success, skipped, or
/// failed with the details gathered so far), written before a failure goes back to the
/// state machine as the error it names.
pub async fn finish<D: PhaseDetails>(
    request: &PhaseRequest,
    started: &Started,
    result: std::result::Result<Outcome<D>, Failed<D>>,
) -> Result<PhaseOutput> {
    let run = &request.run;
    let (attempt, max_attempts) = (request.attempt(), run.input.max_attempts);
    let finished = async {
        let clock = &started.clock;
        let (receipt, error) = match result {
            Ok(Outcome::Done(details)) => (clock.succeeded(&details)?, None),
            Ok(Outcome::Skipped(reason)) => (clock.skipped(reason), None),
            Err(Failed { error, details }) => {
                // The receipt names the error the state machine will see.
                let error = error.at_attempt(attempt, max_attempts);
                (clock.failed(&error, details.as_ref())?, Some(error))
            }
        };
        let uri = started.store.put_phase(&receipt).await?;
        if let Some(error) = error {
            return Err(error);
        }
        info!(status = ?receipt.status, duration_ms = receipt.duration_ms, "phase finished");
        Ok(PhaseOutput::new(&receipt, uri))
    };
    finished
        .await
        .map_err(|err| err.at_attempt(attempt, max_attempts))
}

/// The first step of a phase whose plan fans out ([`crate::plan`]): the lifecycle's
/// [`begin`], then `body`, what must happen once before any range's child starts
/// (restore empties the staging; promote checks the approval and the pointer). Its
/// success writes no receipt (the reducer writes it) and answers `running` with the
/// fan-out; its failure writes the failed receipt, as [`run`] would.
pub async fn prepare<D, F>(
    request: &PhaseRequest,
    s3: &aws_sdk_s3::Client,
    profiles: &ProfileSource,
    rerun: Rerun,
    body: F,
) -> Result<PhaseOutput>
where
    D: PhaseDetails,
    F: AsyncFnOnce(&PhaseRun<'_>) -> std::result::Result<(), Failed<D>>,
{
    let attempted = async {
        let started = match begin(request, s3, profiles, D::PHASE, rerun).await? {
            Begun::Ended(output) => return Ok(output),
            Begun::Started(started) => started,
        };
        let ranges = request.run.plan.as_ref().map_or(1, |p| p.ranges);
        if let Err(failed) = body(&started.context(&request.run)).await {
            return finish::<D>(request, &started, Err(failed)).await;
        }
        info!(ranges, "fanning out");
        Ok(PhaseOutput {
            run_id: request.run.run_id.clone(),
            phase: D::PHASE,
            status: PhaseStatus::Running,
            reason: Some(format!("the work goes to {ranges} ranges")),
            receipt: started.store.phase_uri(&request.run.run_id, D::PHASE)?,
            details: serde_json::json!({ "ranges": ranges }),
            fan_out: Some(crate::run::FanOut {
                ranges,
                started_at: started.started_at(),
            }),
        })
    };
    Box::pin(attempted).await
}

/// A heavy phase's Lambda entry: a range's child runs `range` under [`run_range`];
/// every other step (the whole phase, its preparation, its reducer) goes to `phase`.
pub async fn serve_step<D, C, R, P>(
    request: PhaseRequest,
    s3: &aws_sdk_s3::Client,
    profiles: &ProfileSource,
    phase: Phase,
    range: R,
    other: P,
) -> Result<crate::run::StepOutput>
where
    D: Serialize,
    C: Serialize + DeserializeOwned,
    R: AsyncFnOnce(&PhaseRun<'_>, &PlanItem, Option<C>) -> Result<RangePass<D, C>>,
    P: AsyncFnOnce(PhaseRequest) -> Result<PhaseOutput>,
{
    use crate::run::StepOutput;
    match request.step()? {
        crate::plan::Step::Range(item) => Ok(StepOutput::Range(
            run_range(&request, s3, profiles, phase, &item, range).await?,
        )),
        _ => Ok(StepOutput::Phase(other(request).await?)),
    }
}

/// One range's child of `phase`: the profile, `body` on the range from where the
/// request's continuation says an earlier pass stopped, and then either the partial
/// result, written on every path that ends the range (success with the body's details,
/// or failed with the error, which then goes back to the Map, whose Retry may run the
/// child again), or the continuation for the next pass. A pass that stopped without
/// progress, or past [`MAX_RANGE_PASSES`], fails the range: its history would grow
/// without the range ever ending.
pub async fn run_range<D, C, F>(
    request: &PhaseRequest,
    s3: &aws_sdk_s3::Client,
    profiles: &ProfileSource,
    phase: Phase,
    item: &PlanItem,
    body: F,
) -> Result<RangeOutput>
where
    D: Serialize,
    C: Serialize + DeserializeOwned,
    F: AsyncFnOnce(&PhaseRun<'_>, &PlanItem, Option<C>) -> Result<RangePass<D, C>>,
{
    let run = &request.run;
    record_run(&run.run_id, phase);
    Span::current().record("range", item.index);
    let (attempt, max_attempts) = (request.attempt(), run.input.max_attempts);
    let attempted = async {
        let (pass, cursor) = resume_from::<C>(request.continuation.as_ref(), phase, item)?;
        let profile = profiles.load(&run.input.profile).await?;
        let store = run.receipts(s3, &profile);
        let started_at = chrono::Utc::now();
        let ctx = PhaseRun {
            run,
            profile: &profile,
            store: &store,
        };
        let result_uri = crate::plan::range_uri(&store, &run.run_id, phase, item.index)?;
        let done = match body(&ctx, item, cursor).await {
            Ok(RangePass::Stopped { cursor, progress }) => {
                match stopped(phase, item, pass, cursor, progress) {
                    Ok(continuation) => {
                        info!(
                            index = item.index,
                            passes = pass + 1,
                            progress,
                            "range stopped at its deadline"
                        );
                        return Ok(RangeOutput {
                            run_id: run.run_id.clone(),
                            phase,
                            index: item.index,
                            status: RangeStatus::Success,
                            result: result_uri,
                            continuation: Some(continuation),
                        });
                    }
                    Err(error) => Err(error),
                }
            }
            Ok(RangePass::Done(details)) => Ok(details),
            Err(error) => Err(error),
        };
        let (status, details, error) = match done {
            Ok(details) => (
                RangeStatus::Success,
                serde_json::to_value(&details).map_err(|e| Error::internal(e.to_string()))?,
                None,
            ),
            Err(error) => (
                RangeStatus::Failed,
                serde_json::Value::Object(Default::default()),
                Some(error.at_attempt(attempt, max_attempts)),
            ),
        };
        let result = RangeResult {
            run_id: run.run_id.clone(),
            phase,
            index: item.index,
            range: item.range.clone(),
            execution_arn: run.execution_arn.clone(),
            status,
            error: error.as_ref().map(|e| e.kind.name().to_owned()),
            message: error.as_ref().map(|e| e.message.clone()),
            attempt,
            passes: pass + 1,
            started_at,
            finished_at: chrono::Utc::now(),
            details,
        };
        crate::plan::put_result(&store, &result).await?;
        if let Some(error) = error {
            return Err(error);
        }
        info!(index = item.index, range = %item.range, passes = pass + 1, "range done");
        Ok(RangeOutput {
            run_id: run.run_id.clone(),
            phase,
            index: item.index,
            status,
            result: result_uri,
            continuation: None,
        })
    };
    Box::pin(attempted)
        .await
        .map_err(|err| err.at_attempt(attempt, max_attempts))
}

/// The pass a request is (0 for the first) and the phase's cursor from its continuation.
fn resume_from<C: DeserializeOwned>(
    continuation: Option<&Continuation>,
    phase: Phase,
    item: &PlanItem,
) -> Result<(u32, Option<C>)> {
    let Some(continuation) = continuation else {
        return Ok((0, None));
    };
    let cursor = serde_json::from_value(continuation.cursor.clone()).map_err(|e| {
        Error::input(format!(
            "continuation.cursor: not {phase}'s cursor for range {}: {e}",
            item.index
        ))
    })?;
    Ok((continuation.pass, Some(cursor)))
}

/// The continuation of a pass that stopped at its deadline, unless it cannot go on.
fn stopped<C: Serialize>(
    phase: Phase,
    item: &PlanItem,
    pass: u32,
    cursor: C,
    progress: u64,
) -> Result<Continuation> {
    let pass = pass + 1;
    if progress == 0 {
        return Err(Error::new(
            ErrorKind::ServiceError,
            format!(
            "{phase} range {}: pass {pass} reached its invocation's deadline having done nothing; \
             one invocation cannot carry this range's smallest step",
            item.index
        ),
        ));
    }
    if pass >= MAX_RANGE_PASSES {
        return Err(Error::new(
            ErrorKind::ServiceError,
            format!(
            "{phase} range {}: still unfinished after {pass} passes (at most {MAX_RANGE_PASSES}); \
             lower the profile's objects_per_range",
            item.index
        ),
        ));
    }
    let cursor = serde_json::to_value(cursor).map_err(|e| Error::internal(e.to_string()))?;
    Ok(Continuation { pass, cursor })
}

/// The last step of a phase that fanned out: the lifecycle's [`begin`] again (it answers
/// as it did for the preparation), the receipt's clock from the preparation's start,
/// every range's result of this execution, then `body` on them, and the receipt, as
/// [`run`] writes it. A range that failed or left no result fails the phase, named.
pub async fn reduce<D, F>(
    request: &PhaseRequest,
    s3: &aws_sdk_s3::Client,
    profiles: &ProfileSource,
    rerun: Rerun,
    reduce: &Reduce,
    body: F,
) -> Result<PhaseOutput>
where
    D: PhaseDetails,
    F: AsyncFnOnce(&PhaseRun<'_>, Vec<RangeResult>) -> std::result::Result<Outcome<D>, Failed<D>>,
{
    let attempted = async {
        let mut started = match begin(request, s3, profiles, D::PHASE, rerun).await? {
            Begun::Ended(output) => return Ok(output),
            Begun::Started(started) => started,
        };
        started.since(reduce.started_at);
        let run = &request.run;
        let gathered = async {
            let plan = run
                .plan
                .as_ref()
                .ok_or_else(|| Error::input("reduce: the run has no plan"))?;
            let results = crate::plan::results(
                &started.store,
                &run.run_id,
                D::PHASE,
                plan.ranges,
                run.execution_arn.as_deref(),
            )
            .await?;
            let ranges = crate::plan::ranges(s3, plan).await?;
            crate::plan::all_succeeded(D::PHASE, results, &ranges, reduce.map_error.as_ref())
        };
        let result = match gathered.await {
            Ok(results) => body(&started.context(run), results).await,
            Err(error) => Err(Failed::from(error)),
        };
        finish(request, &started, result).await
    };
    Box::pin(attempted).await
}

/// Names the run and phase on the current invocation's span (see [`serve`]), so every
/// line logged from here on, the failure line included, carries them.
pub fn record_run(run_id: &str, phase: Phase) {
    record_failback(run_id, phase.as_str());
}

/// [`record_run`] for a step that is not a drill phase (a failback's).
pub fn record_failback(run_id: &str, step: &str) {
    let span = Span::current();
    span.record("run_id", run_id);
    span.record("phase", step);
}

/// The Lambda entry point every function's `main` calls: tracing set up once, then
/// `handler` for each invocation, a panic inside it reported as `Internal`, a failure
/// logged at error level with its name and returned under that name (which Step
/// Functions matches).
pub async fn serve<Request, Response, Handler, Fut>(
    function: &'static str,
    handler: Handler,
) -> std::result::Result<(), lambda_runtime::Error>
where
    Request: DeserializeOwned + Send + 'static,
    Response: Serialize,
    Handler: Fn(LambdaEvent<Request>) -> Fut,
    Fut: Future<Output = Result<Response>>,
{
    // Lambda's advanced logging controls (AWS_LAMBDA_LOG_FORMAT, AWS_LAMBDA_LOG_LEVEL),
    // as the runtime reads them.
    lambda_runtime::tracing::init_default_subscriber();
    let handler = &handler;
    // Boxed: the runtime's future holds every in-flight handler future and is large.
    Box::pin(lambda_runtime::run(service_fn(
        move |event: LambdaEvent<Request>| {
            let span = tracing::info_span!(
                "invocation",
                function,
                request_id = %event.context.request_id,
                run_id = tracing::field::Empty,
                phase = tracing::field::Empty,
                range = tracing::field::Empty,
            );
            // Resumable work stops before Lambda's deadline (crate::deadline).
            let budget = crate::deadline::budget(event.context.deadline);
            async move {
                crate::deadline::scope(budget, catch_panic(handler(event)))
                    .await
                    .map_err(|err| {
                        error!(error.name = err.kind.name(), error = %err, "invocation failed");
                        Diagnostic::from(err)
                    })
            }
            .instrument(span)
        },
    )))
    .await
}
