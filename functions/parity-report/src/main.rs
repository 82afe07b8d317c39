use drpilot_shared::{telemetry, AwsClients};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use parity_report::{handler, ParityReporter};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_tracing();
    let reporter = ParityReporter::new(AwsClients::from_env().await);
    let reporter = &reporter;
    // Boxed: the runtime's future holds every in-flight handler future and is large.
    Box::pin(lambda_runtime::run(service_fn(
        move |event: LambdaEvent<_>| handler(reporter, event),
    )))
    .await
}
