//! failback's data path against a real S3 API (the local server the bench script starts):
//! the divergence pass (the three-way comparison, writing nothing), the copy-back pass
//! (the comparison feeding the copy engine) and the recount, timed apart.
//!
//! usage: copy_back BACKUP_URI DR_ROOT PRIMARY_ROOT PROMOTED_AT   (AWS_ENDPOINT_URL etc. from env)

use std::time::Instant;

use chrono::{DateTime, Utc};
use drpilot_shared::copy::CopyTuning;
use drpilot_shared::{AwsClients, S3Uri};
use failback::copy_back::copy_changes;
use failback::merge::{survey, Sides};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [backup, dr_root, primary_root, promoted_at] = args.as_slice() else {
        eprintln!("usage: copy_back BACKUP_URI DR_ROOT PRIMARY_ROOT PROMOTED_AT");
        std::process::exit(2);
    };
    let parse = |s: &str| s.parse::<S3Uri>().expect("an s3:// URI");
    let (backup, dr_root, primary_root) = (parse(backup), parse(dr_root), parse(primary_root));
    let promoted_at: DateTime<Utc> = promoted_at.parse().expect("an RFC 3339 time");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let line = runtime.block_on(async {
        let clients = AwsClients::from_env().await;
        let (meta, _) = drpilot_shared::backup::inspect(&clients.s3, &backup)
            .await
            .expect("the backup");
        let sides = Sides {
            dr_s3: &clients.s3,
            primary_s3: &clients.s3,
            backup: &backup,
            dr_root: &dr_root,
            primary_root: &primary_root,
            baseline_taken_at: meta.created_at,
            promoted_at,
        };
        let started = Instant::now();
        let counts = survey(&sides, false, async |_| Ok(()))
            .await
            .expect("divergence");
        let divergence = started.elapsed().as_secs_f64();
        let copying = Instant::now();
        let copied = Box::pin(copy_changes(
            &sides,
            None,
            &clients.s3,
            CopyTuning::default(),
            None,
        ))
        .await
        .expect("copy-back");
        let copy = copying.elapsed().as_secs_f64();
        let recounting = Instant::now();
        let remaining = survey(&sides, false, async |_| Ok(()))
            .await
            .expect("recount");
        let recount = recounting.elapsed().as_secs_f64();
        serde_json::json!({
            "seconds": started.elapsed().as_secs_f64(),
            "divergence_seconds": divergence, "copy_seconds": copy, "recount_seconds": recount,
            "dr_changed": counts.dr_changed, "copied": copied.stats.copied,
            "remaining_dr_changed": remaining.dr_changed,
            "peak_rss_kib": drpilot_testkit::peak_rss_kib(),
        })
    });
    #[allow(clippy::print_stdout)] // the benchmark's output is its result
    {
        println!("{line}");
    }
}
