//! The write pace against a throttling S3 whose capacity grows under sustained load (the
//! local stack's rate model, which the bench script configures): PutObjects of small
//! objects under one prefix, 16 in flight, each through a [`RequestBudget`].
//!
//! usage: pace PREFIX_URI OBJECTS MODE START_RATE
//!   MODE `aimd`: the budget drpilot runs, climbing from START_RATE;
//!   MODE `fixed`: the same bucket held at START_RATE (halving on SlowDown, never climbing).
//! Prints one JSON line: seconds, objects, the SlowDowns the budget saw, its final rate.

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::primitives::ByteStream;
use drpilot_shared::budget::RequestBudget;
use drpilot_shared::{AwsClients, S3Uri};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Requests in flight, as restore's uploader keeps them.
const IN_FLIGHT: usize = 16;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [prefix, objects, mode, start] = args.as_slice() else {
        eprintln!("usage: pace PREFIX_URI OBJECTS aimd|fixed START_RATE");
        std::process::exit(2);
    };
    let prefix: S3Uri = prefix.parse().expect("an s3:// URI");
    let objects: u64 = objects.parse().expect("a number of objects");
    let start: f64 = start.parse().expect("a rate");
    let budget = match mode.as_str() {
        "aimd" => RequestBudget::new(start),
        "fixed" => RequestBudget::up_to(start, start),
        other => panic!("mode {other}: expected aimd or fixed"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let seconds = runtime.block_on(async {
        let s3 = AwsClients::from_env().await.s3;
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut puts = JoinSet::new();
        let started = Instant::now();
        for i in 0..objects {
            let slot = slots.clone().acquire_owned().await.expect("open");
            let (s3, budget) = (s3.clone(), budget.clone());
            let bucket = prefix.bucket.clone();
            let key = format!("{}{i:08}.json", prefix.as_prefix().key);
            puts.spawn(async move {
                let _slot = slot;
                budget
                    .send(|| {
                        s3.put_object()
                            .bucket(&bucket)
                            .key(&key)
                            .body(ByteStream::from(vec![b'x'; 100]))
                            .send()
                    })
                    .await
                    .expect("a PutObject within the budget's retries");
            });
        }
        while let Some(done) = puts.join_next().await {
            done.expect("a put task");
        }
        started.elapsed().as_secs_f64()
    });
    let line = serde_json::json!({
        "seconds": seconds,
        "objects": objects,
        "slow_downs": budget.slow_downs(),
        "final_rate": budget.rate(),
    });
    #[allow(clippy::print_stdout)] // the benchmark's output is its result
    {
        println!("{line}");
    }
}
