use drpilot_shared::{telemetry, AwsClients};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use validate::{handler, Validate};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init_tracing();
    let validate = Validate::new(AwsClients::from_env().await);
    let validate = &validate;
    // Boxed: the runtime's future holds every in-flight handler future and is large.
    Box::pin(lambda_runtime::run(service_fn(
        move |event: LambdaEvent<_>| handler(validate, event),
    )))
    .await
}
