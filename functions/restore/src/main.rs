use drpilot_shared::{telemetry, AwsClients};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use restore::{handler, Restore};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_tracing();
    let restore = Restore::new(AwsClients::from_env().await);
    let restore = &restore;
    // Boxed: the runtime's future holds every in-flight handler future and is large.
    Box::pin(lambda_runtime::run(service_fn(
        move |event: LambdaEvent<_>| handler(restore, event),
    )))
    .await
}
