use bringup::{handler, Bringup};
use drpilot_shared::{telemetry, AwsClients};
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_tracing();
    let bringup = Bringup::new(AwsClients::from_env().await);
    let bringup = &bringup;
    // Boxed: the runtime's future holds every in-flight handler future and is large.
    Box::pin(lambda_runtime::run(service_fn(
        move |event: LambdaEvent<_>| handler(bringup, event),
    )))
    .await
}
