use drpilot_shared::phase::serve;
use drpilot_shared::AwsClients;
use lambda_runtime::LambdaEvent;
use readiness::{Readiness, ReadinessRequest};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let function = Readiness::new(AwsClients::from_lambda_env());
    serve("readiness", |event: LambdaEvent<ReadinessRequest>| {
        function.handle(event.payload)
    })
    .await
}
