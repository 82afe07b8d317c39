use bringup::{Bringup, BringupRequest};
use drpilot_shared::phase::serve;
use drpilot_shared::AwsClients;
use lambda_runtime::LambdaEvent;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let function = &Bringup::new(AwsClients::from_lambda_env());
    // The account guard reads the invoked function's ARN from the invocation's context.
    serve(
        "bringup",
        move |event: LambdaEvent<BringupRequest>| async move {
            function
                .handle(event.payload, &event.context.invoked_function_arn)
                .await
        },
    )
    .await
}
