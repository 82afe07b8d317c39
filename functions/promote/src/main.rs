use drpilot_shared::{telemetry, AwsClients};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use promote::{handler, Promote};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_tracing();
    let promote = Promote::new(AwsClients::from_env().await);
    let promote = &promote;
    // Boxed: the runtime's future holds every in-flight handler future and is large.
    Box::pin(lambda_runtime::run(service_fn(
        move |event: LambdaEvent<_>| handler(promote, event),
    )))
    .await
}
