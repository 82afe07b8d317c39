//! validate against real SDK calls on the local emulator, after a real restore.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::path::Path;

use aws_sdk_s3::primitives::ByteStream;
use chrono::Utc;
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::receipt::PhaseStatus;
use drpilot_shared::{ErrorKind, Phase};
use drpilot_testkit::{
    make_backup, phase_request, sh, test_profile, LocalAws, TempDir, BACKUP_BUCKET, BACKUP_PREFIX,
    PROFILE, TARGET_BUCKET,
};
use restore::Restore;
use serde_json::json;
use validate::Validate;

fn validator(aws: &LocalAws) -> Validate {
    Validate {
        clients: aws.clients.for_function("validate"),
        profiles: ProfileSource::Ssm(aws.clients.ssm.clone()),
    }
}

fn source(dir: &Path) {
    sh(&format!(
        "mkdir -p '{0}/a/b' '{0}/ü' && for i in $(seq 1 25); do echo \"item $i\" > '{0}/a/b/'$i.json; done && echo top > '{0}/top.txt' && : > '{0}/ü/empty'",
        dir.display()
    ));
}

/// Publishes backup `id` from `src` and restores it as `run_id`.
async fn restored(aws: &LocalAws, tmp: &TempDir, id: &str, run_id: &str) {
    let src = tmp.path().join("src");
    if !src.exists() {
        source(&src);
    }
    let out = tmp.path().join(id);
    if !out.exists() {
        make_backup(&src, &out, &[]);
    }
    aws.upload_dir(BACKUP_BUCKET, &format!("{BACKUP_PREFIX}{id}"), &out)
        .await;
    Restore {
        clients: aws.clients.for_function("restore"),
        profiles: ProfileSource::Ssm(aws.clients.ssm.clone()),
        tuning: Default::default(),
    }
    .handle(phase_request(run_id, id))
    .await
    .unwrap();
}

async fn put(aws: &LocalAws, key: &str, body: &str, tagging: Option<String>) {
    aws.s3()
        .put_object()
        .bucket(TARGET_BUCKET)
        .key(key)
        .set_tagging(tagging)
        .body(ByteStream::from(body.as_bytes().to_vec()))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_clean_restore_passes() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("validate-ok");
    restored(&aws, &tmp, "b1", "run-ok").await;
    let out = validator(&aws)
        .handle(phase_request("run-ok", "b1"))
        .await
        .unwrap();
    assert_eq!(out.status, PhaseStatus::Success);
    assert_eq!(out.details["tally"]["verified"], 27);
    assert_eq!(out.details["tally"]["expected_objects"], 27);
    assert_eq!(out.details["differences"], 0);
}

#[tokio::test]
async fn each_kind_of_damage_is_caught() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("validate-bad");
    restored(&aws, &tmp, "b1", "run-bad").await;
    let staged = "_staging/run-bad/";
    aws.s3()
        .delete_object()
        .bucket(TARGET_BUCKET)
        .key(format!("{staged}a/b/1.json"))
        .send()
        .await
        .unwrap();
    put(&aws, &format!("{staged}a/b/extra.json"), "surprise", None).await;
    put(&aws, &format!("{staged}a/b/2.json"), "item X\n", None).await; // a changed byte
    put(
        &aws,
        &format!("{staged}a/b/3.json"),
        "item 3 and more\n",
        None,
    )
    .await; // wrong size

    let err = validator(&aws)
        .handle(phase_request("run-bad", "b1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::IntegrityError);
    assert!(err.message.contains("4 differences"), "{err}");
    let receipt = aws
        .receipts()
        .get_phase("run-bad", Phase::Validate)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.status, PhaseStatus::Failed);
    let tally = &receipt.details["tally"];
    assert_eq!(
        (
            tally["missing"].as_u64(),
            tally["extra"].as_u64(),
            tally["size_mismatches"].as_u64(),
            tally["sha256_mismatches"].as_u64()
        ),
        (Some(1), Some(1), Some(1), Some(1))
    );
    let lines = aws
        .get_text(
            drpilot_testkit::EVIDENCE_BUCKET,
            "drpilot/receipts/runs/run-bad/validate/differences.jsonl",
        )
        .await
        .unwrap();
    let kinds: Vec<String> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(sorted, ["extra", "missing", "sha256", "size"]);
}

#[tokio::test]
async fn full_validation_catches_a_change_the_stored_hash_hides() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("validate-full");
    restored(&aws, &tmp, "b1", "run-full").await;
    // Same size, other content, but carrying the original's hash tag.
    let key = "_staging/run-full/a/b/4.json";
    let tag = aws
        .s3()
        .get_object_tagging()
        .bucket(TARGET_BUCKET)
        .key(key)
        .send()
        .await
        .unwrap()
        .tag_set()[0]
        .value()
        .to_owned();
    put(&aws, key, "item Z\n", Some(format!("drpilot-sha256={tag}"))).await;
    validator(&aws)
        .handle(phase_request("run-full", "b1"))
        .await
        .unwrap();

    let mut profile = test_profile();
    profile["full_validation"] = json!(true);
    aws.put_profile(PROFILE, &profile).await;
    let err = validator(&aws)
        .handle(phase_request("run-full", "b1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::IntegrityError);
    assert!(err.message.contains("a/b/4.json"), "{err}");
}

#[tokio::test]
async fn a_manifest_entry_with_a_bad_key_is_refused() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("validate-badkey");
    let src = tmp.path().join("src");
    source(&src);
    let out = tmp.path().join("b2");
    make_backup(&src, &out, &[]);
    // Replace the manifests with one naming ../escape, and re-hash it in the metadata.
    let d = tmp.path().display();
    sh(&format!(
        r#"cd '{d}' && mkdir m && printf '{{"objects": [{{"key": "../escape.json", "size": 1, "sha256": "%s"}}]}}' $(printf x | sha256sum | cut -d' ' -f1) > m/bad.json
        tar -C m -cf - bad.json | zstd -q -o b2/manifests.tar.zst -f
        old=$(python3 -c 'import json;m=json.load(open("b2/metadata.json"));a=m["artifacts"]["manifests.tar.zst"];print(a["sha256"], a["size"])')
        new_sha=$(sha256sum b2/manifests.tar.zst | cut -d' ' -f1); new_size=$(stat -c %s b2/manifests.tar.zst)
        set -- $old
        sed -i "s/$1/$new_sha/; s/\"size\": $2}}/\"size\": $new_size}}/" b2/metadata.json"#
    ));
    aws.upload_dir(BACKUP_BUCKET, &format!("{BACKUP_PREFIX}b2"), &out)
        .await;
    Restore {
        clients: aws.clients.for_function("restore"),
        profiles: ProfileSource::Ssm(aws.clients.ssm.clone()),
        tuning: Default::default(),
    }
    .handle(phase_request("run-badkey", "b2"))
    .await
    .unwrap();
    let err = validator(&aws)
        .handle(phase_request("run-badkey", "b2"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ContractError, "{err}");
    assert!(
        err.message.contains("bad key") && err.message.contains(".."),
        "{err}"
    );
}

#[tokio::test]
async fn it_refuses_a_run_without_a_successful_restore() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let err = validator(&aws)
        .handle(phase_request("never-restored", "b1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InputError);
    assert!(
        err.message
            .contains("restore has not succeeded (it never ran); run restore first"),
        "{err}"
    );
}

/// One `Payments/<name>` datapoint, `age_seconds` old.
async fn put_metric(aws: &LocalAws, name: &str, value: f64, age_seconds: i64) {
    aws.clients
        .cloudwatch
        .put_metric_data()
        .namespace("Payments")
        .metric_data(
            aws_sdk_cloudwatch::types::MetricDatum::builder()
                .metric_name(name)
                .value(value)
                .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
                    Utc::now().timestamp() - age_seconds,
                ))
                .build(),
        )
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn configured_metric_checks_pass_and_fail() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("validate-checks");
    restored(&aws, &tmp, "b1", "run-checks").await;
    for (name, value) in [("SyncFailed", 0.0), ("NoSync", 3.0)] {
        put_metric(&aws, name, value, 60).await;
    }
    let mut profile = test_profile();
    profile["checks"] = json!([
        {"type": "cloudwatch_metric", "name": "no sync failures", "namespace": "Payments", "metric_name": "SyncFailed", "missing_data_passes": false},
        {"type": "cloudwatch_metric", "name": "always syncing", "namespace": "Payments", "metric_name": "NoSync", "missing_data_passes": false},
        {"type": "cloudwatch_metric", "name": "quiet metric", "namespace": "Payments", "metric_name": "Absent", "missing_data_passes": true}
    ]);
    aws.put_profile(PROFILE, &profile).await;
    let err = validator(&aws)
        .handle(phase_request("run-checks", "b1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::IntegrityError);
    assert!(err.message.contains("always syncing"), "{err}");
    assert!(!err.message.contains("no sync failures"), "{err}");
    let receipt = aws
        .receipts()
        .get_phase("run-checks", Phase::Validate)
        .await
        .unwrap()
        .unwrap();
    let checks = receipt.details["checks"].as_array().unwrap();
    let passed: Vec<bool> = checks
        .iter()
        .map(|c| c["passed"].as_bool().unwrap())
        .collect();
    assert_eq!(passed, [true, false, true]);
    assert_eq!(checks[1]["value"], 3.0);
}

#[tokio::test]
async fn minimum_and_average_are_computed_as_themselves() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("validate-stats");
    restored(&aws, &tmp, "b1", "run-stats").await;
    // Three samples in the window: minimum 1, maximum 5, average 3.
    for (age, value) in [(240, 5.0), (180, 1.0), (120, 3.0)] {
        put_metric(&aws, "Lag", value, age).await;
    }
    let mut profile = test_profile();
    profile["checks"] = json!([
        {"type": "cloudwatch_metric", "name": "lag floor", "namespace": "Payments", "metric_name": "Lag",
         "stat": "Minimum", "comparison": "less_than_or_equal", "threshold": 1.0, "missing_data_passes": false},
        {"type": "cloudwatch_metric", "name": "lag mean", "namespace": "Payments", "metric_name": "Lag",
         "stat": "Average", "comparison": "equal", "threshold": 3.0, "missing_data_passes": false},
        {"type": "cloudwatch_metric", "name": "lag peak", "namespace": "Payments", "metric_name": "Lag",
         "stat": "Maximum", "comparison": "less_than_or_equal", "threshold": 4.0, "missing_data_passes": false}
    ]);
    aws.put_profile(PROFILE, &profile).await;
    let err = validator(&aws)
        .handle(phase_request("run-stats", "b1"))
        .await
        .unwrap_err();
    assert!(err.message.contains("lag peak"), "{err}");
    let receipt = aws
        .receipts()
        .get_phase("run-stats", Phase::Validate)
        .await
        .unwrap()
        .unwrap();
    let values: Vec<(bool, f64)> = receipt.details["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["passed"].as_bool().unwrap(), c["value"].as_f64().unwrap()))
        .collect();
    assert_eq!(values, [(true, 1.0), (true, 3.0), (false, 5.0)]);
}

/// A failure before the comparison (here the backup lost its manifests after restore)
/// still leaves a failed receipt naming the error, like every other way out.
#[tokio::test]
async fn an_early_failure_still_leaves_a_failed_receipt() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("validate-early");
    restored(&aws, &tmp, "b1", "run-early").await;
    aws.s3()
        .delete_object()
        .bucket(BACKUP_BUCKET)
        .key(format!("{BACKUP_PREFIX}b1/manifests.tar.zst"))
        .send()
        .await
        .unwrap();
    let err = validator(&aws)
        .handle(phase_request("run-early", "b1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ContractError, "{err}");
    let receipt = aws
        .receipts()
        .get_phase("run-early", Phase::Validate)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.status, PhaseStatus::Failed);
    assert_eq!(receipt.details["error"], "ContractError");
    assert!(receipt.reason.unwrap().contains("manifests.tar.zst"));
}

/// Staged objects in the paced-reads test: at 10 reads a second, 20 s of lookups.
const PACED_OBJECTS: usize = 200;

#[tokio::test]
async fn hash_lookups_keep_to_the_read_rate_s3_allows() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("validate-paced");
    let src = tmp.path().join("src");
    sh(&format!(
        "mkdir -p '{0}' && cd '{0}' && for i in $(seq 1 {PACED_OBJECTS}); do echo \"item $i\" > $i.txt; done",
        src.display()
    ));
    restored(&aws, &tmp, "paced", "run-paced").await;
    // S3 throttles a prefix's reads past what it serves: 10 a second here, against
    // validate's 32 lookups in flight. Unpaced, the SDK's three tries give up and the
    // phase fails; paced, every lookup gets through, slower.
    aws.limit_s3(json!({"read_per_second": 10}));
    let out = validator(&aws)
        .handle(phase_request("run-paced", "paced"))
        .await
        .unwrap();
    assert_eq!(out.status, PhaseStatus::Success, "{out:?}");
    assert_eq!(out.details["tally"]["verified"], PACED_OBJECTS);
    let throttled = aws.s3_throttled("read");
    assert!(
        throttled > 0,
        "S3 never throttled: {}",
        aws.s3_limit_stats()
    );
}

/// A validation cut off after its N-th write (its differences log, its receipt) and run
/// again — as the state machine's Retry does — leaves what an uncut one leaves.
#[tokio::test]
async fn a_validation_cut_after_its_nth_write_and_run_again_ends_as_an_uncut_one() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("validate-cut");
    // Each run's staging misses one object: the differences log has a line.
    let damaged = |run_id: &'static str| {
        let (aws, tmp) = (&aws, &tmp);
        async move {
            restored(aws, tmp, "b1", run_id).await;
            aws.s3()
                .delete_object()
                .bucket(TARGET_BUCKET)
                .key(format!("_staging/{run_id}/top.txt"))
                .send()
                .await
                .unwrap();
        }
    };
    damaged("run-whole").await;
    let err = validator(&aws)
        .handle(phase_request("run-whole", "b1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::IntegrityError, "{err}");
    let whole = aws.left_by("run-whole").await;
    assert!(
        whole
            .keys()
            .any(|k| k.ends_with("validate/differences.jsonl")),
        "{whole:?}"
    );
    for (run_id, n) in [("run-cut-a", 0), ("run-cut-b", 1)] {
        damaged(run_id).await;
        let mut cut = validator(&aws);
        cut.clients.s3 = drpilot_testkit::FailAfter::s3(&cut.clients.s3, "PutObject", n);
        let err = cut.handle(phase_request(run_id, "b1")).await.unwrap_err();
        assert!(
            err.to_string().contains("injected fault"),
            "after {n}: {err}"
        );
        let again = validator(&aws)
            .handle(phase_request(run_id, "b1"))
            .await
            .unwrap_err();
        assert_eq!(again.kind, ErrorKind::IntegrityError, "{again}");
        drpilot_testkit::assert_left_alike(
            &aws.left_by(run_id).await,
            &whole,
            &format!("cut after write {n}"),
        );
    }
}
