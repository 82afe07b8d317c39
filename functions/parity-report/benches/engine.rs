//! The parity engine alone: two synthetic sorted listings of N keys (1 in 1000 differing,
//! 1 in 2000 on one side only) merged and judged, no S3. Prints keys/s and peak RSS; run
//! one size per process (`bench/parity.py` does) so each RSS figure is its own.
//!
//! usage: engine N

use std::time::Instant;

use drpilot_shared::listing::{ObjectInfo, Sorted};
use drpilot_shared::parity::{compare_streams, Verdict};
use tokio::sync::mpsc;

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let counts = runtime
        .block_on(async {
            let mut differences = 0u64;
            let counts = compare_streams(sorted(n, false), sorted(n, true), None, async |v| {
                if let Verdict::Differs(_) = v {
                    differences += 1;
                }
                Ok(())
            })
            .await;
            counts.map(|c| (c, differences))
        })
        .expect("the engine runs");
    let seconds = started.elapsed().as_secs_f64();
    let line = serde_json::json!({
        "keys": n,
        "seconds": seconds,
        "keys_per_second": (2 * n) as f64 / seconds,
        "delta": counts.0.delta,
        "differences_seen": counts.1,
        "peak_rss_kib": drpilot_testkit::peak_rss_kib(),
    });
    #[allow(clippy::print_stdout)] // the benchmark's output is its result
    {
        println!("{line}");
    }
}

/// A listing of `n` keys, in key order, produced on the fly as a lister task would.
fn sorted(n: u64, right: bool) -> Sorted<ObjectInfo> {
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(async move {
        for i in 0..n {
            if right && i % 2000 == 7 {
                continue;
            }
            let etag = if right && i % 1000 == 3 {
                "changed"
            } else {
                "d41d8cd98f00b204e9800998ecf8427e"
            };
            let info = ObjectInfo {
                key: format!("data/object-{i:010}.json"),
                size: 100 + i % 50,
                etag: etag.to_owned(),
                last_modified: None,
            };
            if tx.send(Ok(info)).await.is_err() {
                return;
            }
        }
    });
    rx
}
