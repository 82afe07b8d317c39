//! restore end to end against a real S3 API (the local server the bench script starts):
//! the backup's artifacts read from S3, verified and unpacked into staging with several
//! uploads in flight. The script stores the profile (`bench`) and the backup first.
//!
//! With `--fan-out` (a sharded backup), the run gets its plan and restore runs as the
//! state machine's Distributed Map would run it, in this one process: the preparation,
//! then one child per shard concurrently, then the reducer; each step is timed.
//!
//! usage: to_s3 [--fan-out] BACKUP_URI RUN_ID   (AWS_ENDPOINT_URL etc. from env)

use std::time::Instant;

use chrono::Utc;
use drpilot_shared::backup::BackupRef;
use drpilot_shared::input::Trigger;
use drpilot_shared::plan::{self, Reduce};
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::run::{PhaseRequest, RunContext, StepOutput};
use drpilot_shared::{AwsClients, RunInput, S3Uri};
use restore::Restore;

fn main() {
    let mut args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let fan_out = args.first().is_some_and(|a| a == "--fan-out");
    if fan_out {
        args.remove(0);
    }
    let [backup, run_id] = args.as_slice() else {
        eprintln!("usage: to_s3 [--fan-out] BACKUP_URI RUN_ID");
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
        continuation: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let line = runtime.block_on(async {
        let clients = AwsClients::from_env().await;
        let restore = Restore::new(clients.clone());
        if !fan_out {
            let started = Instant::now();
            let out = restore.handle(request).await.expect("restore");
            return serde_json::json!({
                "seconds": started.elapsed().as_secs_f64(),
                "objects": out.details["objects"],
                "bytes": out.details["bytes"],
            });
        }
        fanned_out(&restore, &clients, request).await
    });
    #[allow(clippy::print_stdout)] // the benchmark's output is its result
    {
        println!("{line}");
    }
}

/// Restore as the Distributed Map runs it: the plan written, the preparation, every
/// shard's child at once, the reducer; the time of each.
async fn fanned_out(
    restore: &Restore,
    clients: &AwsClients,
    mut request: PhaseRequest,
) -> serde_json::Value {
    let s3 = &clients.s3;
    let profile = ProfileSource::from_env(clients.ssm.clone())
        .load("bench")
        .await
        .expect("the bench profile");
    let store = request.run.receipts(s3, &profile);
    let (_, meta) = drpilot_shared::backup::inspect(s3, &request.run.backup.uri)
        .await
        .expect("the backup");
    let started = Instant::now();
    request.run.plan = Some(
        plan::write(&store, &request.run.run_id, &meta, 1)
            .await
            .expect("the plan"),
    );
    let prepared = restore.handle(request.clone()).await.expect("prepare");
    let fan = prepared.fan_out.expect("a plan of several ranges fans out");
    let prepare_seconds = started.elapsed().as_secs_f64();
    let children = plan::items(&meta, 1).into_iter().map(|item| {
        let mut child = request.clone();
        child.range = Some(item);
        async move {
            let began = Instant::now();
            let out = restore.serve_step(child).await.expect("a child");
            assert!(matches!(out, StepOutput::Range(_)));
            began.elapsed().as_secs_f64()
        }
    });
    let children_started = Instant::now();
    let child_seconds = futures::future::join_all(children).await;
    let children_seconds = children_started.elapsed().as_secs_f64();
    let reduce_started = Instant::now();
    let mut reducer = request.clone();
    reducer.reduce = Some(Reduce {
        started_at: fan.started_at,
        map_error: None,
    });
    let out = restore.handle(reducer).await.expect("reduce");
    serde_json::json!({
        "seconds": started.elapsed().as_secs_f64(),
        "prepare_seconds": prepare_seconds,
        "children_seconds": children_seconds,
        "child_seconds": child_seconds,
        "reduce_seconds": reduce_started.elapsed().as_secs_f64(),
        "objects": out.details["objects"],
        "bytes": out.details["bytes"],
    })
}
