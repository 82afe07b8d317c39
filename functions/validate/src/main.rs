use drpilot_shared::phase::serve;
use drpilot_shared::AwsClients;
use lambda_runtime::LambdaEvent;
use validate::Validate;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let function = Validate::new(AwsClients::from_lambda_env());
    serve(
        "validate",
        |event: LambdaEvent<drpilot_shared::run::PhaseRequest>| function.serve_step(event.payload),
    )
    .await
}
