use drpilot_shared::phase::serve;
use drpilot_shared::AwsClients;
use lambda_runtime::LambdaEvent;
use sample_verifier::{SampleVerifier, VerifyRequest};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let function = SampleVerifier::new(AwsClients::from_lambda_env());
    serve("sample-verifier", |event: LambdaEvent<VerifyRequest>| {
        function.handle(event.payload)
    })
    .await
}
