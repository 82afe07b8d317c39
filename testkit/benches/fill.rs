//! Fills a bucket for the benchmarks: one PutObject per line `KEY<TAB>BODY` read from
//! stdin, 64 in flight. The bench scripts' own Python client puts ~800 objects/s, which
//! made a million-object fill take longer than the runs it prepares.
//!
//! usage: fill BUCKET < lines   (AWS_ENDPOINT_URL etc. from env; prints the count)

use std::io::BufRead;

use drpilot_shared::AwsClients;
use futures::{stream, StreamExt, TryStreamExt};

const IN_FLIGHT: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [bucket] = args.as_slice() else {
        eprintln!("usage: fill BUCKET < KEY<TAB>BODY lines");
        std::process::exit(2);
    };
    let lines = std::io::stdin().lock().lines().map(|line| {
        let line = line.expect("stdin");
        let (key, body) = line.split_once('\t').expect("KEY<TAB>BODY");
        (key.to_owned(), body.to_owned())
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let count = runtime.block_on(async {
        let s3 = AwsClients::from_env().await.s3;
        stream::iter(lines)
            .map(|(key, body)| {
                let s3 = s3.clone();
                async move {
                    s3.put_object()
                        .bucket(bucket)
                        .key(key)
                        .body(body.into_bytes().into())
                        .send()
                        .await
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_fold(0u64, |n, _| async move { Ok(n + 1) })
            .await
            .expect("PutObject")
    });
    #[allow(clippy::print_stdout)] // the count is the program's output
    {
        println!("{count}");
    }
}
