//! Profiles from SSM Parameter Store (real calls on the local emulator) and from files.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use drpilot_shared::profile::{Check, ProfileSource};
use drpilot_shared::ErrorKind;
use drpilot_testkit::LocalAws;
use serde_json::{json, Value};

fn good_profile() -> Value {
    json!({
        "target": {"bucket": "prod-data"},
        "backups": "s3://prod-backups/payments/backups/",
        "receipts": "s3://prod-data/drpilot/receipts/",
        "account_id": "123456789012",
        "region": "us-east-1",
        "rto_target_seconds": 3600,
        "rpo_target_seconds": 86400,
        "checks": [{"type": "cloudwatch_metric", "name": "no sync failures",
                    "namespace": "Payments", "metric_name": "SyncFailed",
                    "missing_data_passes": false}]
    })
}

async fn put_parameter(aws: &LocalAws, name: &str, value: &str) {
    aws.clients
        .ssm
        .put_parameter()
        .name(format!("/drpilot/profiles/{name}"))
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .expect("PutParameter");
}

#[tokio::test]
async fn loads_from_ssm_with_defaults() {
    let aws = LocalAws::start().await;
    put_parameter(&aws, "payments", &good_profile().to_string()).await;
    let profile = ProfileSource::Ssm(aws.clients.ssm.clone())
        .load("payments")
        .await
        .unwrap();
    assert_eq!(profile.target.root().to_string(), "s3://prod-data/root/");
    assert_eq!(
        profile.target.staging("run-1").unwrap().to_string(),
        "s3://prod-data/_staging/run-1/"
    );
    assert_eq!(
        profile.target.lock().to_string(),
        "s3://prod-data/locks/drill.lock"
    );
    assert_eq!(profile.target.audit().to_string(), "s3://prod-data/audit/");
    let Check::CloudwatchMetric {
        stat,
        window_seconds,
        ..
    } = &profile.checks[0];
    assert_eq!((stat.as_str(), *window_seconds), ("Sum", 3600));
}

#[tokio::test]
async fn missing_parameter_is_a_clear_error() {
    let aws = LocalAws::start().await;
    let err = ProfileSource::Ssm(aws.clients.ssm.clone())
        .load("nope")
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InputError);
    assert!(
        err.message.contains("/drpilot/profiles/nope") && err.message.contains("not found"),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_json_is_a_clear_error() {
    let aws = LocalAws::start().await;
    put_parameter(&aws, "broken", "{\"target\": {\"bucket\": ").await;
    let err = ProfileSource::Ssm(aws.clients.ssm.clone())
        .load("broken")
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InputError);
    assert!(
        err.message.contains("not valid JSON") && err.message.contains("broken"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_and_bad_fields_are_named() {
    let aws = LocalAws::start().await;
    let source = ProfileSource::Ssm(aws.clients.ssm.clone());
    let cases: Vec<(Value, &str)> = vec![
        (
            {
                let mut p = good_profile();
                p.as_object_mut().unwrap().remove("receipts");
                p
            },
            "receipts",
        ),
        (
            {
                let mut p = good_profile();
                p["target"].as_object_mut().unwrap().remove("bucket");
                p
            },
            "bucket",
        ),
        (
            {
                let mut p = good_profile();
                p["account_id"] = json!("12345");
                p
            },
            "account_id",
        ),
        (
            {
                let mut p = good_profile();
                p["backups"] = json!("/local/path");
                p
            },
            "backups",
        ),
        (
            {
                let mut p = good_profile();
                p["rto_target_seconds"] = json!("1h");
                p
            },
            "rto_target_seconds",
        ),
        (
            {
                let mut p = good_profile();
                p["surprise"] = json!(1);
                p
            },
            "surprise",
        ),
        (
            {
                let mut p = good_profile();
                p["target"]["root_prefix"] = json!("../x");
                p
            },
            "root_prefix",
        ),
        (
            {
                let mut p = good_profile();
                p["target"]["staging_prefix"] = json!("root/");
                p
            },
            "staging_prefix",
        ),
        (
            {
                let mut p = good_profile();
                p["checks"][0]["type"] = json!("ssm_automation");
                p
            },
            "checks",
        ),
        (
            {
                let mut p = good_profile();
                p["checks"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("missing_data_passes");
                p
            },
            "missing_data_passes",
        ),
        (
            {
                let mut p = good_profile();
                p["checks"][0]["window_seconds"] = json!(90);
                p
            },
            "window_seconds",
        ),
        (
            {
                let mut p = good_profile();
                p["checks"][0]["stat"] = json!("p99");
                p
            },
            "p99",
        ),
    ];
    for (i, (doc, field)) in cases.into_iter().enumerate() {
        let name = format!("case{i}");
        put_parameter(&aws, &name, &doc.to_string()).await;
        let err = source.load(&name).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::InputError, "{field}: {err}");
        assert!(err.message.contains(field), "{field}: {err}");
    }
}

#[tokio::test]
async fn loads_from_a_profile_directory() {
    let tmp = drpilot_testkit::TempDir::new("profiles");
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("local.json"), good_profile().to_string()).unwrap();
    let source = ProfileSource::Dir(dir.clone());
    assert_eq!(source.load("local").await.unwrap().region, "us-east-1");
    let err = source.load("absent").await.unwrap_err();
    assert!(
        err.message.contains("absent") && err.message.contains("not found"),
        "{err}"
    );
    let err = source.load("../escape").await.unwrap_err();
    assert!(err.message.starts_with("profile:"), "{err}");
}

#[tokio::test]
async fn every_stored_profile_loads_in_one_listing() {
    let aws = LocalAws::start().await;
    let source = ProfileSource::Ssm(aws.clients.ssm.clone());
    assert!(source.load_all().await.unwrap().is_empty());
    put_parameter(&aws, "payments", &good_profile().to_string()).await;
    put_parameter(&aws, "billing", &good_profile().to_string()).await;
    let all = source.load_all().await.unwrap();
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["billing", "payments"]);
    assert_eq!(all[1].1, source.load("payments").await.unwrap());
    put_parameter(&aws, "broken", "{\"target\": ").await;
    let err = source.load_all().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InputError);
    assert!(err.message.contains("broken"), "{err}");
}
