use approve::Approve;
use aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlRequest;
use drpilot_shared::phase::serve;
use drpilot_shared::AwsClients;
use lambda_runtime::LambdaEvent;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let function = Approve::new(AwsClients::from_lambda_env());
    serve(
        "approve",
        |event: LambdaEvent<LambdaFunctionUrlRequest>| async {
            Ok(function.handle(event.payload).await)
        },
    )
    .await
}
