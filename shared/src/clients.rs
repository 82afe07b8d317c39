//! AWS clients, built once per process (in `main`, before the runtime loop) and shared by
//! every invocation.

use aws_config::{BehaviorVersion, SdkConfig};

/// The clients the phases use. Cheap to clone: each is an `Arc` inside.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub s3: aws_sdk_s3::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub sts: aws_sdk_sts::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub config: SdkConfig,
}

impl AwsClients {
    /// From the environment, as every AWS SDK does (credentials chain, region,
    /// `AWS_ENDPOINT_URL` for a local emulator).
    pub async fn from_env() -> Self {
        let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
        Self::from_config(config)
    }

    pub fn from_config(config: SdkConfig) -> Self {
        // Virtual-hosted addressing needs DNS for `<bucket>.<host>`; an emulator on
        // 127.0.0.1 has none, so any custom endpoint gets path-style requests.
        let custom_endpoint =
            config.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let s3_config = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(custom_endpoint)
            .build();
        Self {
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            ssm: aws_sdk_ssm::Client::new(&config),
            sts: aws_sdk_sts::Client::new(&config),
            cloudwatch: aws_sdk_cloudwatch::Client::new(&config),
            config,
        }
    }
}
