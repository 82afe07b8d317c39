//! The phase lifecycle, in one place: what every phase of a run does around its own work.
//!
//! [`run`] loads the profile, skips a phase outside the input's `start_at`/`stop_after`
//! window (with a `skipped` receipt saying why), clears a stale receipt or returns an
//! earlier success (per [`Rerun`]), runs the phase's body, and writes its receipt on
//! every path — success, skipped, or failed with the details gathered so far — before
//! the error goes back to the state machine.
//!
//! [`serve`] is the one Lambda entry point: tracing set up once, a span per invocation
//! (request id, and the run id and phase once known, see [`record_run`]), panics turned
//! into `Internal`, a failure logged once at error level with its name, and errors handed
//! to Step Functions by that name.

use std::future::Future;

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{error, info, Instrument, Span};

use crate::error::{catch_panic, Error, Result};
use crate::input::Phase;
use crate::profile::{Profile, ProfileSource};
use crate::receipt::{PhaseClock, PhaseStatus, ReceiptStore};
use crate::run::{PhaseOutput, PhaseRequest, RunContext};

/// How a phase ended when it did not fail.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Done: the receipt's details.
    Done(Value),
    /// Nothing to do for this run (a dry run, say): skipped, with why.
    Skipped(String),
}

/// A phase failure, with the details gathered before it (a validation's tallies) so the
/// receipt keeps them.
#[derive(Debug)]
pub struct Failed {
    pub error: Error,
    pub details: Value,
}

impl Failed {
    pub fn with_details(error: Error, details: Value) -> Self {
        Self { error, details }
    }
}

impl From<Error> for Failed {
    fn from(error: Error) -> Self {
        Self {
            error,
            details: json!({}),
        }
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
    pub attempt: u32,
}

/// Runs `body` as `phase` of `request`'s run, with everything around it (module docs).
pub async fn run<F>(
    phase: Phase,
    request: &PhaseRequest,
    s3: &aws_sdk_s3::Client,
    profiles: &ProfileSource,
    rerun: Rerun,
    body: F,
) -> Result<PhaseOutput>
where
    F: AsyncFnOnce(&PhaseRun<'_>) -> std::result::Result<Outcome, Failed>,
{
    let run = &request.run;
    record_run(&run.run_id, phase);
    let profile = profiles.load(&run.input.profile).await?;
    let store = run.receipts(s3, &profile);
    let clock = PhaseClock::start(&run.run_id, phase, request.attempt());
    if let Some(reason) = run.input.skip_reason(phase) {
        info!(%reason, "skipped");
        let receipt = clock.skipped(reason);
        let uri = store.put_phase(&receipt).await?;
        return Ok(PhaseOutput::new(&receipt, uri));
    }
    match rerun {
        Rerun::StartOver => store.delete_phase(&run.run_id, phase).await?,
        Rerun::KeepSuccess => {
            if let Some(done) = store.get_phase(&run.run_id, phase).await? {
                if done.status == PhaseStatus::Success {
                    info!("already done: keeping the earlier success");
                    let uri = store.phase_uri(&run.run_id, phase)?;
                    return Ok(PhaseOutput::new(&done, uri));
                }
            }
        }
    }
    let context = PhaseRun {
        run,
        profile: &profile,
        store: &store,
        attempt: request.attempt(),
    };
    // Boxed: a body's future holds the SDK's and is large.
    let result = Box::pin(body(&context)).await;
    let (receipt, error) = match result {
        Ok(Outcome::Done(details)) => (clock.finish(PhaseStatus::Success, None, details), None),
        Ok(Outcome::Skipped(reason)) => (clock.skipped(reason), None),
        Err(Failed { error, mut details }) => {
            let name = json!(error.kind.name());
            match details.as_object_mut() {
                Some(object) => {
                    object.insert("error".into(), name);
                }
                None => details = json!({"error": name}),
            }
            let reason = Some(error.to_string());
            (
                clock.finish(PhaseStatus::Failed, reason, details),
                Some(error),
            )
        }
    };
    let uri = store.put_phase(&receipt).await?;
    if let Some(error) = error {
        return Err(error);
    }
    info!(status = ?receipt.status, duration_ms = receipt.duration_ms, "phase finished");
    Ok(PhaseOutput::new(&receipt, uri))
}

/// Names the run and phase on the current invocation's span (see [`serve`]), so every
/// line logged from here on, the failure line included, carries them.
pub fn record_run(run_id: &str, phase: Phase) {
    let span = Span::current();
    span.record("run_id", run_id);
    span.record("phase", phase.as_str());
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
    crate::telemetry::init_tracing();
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
            );
            async move {
                catch_panic(handler(event)).await.map_err(|err| {
                    error!(error.name = err.kind.name(), error = %err, "invocation failed");
                    Diagnostic::from(err)
                })
            }
            .instrument(span)
        },
    )))
    .await
}
