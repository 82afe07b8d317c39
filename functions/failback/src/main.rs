use drpilot_shared::phase::serve;
use drpilot_shared::AwsClients;
use failback::{Failback, FailbackRequest};
use lambda_runtime::LambdaEvent;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let function = Failback::new(AwsClients::from_lambda_env());
    serve("failback", |event: LambdaEvent<FailbackRequest>| {
        function.handle(event.payload)
    })
    .await
}
