//! AWS clients, built once per process (in `main`, before the runtime loop) and shared by
//! every invocation.

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_s3::config::SharedCredentialsProvider;

use crate::ledger::CallLedger;

/// A method building a client of another service on these clients' config, recorded in
/// the call ledger like the others.
macro_rules! recorded_client {
    ($(#[$doc:meta])* $name:ident, $sdk:ident) => {
        $(#[$doc])*
        pub fn $name(&self) -> $sdk::Client {
            let mut builder = $sdk::config::Builder::from(&self.config);
            if let Some(ledger) = &self.ledger {
                builder = builder.interceptor(ledger.clone());
            }
            $sdk::Client::from_conf(builder.build())
        }
    };
}

/// The clients the phases use. Cheap to clone: each is an `Arc` inside.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub s3: aws_sdk_s3::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub sts: aws_sdk_sts::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub config: SdkConfig,
    /// The call ledger these clients record to, when [`Self::for_function`] switched it on.
    ledger: Option<CallLedger>,
}

impl AwsClients {
    /// From the environment, as every AWS SDK does (credentials chain, region,
    /// `AWS_ENDPOINT_URL` for a local emulator).
    pub async fn from_env() -> Self {
        let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
        Self::from_config(config)
    }

    /// Inside a Lambda function: the region and the execution role's credentials, which
    /// the runtime puts in the environment (`AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), and `AWS_ENDPOINT_URL` when a local
    /// emulator stands in for AWS. The rest of the SDK's default chain (profile files,
    /// SSO, IMDS) never applies there; not calling it keeps it out of the binary, which
    /// is smaller and starts faster (`make bench`, footprint).
    pub fn from_lambda_env() -> Self {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut config = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .credentials_provider(SharedCredentialsProvider::new(
                aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
            ));
        if let Some(region) = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")) {
            config = config.region(aws_config::Region::new(region));
        }
        if let Some(endpoint) = env("AWS_ENDPOINT_URL") {
            config = config.endpoint_url(endpoint);
        }
        Self::from_config(config.build())
    }

    /// The SDK configuration for a local emulator at `endpoint`: its region and the dummy
    /// credentials it accepts (the local stack, the tests).
    pub async fn emulator_config(endpoint: &str, region: &str) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_config::Region::new(region.to_owned()))
            .test_credentials()
            .load()
            .await
    }

    pub fn from_config(config: SdkConfig) -> Self {
        Self::build(config, None)
    }

    /// The clients `function` (a phase binary) makes its calls with. When the call
    /// ledger is switched on (`DRPILOT_CALL_LEDGER`, see [`crate::ledger`]) every call
    /// they make is recorded under that name for the permission check; otherwise they
    /// are these clients.
    pub fn for_function(&self, function: &'static str) -> Self {
        match CallLedger::from_env(function) {
            Some(ledger) => Self::build(self.config.clone(), Some(ledger)),
            None => self.clone(),
        }
    }

    recorded_client!(
        /// An RDS client, recorded in the call ledger like the others. Built on demand:
        /// only the functions that restore or delete components need one.
        rds, aws_sdk_rds
    );
    recorded_client!(
        /// An AWS Backup client (components restore with it; teardown waits for a restore
        /// job to end with it).
        backup, aws_sdk_backup
    );
    recorded_client!(
        /// A KMS client: the approve function seals decisions with it, promote and failback
        /// verify them, readiness reads key rotation.
        kms, aws_sdk_kms
    );
    recorded_client!(
        /// A Step Functions client: the approve function answers task tokens with it,
        /// readiness watches running executions.
        sfn, aws_sdk_sfn
    );
    recorded_client!(
        /// A Lambda client: lambda components invoke verifiers with it; the CLI invokes
        /// the approve function on the local stack.
        lambda, aws_sdk_lambda
    );
    recorded_client!(
        /// An EventBridge Scheduler client: failback checks the drill schedule with it.
        scheduler, aws_sdk_scheduler
    );
    recorded_client!(
        /// An SNS client: readiness's RTO watch notifies with it.
        sns, aws_sdk_sns
    );

    /// An S3 client for a bucket in `region` (a failback's primary site), recorded like
    /// the others; these clients' own when `region` is theirs.
    pub fn s3_in(&self, region: &str) -> aws_sdk_s3::Client {
        if self.config.region().map(|r| r.as_ref()) == Some(region) {
            return self.s3.clone();
        }
        let mut builder = aws_sdk_s3::config::Builder::from(&self.config)
            .region(aws_config::Region::new(region.to_owned()))
            .force_path_style(custom_endpoint(&self.config));
        if let Some(ledger) = &self.ledger {
            builder = builder.interceptor(ledger.clone());
        }
        aws_sdk_s3::Client::from_conf(builder.build())
    }

    /// The call ledger, for a client of another service built on these clients' config.
    pub fn ledger(&self) -> Option<&CallLedger> {
        self.ledger.as_ref()
    }

    fn build(config: SdkConfig, ledger: Option<CallLedger>) -> Self {
        let s3 =
            aws_sdk_s3::config::Builder::from(&config).force_path_style(custom_endpoint(&config));
        let ssm = aws_sdk_ssm::config::Builder::from(&config);
        let sts = aws_sdk_sts::config::Builder::from(&config);
        let cloudwatch = aws_sdk_cloudwatch::config::Builder::from(&config);
        let (s3, ssm, sts, cloudwatch) = match ledger.clone() {
            Some(ledger) => (
                s3.interceptor(ledger.clone()),
                ssm.interceptor(ledger.clone()),
                sts.interceptor(ledger.clone()),
                cloudwatch.interceptor(ledger),
            ),
            None => (s3, ssm, sts, cloudwatch),
        };
        Self {
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            ssm: aws_sdk_ssm::Client::from_conf(ssm.build()),
            sts: aws_sdk_sts::Client::from_conf(sts.build()),
            cloudwatch: aws_sdk_cloudwatch::Client::from_conf(cloudwatch.build()),
            config,
            ledger,
        }
    }
}

/// Whether S3 requests go to a custom endpoint. Virtual-hosted addressing needs DNS for
/// `<bucket>.<host>`; an emulator on 127.0.0.1 has none, so any custom endpoint gets
/// path-style requests.
fn custom_endpoint(config: &SdkConfig) -> bool {
    config.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some()
}
