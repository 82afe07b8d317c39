//! parity-report's comparison end to end against a real S3 API (the local server the
//! bench script starts): both listings, the merge, the report written to S3.
//!
//! usage: compare LEFT_URI RIGHT_URI REPORT_PREFIX_URI   (AWS_ENDPOINT_URL etc. from env)

use std::time::Instant;

use drpilot_shared::profile::ProfileSource;
use drpilot_shared::{AwsClients, S3Uri};
use parity_report::ParityReporter;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [left, right, report] = args.as_slice() else {
        eprintln!("usage: compare LEFT_URI RIGHT_URI REPORT_PREFIX_URI");
        std::process::exit(2);
    };
    let parse = |s: &str| s.parse::<S3Uri>().expect("an s3:// URI");
    let (left, right, report) = (parse(left), parse(right), parse(report));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        let clients = AwsClients::from_env().await;
        let reporter = ParityReporter {
            profiles: ProfileSource::Ssm(clients.ssm.clone()),
            clients,
        };
        let started = Instant::now();
        let report = reporter
            .compare(&left, &right, Vec::new(), &report)
            .await
            .expect("compare");
        (started.elapsed().as_secs_f64(), report)
    });
    let (seconds, report) = result;
    let line = serde_json::json!({
        "seconds": seconds,
        "counts": report.counts,
        "peak_rss_kib": drpilot_testkit::peak_rss_kib(),
    });
    #[allow(clippy::print_stdout)] // the benchmark's output is its result
    {
        println!("{line}");
    }
}
