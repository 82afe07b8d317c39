use components::{Components, ComponentsRequest};
use drpilot_shared::phase::serve;
use drpilot_shared::AwsClients;
use lambda_runtime::LambdaEvent;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let function = Components::new(AwsClients::from_lambda_env());
    serve("components", |event: LambdaEvent<ComponentsRequest>| {
        function.handle(event.payload)
    })
    .await
}
