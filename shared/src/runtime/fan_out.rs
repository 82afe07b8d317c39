//! A heavy phase's steps (restore, validate, parity-report, promote): the one trait they
//! implement and its one entry point.
//!
//! A run whose plan splits the backup into ranges ([`crate::plan`]) runs such a phase in
//! steps of the state machine: the preparation, once; then one child per range inside a
//! Distributed Map (a child that reaches its invocation's deadline answers where it
//! stopped and is invoked again from there); then the reducer, which adds the ranges'
//! results up and writes the phase's receipt. A run without a plan runs the whole phase
//! in one invocation. [`serve`] reads which step a request asks for
//! ([`PhaseRequest::step`]) and runs the phase's method for it inside the phase
//! lifecycle ([`crate::phase`]).

use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{info, Span};

use crate::clients::AwsClients;
use crate::error::{Error, ErrorKind, Result};
use crate::phase::{begin, finish, record_run, Begun, Failed, PhaseResult, PhaseRun, Rerun};
use crate::plan::{
    Continuation, PlanItem, RangePass, RangeResult, RangeStatus, Reduce, Step, MAX_RANGE_PASSES,
};
use crate::profile::ProfileSource;
use crate::receipt::{PhaseDetails, PhaseStatus};
use crate::run::{PhaseOutput, PhaseRequest, RangeOutput, StepOutput};
use crate::stage::Phase;

/// A phase a plan may split into ranges. Each method is one step's own work; [`serve`]
/// wraps it in the lifecycle (window, what the phase builds on, receipts, attempts).
// `async fn` in a public trait: its futures' `Send` cannot be named by callers that stay
// generic; every caller here names the concrete phase, and the Lambda runtime does not
// need `Send`.
#[allow(async_fn_in_trait)]
pub trait FanOutPhase {
    /// The receipt's details (which also name the phase: `Details::PHASE`).
    type Details: PhaseDetails;
    /// A range's partial result, which the reducer adds up.
    type RangeDetails: Serialize;
    /// Where a range's pass stopped at its deadline (`()` for a phase that only reads:
    /// its child ends in one pass).
    type Cursor: Serialize + DeserializeOwned;
    /// What a second attempt does with the first one's receipt.
    const RERUN: Rerun;

    /// The function's clients (its S3 client reads and writes the receipts).
    fn clients(&self) -> &AwsClients;
    /// Where the run's profile is read from.
    fn profiles(&self) -> &ProfileSource;

    /// The whole phase in one invocation (a run without a plan).
    async fn whole(&self, ctx: &PhaseRun<'_>) -> PhaseResult<Self::Details>;

    /// What must happen once before any range's child starts; by default nothing (the
    /// lifecycle has checked what the phase builds on).
    async fn prepare(&self, _: &PhaseRun<'_>) -> std::result::Result<(), Failed<Self::Details>> {
        Ok(())
    }

    /// One pass of a range's child, from `cursor` when an earlier pass stopped.
    async fn range(
        &self,
        ctx: &PhaseRun<'_>,
        item: &PlanItem,
        cursor: Option<Self::Cursor>,
    ) -> Result<RangePass<Self::RangeDetails, Self::Cursor>>;

    /// The ranges' results (all succeeded, this execution's) added up into the receipt.
    async fn reduce(
        &self,
        ctx: &PhaseRun<'_>,
        reduce: &Reduce,
        results: Vec<RangeResult>,
    ) -> PhaseResult<Self::Details>;
}

/// A heavy phase's Lambda entry: the step `request` asks for, run by `phase`.
pub async fn serve<P: FanOutPhase>(phase: &P, request: PhaseRequest) -> Result<StepOutput> {
    Ok(match request.step()? {
        Step::Whole => StepOutput::Phase(
            crate::phase::run(
                &request,
                &phase.clients().s3,
                phase.profiles(),
                P::RERUN,
                async |ctx: &PhaseRun<'_>| phase.whole(ctx).await,
            )
            .await?,
        ),
        Step::Prepare => StepOutput::Phase(prepare(phase, &request).await?),
        Step::Range(item) => StepOutput::Range(run_range(phase, &request, &item).await?),
        Step::Reduce(step) => StepOutput::Phase(reduce(phase, &request, &step).await?),
    })
}

/// [`serve`] for a caller that expects a phase's output (the whole phase, its
/// preparation or its reducer): a range's request is refused, as its child answers with
/// its partial result instead.
pub async fn serve_phase<P: FanOutPhase>(phase: &P, request: PhaseRequest) -> Result<PhaseOutput> {
    if request.range.is_some() {
        return Err(Error::input(
            "range: a range's child answers with its partial result (serve_step)",
        ));
    }
    match serve(phase, request).await? {
        StepOutput::Phase(output) => Ok(output),
        StepOutput::Range(_) => Err(Error::internal("a phase step answered as a range")),
    }
}

/// The first step of a phase whose plan fans out ([`crate::plan`]): the lifecycle's
/// [`begin`], then the phase's [`FanOutPhase::prepare`], what must happen once before any
/// range's child starts (restore empties the staging; promote checks the approval and
/// the pointer). Its success writes no receipt (the reducer writes it) and answers
/// `running` with the fan-out; its failure writes the failed receipt, as
/// [`crate::phase::run`] would.
async fn prepare<P: FanOutPhase>(phase: &P, request: &PhaseRequest) -> Result<PhaseOutput> {
    let (s3, profiles) = (&phase.clients().s3, phase.profiles());
    let name = <P::Details as PhaseDetails>::PHASE;
    let attempted = async {
        let started = match begin(request, s3, profiles, name, P::RERUN).await? {
            Begun::Ended(output) => return Ok(output),
            Begun::Started(started) => started,
        };
        let ranges = request.run.plan.as_ref().map_or(1, |p| p.ranges);
        if let Err(failed) = phase.prepare(&started.context(&request.run)).await {
            return finish::<P::Details>(request, &started, Err(failed)).await;
        }
        info!(ranges, "fanning out");
        Ok(PhaseOutput {
            run_id: request.run.run_id.clone(),
            phase: name,
            status: PhaseStatus::Running,
            reason: Some(format!("the work goes to {ranges} ranges")),
            receipt: started.store.phase_uri(&request.run.run_id, name)?,
            details: serde_json::json!({ "ranges": ranges }),
            fan_out: Some(crate::run::FanOut {
                ranges,
                started_at: started.started_at(),
            }),
        })
    };
    Box::pin(attempted).await
}

/// One range's child of `phase`: the profile, its [`FanOutPhase::range`] from where the
/// request's continuation says an earlier pass stopped, and then either the partial
/// result, written on every path that ends the range (success with the body's details,
/// or failed with the error, which then goes back to the Map, whose Retry may run the
/// child again), or the continuation for the next pass. A pass that stopped without
/// progress, or past [`MAX_RANGE_PASSES`], fails the range: its history would grow
/// without the range ever ending.
async fn run_range<P: FanOutPhase>(
    fan_out: &P,
    request: &PhaseRequest,
    item: &PlanItem,
) -> Result<RangeOutput> {
    let (s3, profiles) = (&fan_out.clients().s3, fan_out.profiles());
    let phase = <P::Details as PhaseDetails>::PHASE;
    let run = &request.run;
    record_run(&run.run_id, phase);
    Span::current().record("range", item.index);
    let (attempt, max_attempts) = (request.attempt(), run.input.max_attempts);
    let attempted = async {
        let (pass, cursor) = resume_from::<P::Cursor>(request.continuation.as_ref(), phase, item)?;
        let profile = profiles.load(&run.input.profile).await?;
        let store = run.receipts(s3, &profile);
        let started_at = chrono::Utc::now();
        let ctx = PhaseRun {
            run,
            profile: &profile,
            store: &store,
        };
        let result_uri = crate::plan::range_uri(&store, &run.run_id, phase, item.index)?;
        let done = match fan_out.range(&ctx, item, cursor).await {
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
/// every range's result of this execution, then the phase's [`FanOutPhase::reduce`] on
/// them, and the receipt, as [`crate::phase::run`] writes it. A range that failed or left
/// no result fails the phase, named.
async fn reduce<P: FanOutPhase>(
    phase: &P,
    request: &PhaseRequest,
    reduce: &Reduce,
) -> Result<PhaseOutput> {
    let (s3, profiles) = (&phase.clients().s3, phase.profiles());
    let name = <P::Details as PhaseDetails>::PHASE;
    let attempted = async {
        let mut started = match begin(request, s3, profiles, name, P::RERUN).await? {
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
                name,
                plan.ranges,
                run.execution_arn.as_deref(),
            )
            .await?;
            let ranges = crate::plan::ranges(s3, plan).await?;
            crate::plan::all_succeeded(name, results, &ranges, reduce.map_error.as_ref())
        };
        let result = match gathered.await {
            Ok(results) => phase.reduce(&started.context(run), reduce, results).await,
            Err(error) => Err(Failed::from(error)),
        };
        finish(request, &started, result).await
    };
    Box::pin(attempted).await
}
