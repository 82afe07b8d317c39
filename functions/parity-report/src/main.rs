use drpilot_shared::phase::serve;
use drpilot_shared::AwsClients;
use lambda_runtime::LambdaEvent;
use parity_report::{ParityReporter, ParityRequest};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let function = &ParityReporter::new(AwsClients::from_lambda_env());
    // A run's phase or a standalone comparison: the request says which.
    serve(
        "parity-report",
        move |event: LambdaEvent<serde_json::Value>| async move {
            function
                .handle(ParityRequest::from_json(event.payload)?)
                .await
        },
    )
    .await
}
