//! parity-report against real S3 calls on the local emulator, and against `rclone check`
//! on the same prefixes.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::process::Command;

use drpilot_shared::parity::ParityCounts;
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::S3Uri;
use drpilot_testkit::{LocalAws, TempDir, TARGET_BUCKET};
use parity_report::{ParityReport, ParityReporter, ParityRequest};
use serde_json::{json, Value};

/// The function as deployed: its calls are recorded for the permission check.
fn reporter(aws: &LocalAws) -> ParityReporter {
    ParityReporter {
        clients: aws.clients.for_function("parity-report"),
        profiles: ProfileSource::Ssm(aws.clients.ssm.clone()),
    }
}

/// The comparison engine on arbitrary prefixes, outside any deployment: not recorded,
/// since no deployed role reads these test prefixes.
fn engine(aws: &LocalAws) -> ParityReporter {
    ParityReporter {
        clients: aws.clients.clone(),
        profiles: ProfileSource::Ssm(aws.clients.ssm.clone()),
    }
}

fn uri(key: &str) -> S3Uri {
    S3Uri::new(TARGET_BUCKET, key).unwrap()
}

async fn compare(aws: &LocalAws, left: &str, right: &str) -> ParityReport {
    engine(aws)
        .compare(&uri(left), &uri(right), Vec::new(), &uri("reports/test"))
        .await
        .unwrap()
}

/// What `rclone check` says about the same two prefixes, in our terms.
fn rclone_check(aws: &LocalAws, left: &str, right: &str) -> ParityCounts {
    let tmp = TempDir::new("rclone");
    let combined = tmp.path().join("combined.txt");
    let output = Command::new("rclone")
        .args(["check", "--combined"])
        .arg(&combined)
        .arg(format!("local:{TARGET_BUCKET}/{left}"))
        .arg(format!("local:{TARGET_BUCKET}/{right}"))
        .envs(aws.rclone_env())
        // rclone refuses a custom CA bundle on a plain-HTTP endpoint.
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .expect("rclone is installed (scripts/ensure-tools.sh)");
    // 0: identical, 1: differences found; anything else is rclone failing.
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "rclone check failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&combined).unwrap_or_default();
    let count = |mark: char| text.lines().filter(|l| l.starts_with(mark)).count() as u64;
    assert_eq!(
        count('!'),
        0,
        "rclone errors: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let differs = count('*');
    // `+`: only in the source (left); `-`: only in the destination (right).
    ParityCounts {
        identical: count('='),
        only_left: count('+'),
        only_right: count('-'),
        // rclone reports size and hash differences alike as '*'.
        size_differs: differs,
        checksum_differs: 0,
        delta: count('-') + count('+') + differs,
        ..Default::default()
    }
}

fn assert_agrees_with_rclone(ours: &ParityCounts, rclone: &ParityCounts) {
    assert_eq!(ours.identical, rclone.identical, "identical");
    assert_eq!(ours.only_left, rclone.only_left, "only left");
    assert_eq!(ours.only_right, rclone.only_right, "only right");
    assert_eq!(
        ours.size_differs + ours.checksum_differs,
        rclone.size_differs,
        "differing"
    );
    assert_eq!(ours.delta, rclone.delta, "delta");
}

#[tokio::test]
async fn identical_prefixes_have_delta_zero() {
    let aws = LocalAws::start().await;
    aws.create_bucket(TARGET_BUCKET).await;
    let files: Vec<(String, String)> = (0..30)
        .map(|i| (format!("x/{i:03}.json"), format!("{{\"i\": {i}}}")))
        .collect();
    for side in ["left", "right"] {
        aws.put_many(
            TARGET_BUCKET,
            files
                .iter()
                .map(|(k, b)| (format!("{side}/{k}"), b.clone()))
                .collect(),
        )
        .await;
    }
    let report = compare(&aws, "left", "right").await;
    assert_eq!(report.counts.delta, 0);
    assert_eq!(report.counts.identical, 30);
    assert_eq!(
        (report.counts.left_objects, report.counts.right_objects),
        (30, 30)
    );
    assert!(report.first_differences.is_empty());
    // The report and its (empty) differences file are in S3.
    assert_eq!(
        aws.get_text(TARGET_BUCKET, "reports/test/differences.jsonl")
            .await
            .as_deref(),
        Some("")
    );
    let stored: ParityReport = serde_json::from_str(
        &aws.get_text(TARGET_BUCKET, "reports/test/report.json")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stored.counts, report.counts);
}

#[tokio::test]
async fn each_kind_of_difference_is_counted_once() {
    let aws = LocalAws::start().await;
    aws.create_bucket(TARGET_BUCKET).await;
    aws.put_many(
        TARGET_BUCKET,
        vec![
            ("l/same.json".into(), "same".into()),
            ("r/same.json".into(), "same".into()),
            ("l/only-left.json".into(), "L".into()),
            ("r/only-right.json".into(), "R".into()),
            ("l/size.json".into(), "short".into()),
            ("r/size.json".into(), "much longer".into()),
            ("l/content.json".into(), "aaaa".into()),
            ("r/content.json".into(), "bbbb".into()),
        ],
    )
    .await;
    let report = compare(&aws, "l/", "r/").await;
    let c = &report.counts;
    assert_eq!(
        (
            c.identical,
            c.only_left,
            c.only_right,
            c.size_differs,
            c.checksum_differs,
            c.delta
        ),
        (1, 1, 1, 1, 1, 4)
    );
    let lines: Vec<Value> = aws
        .get_text(TARGET_BUCKET, "reports/test/differences.jsonl")
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["kind"].as_str().unwrap(), l["key"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("checksum", "content.json"),
            ("only_left", "only-left.json"),
            ("only_right", "only-right.json"),
            ("size", "size.json")
        ]
    );
    assert_agrees_with_rclone(c, &rclone_check(&aws, "l/", "r/"));
}

#[tokio::test]
async fn prefixes_sharing_a_key_prefix_do_not_bleed() {
    let aws = LocalAws::start().await;
    aws.create_bucket(TARGET_BUCKET).await;
    aws.put_many(
        TARGET_BUCKET,
        vec![
            ("root/a/x.json".into(), "1".into()),
            ("root/ab/x.json".into(), "1".into()),
            ("root/ab/y.json".into(), "2".into()),
            ("root/abc.json".into(), "3".into()),
        ],
    )
    .await;
    let report = compare(&aws, "root/a", "root/ab").await;
    let c = &report.counts;
    assert_eq!((c.left_objects, c.right_objects), (1, 2));
    assert_eq!((c.identical, c.only_right, c.delta), (1, 1, 1));
}

#[tokio::test]
async fn empty_prefixes_are_identical() {
    let aws = LocalAws::start().await;
    aws.create_bucket(TARGET_BUCKET).await;
    let report = compare(&aws, "nothing-here/", "nor-here/").await;
    assert_eq!(report.counts, ParityCounts::default());
}

#[tokio::test]
async fn paginated_listings_agree_with_rclone() {
    let aws = LocalAws::start().await;
    aws.create_bucket(TARGET_BUCKET).await;
    let mut objects = Vec::new();
    for i in 0..2600 {
        let key = format!("d{:02}/obj-{i:05}.json", i % 17);
        objects.push((format!("stage/{key}"), format!("v1 {i}")));
        let right = match i % 400 {
            0 => continue,                      // only left
            1 => format!("v2 {i}"),             // same size, other content
            2 => format!("longer content {i}"), // size differs
            _ => format!("v1 {i}"),
        };
        objects.push((format!("live/{key}"), right));
    }
    for i in 0..5 {
        objects.push((format!("live/zz-drift-{i}.json"), "drift".into()));
    }
    aws.put_many(TARGET_BUCKET, objects).await;
    let report = compare(&aws, "stage", "live").await;
    let c = &report.counts;
    assert_eq!(c.left_objects, 2600);
    assert_eq!(c.right_objects, 2600 - 7 + 5);
    assert_eq!(
        (
            c.only_left,
            c.only_right,
            c.checksum_differs,
            c.size_differs
        ),
        (7, 5, 7, 7)
    );
    assert_eq!(c.delta, 26);
    assert_eq!(
        report.first_differences.len(),
        20,
        "first differences inline, the rest in S3"
    );
    let lines = aws
        .get_text(TARGET_BUCKET, "reports/test/differences.jsonl")
        .await
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, 26);
    assert_agrees_with_rclone(c, &rclone_check(&aws, "stage", "live"));
}

#[tokio::test]
async fn a_standalone_request_writes_a_report_and_the_metric() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    aws.put_many(
        TARGET_BUCKET,
        vec![
            ("_staging/held/1".into(), "x".into()),
            ("root/1".into(), "y".into()),
        ],
    )
    .await;
    // A held staging against production: what the deployed role may read.
    let request = ParityRequest::from_json(json!({
        "profile": drpilot_testkit::PROFILE,
        "left": format!("s3://{TARGET_BUCKET}/_staging/held/"),
        "right": format!("s3://{TARGET_BUCKET}/root/"),
    }))
    .unwrap();
    let out = reporter(&aws).handle(request).await.unwrap();
    assert_eq!(out["counts"]["delta"], 1);
    let report_uri: S3Uri = out["report"].as_str().unwrap().parse().unwrap();
    assert!(
        report_uri.key.starts_with("drpilot/receipts/parity/"),
        "{report_uri}"
    );
    assert!(aws
        .get_text(&report_uri.bucket, &report_uri.key)
        .await
        .is_some());
    let metrics = aws
        .clients
        .cloudwatch
        .list_metrics()
        .namespace("DRPilot")
        .metric_name("ParityDelta")
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.metrics().len(), 1);

    let bad = ParityRequest::from_json(json!({"left": "s3://x/y"})).unwrap_err();
    assert_eq!(bad.kind, drpilot_shared::ErrorKind::InputError);
}

/// A run's parity report cut off after its N-th write (its differences log, its report,
/// its receipt) and run again — as the state machine's Retry does — leaves what an uncut
/// one leaves.
#[tokio::test]
async fn a_report_cut_after_its_nth_write_and_run_again_ends_as_an_uncut_one() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    aws.put_many(
        TARGET_BUCKET,
        vec![
            ("root/same".into(), "1".into()),
            ("root/changed".into(), "old".into()),
            ("root/only-in-root".into(), "x".into()),
        ],
    )
    .await;
    let staged = |run_id: &'static str| {
        let aws = &aws;
        async move {
            aws.put_many(
                TARGET_BUCKET,
                vec![
                    (format!("_staging/{run_id}/same"), "1".into()),
                    (format!("_staging/{run_id}/changed"), "new!".into()),
                    (format!("_staging/{run_id}/only-staged"), "y".into()),
                ],
            )
            .await;
            // The phases before it succeeded.
            for phase in [
                drpilot_shared::Phase::Restore,
                drpilot_shared::Phase::Validate,
            ] {
                let receipt = drpilot_shared::receipt::PhaseClock::start(run_id, phase, 1).finish(
                    drpilot_shared::receipt::PhaseStatus::Success,
                    None,
                    json!({}),
                );
                aws.receipts().put_phase(&receipt).await.unwrap();
            }
            ParityRequest::Run(Box::new(drpilot_testkit::phase_request(run_id, "b1")))
        }
    };
    let out = reporter(&aws)
        .handle(staged("run-whole").await)
        .await
        .unwrap();
    assert_eq!(out["status"], "success", "{out}");
    let whole = aws.left_by("run-whole").await;
    assert!(
        whole
            .keys()
            .any(|k| k.ends_with("parity/differences.jsonl")),
        "{whole:?}"
    );
    for (run_id, n) in [("run-cut-a", 0), ("run-cut-b", 1), ("run-cut-c", 2)] {
        let request = staged(run_id).await;
        let mut cut = reporter(&aws);
        cut.clients.s3 = drpilot_testkit::FailAfter::s3(&cut.clients.s3, "PutObject", n);
        let err = cut.handle(request).await.unwrap_err();
        assert!(
            err.to_string().contains("injected fault"),
            "after {n}: {err}"
        );
        reporter(&aws).handle(staged(run_id).await).await.unwrap();
        drpilot_testkit::assert_left_alike(
            &aws.left_by(run_id).await,
            &whole,
            &format!("cut after write {n}"),
        );
    }
}
