//! The restore pipeline alone: a local archive file through SHA-256 + zstd + tar into a
//! null sink, exactly the code restore runs minus S3. Driven by `bench/restore-pipeline.sh`,
//! which makes the archives and runs the peer tools on the same files.
//!
//! usage: pipeline ARCHIVE SHA256 SIZE
//! prints one JSON line: seconds, files, bytes, archive_bytes, MB/s, peak RSS.

use std::fs::File;
use std::io::BufReader;
use std::time::Instant;

use drpilot_shared::archive::{unpack, Artifact, Discard};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [path, sha256, size] = args.as_slice() else {
        eprintln!("usage: pipeline ARCHIVE SHA256 SIZE");
        std::process::exit(2);
    };
    let expected = Artifact {
        sha256: sha256.clone(),
        size: size.parse().expect("SIZE is a number"),
    };
    let file = File::open(path).expect("open archive");
    let started = Instant::now();
    let report = unpack(
        "state.tar.zst",
        BufReader::with_capacity(1 << 20, file),
        &expected,
        &mut Discard::default(),
    )
    .expect("the archive unpacks and verifies");
    let seconds = started.elapsed().as_secs_f64();
    let line = serde_json::json!({
        "seconds": seconds,
        "files": report.files,
        "bytes": report.bytes,
        "archive_bytes": report.archive_bytes,
        "archive_mb_per_s": report.archive_bytes as f64 / 1e6 / seconds,
        "data_mb_per_s": report.bytes as f64 / 1e6 / seconds,
        "peak_rss_kib": drpilot_testkit::peak_rss_kib(),
    });
    #[allow(clippy::print_stdout)] // the benchmark's output is its result
    {
        println!("{line}");
    }
}
