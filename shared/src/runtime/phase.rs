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

use crate::error::{catch_panic, Error, Result};
use crate::profile::{Profile, ProfileSource};
use crate::receipt::{PhaseClock, PhaseDetails, PhaseStatus};
use crate::resume;
use crate::run::{PhaseOutput, PhaseRequest, RunContext};
use crate::stage::Phase;
use crate::store::ReceiptStore;

/// How a phase ended when it did not fail.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome<D> {
    /// Done: the receipt's details.
    Done(D),
    /// Nothing to do for this run (a dry run, say): skipped, with why.
    Skipped(String),
}

/// How a phase's body ended: its outcome, or its failure with what it gathered.
pub type PhaseResult<D> = std::result::Result<Outcome<D>, Failed<D>>;

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
    F: AsyncFnOnce(&PhaseRun<'_>) -> PhaseResult<D>,
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
    result: PhaseResult<D>,
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
