//! restore end to end against a real S3 API (the local server the bench script starts):
//! the backup's artifacts read from S3, verified and unpacked into staging with several
//! uploads in flight. The script stores the profile (`bench`) and the backup first.
//!
//! usage: to_s3 BACKUP_URI RUN_ID   (AWS_ENDPOINT_URL etc. from env)

use std::time::Instant;

use chrono::Utc;
use drpilot_shared::backup::BackupRef;
use drpilot_shared::input::Trigger;
use drpilot_shared::run::{PhaseRequest, RunContext};
use drpilot_shared::{AwsClients, RunInput, S3Uri};
use restore::Restore;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [backup, run_id] = args.as_slice() else {
        eprintln!("usage: to_s3 BACKUP_URI RUN_ID");
        std::process::exit(2);
    };
    let uri: S3Uri = backup.parse().expect("an s3:// URI");
    let mut input = RunInput::drill("bench");
    input.run_id = Some(run_id.clone());
    let request = PhaseRequest {
        run: RunContext {
            run_id: run_id.clone(),
            promotion: input.promotion(),
            input,
            trigger: Trigger::manual(),
            execution_arn: None,
            kickoff_at: Utc::now(),
            published_generation: 0,
            plan: None,
            backup: BackupRef {
                uri,
                backup_id: "bench".into(),
                created_at: Utc::now(),
                git_sha: None,
            },
        },
        retry_count: 0,
        range: None,
        reduce: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (seconds, out) = runtime.block_on(async {
        let restore = Restore::new(AwsClients::from_env().await);
        let started = Instant::now();
        let out = restore.handle(request).await.expect("restore");
        (started.elapsed().as_secs_f64(), out)
    });
    let line = serde_json::json!({
        "seconds": seconds,
        "objects": out.details["objects"],
        "bytes": out.details["bytes"],
    });
    #[allow(clippy::print_stdout)] // the benchmark's output is its result
    {
        println!("{line}");
    }
}
