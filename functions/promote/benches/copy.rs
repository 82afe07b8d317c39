//! promote's server-side copy against a real S3 API (the local server the bench script
//! starts): one merge of the two listings, copies of everything missing or different.
//!
//! usage: copy FROM_URI TO_URI   (AWS_ENDPOINT_URL etc. from env)

use std::time::Instant;

use drpilot_shared::budget::{RequestBudget, PREFIX_PUT_RATE};
use drpilot_shared::s3uri::KeyRange;
use drpilot_shared::{AwsClients, S3Uri};
use promote::{sync_prefixes, CopyTuning, SyncSides};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [from, to] = args.as_slice() else {
        eprintln!("usage: copy FROM_URI TO_URI");
        std::process::exit(2);
    };
    let parse = |s: &str| s.parse::<S3Uri>().expect("an s3:// URI");
    let (from, to) = (parse(from), parse(to));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (seconds, stats) = runtime.block_on(async {
        let clients = AwsClients::from_env().await;
        let started = Instant::now();
        let sides = SyncSides {
            staging: &from,
            root: &to,
            range: &KeyRange::all(),
            prune: false,
            stop_at: None,
        };
        let pass = Box::pin(sync_prefixes(
            &clients.s3,
            sides,
            CopyTuning::default(),
            &RequestBudget::new(PREFIX_PUT_RATE),
            None,
        ))
        .await
        .expect("copy");
        (started.elapsed().as_secs_f64(), pass.stats)
    });
    let line =
        serde_json::json!({"seconds": seconds, "copied": stats.copied, "bytes": stats.bytes});
    #[allow(clippy::print_stdout)] // the benchmark's output is its result
    {
        println!("{line}");
    }
}
