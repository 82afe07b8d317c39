use drpilot_shared::{telemetry, AwsClients};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use teardown::{handler, Teardown};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_tracing();
    let teardown = Teardown::new(AwsClients::from_env().await);
    let teardown = &teardown;
    // Boxed: the runtime's future holds every in-flight handler future and is large.
    Box::pin(lambda_runtime::run(service_fn(
        move |event: LambdaEvent<_>| handler(teardown, event),
    )))
    .await
}
