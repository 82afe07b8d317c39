use drpilot_shared::phase::serve;
use drpilot_shared::AwsClients;
use lambda_runtime::LambdaEvent;
use teardown::{Teardown, TeardownRequest};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let function = Teardown::new(AwsClients::from_lambda_env());
    serve("teardown", |event: LambdaEvent<TeardownRequest>| {
        function.handle(event.payload)
    })
    .await
}
