use drpilot_shared::phase::serve;
use drpilot_shared::AwsClients;
use lambda_runtime::LambdaEvent;
use promote::{Promote, PromoteRequest};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let function = Promote::new(AwsClients::from_lambda_env());
    serve("promote", |event: LambdaEvent<PromoteRequest>| {
        function.serve_step(event.payload)
    })
    .await
}
