//! The evidence bucket as the template creates it (versioned, S3 Object Lock in
//! compliance mode with a default retention), in the emulator: a receipt written there is
//! retained, and its locked version can neither be deleted nor overwritten.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use chrono::{Duration, Utc};
use drpilot_shared::receipt::{PhaseClock, PhaseStatus};
use drpilot_shared::Phase;
use drpilot_testkit::{LocalAws, EVIDENCE_BUCKET, EVIDENCE_RETENTION_DAYS};
use serde_json::json;

#[tokio::test]
async fn a_locked_receipt_version_cannot_be_deleted_or_overwritten() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let store = aws.receipts();
    let receipt = PhaseClock::start("run-1", Phase::Validate, 1).finish(
        PhaseStatus::Success,
        None,
        json!({"objects_verified": 3}),
    );
    let uri = store.put_phase(&receipt).await.unwrap();
    assert_eq!(uri.bucket, EVIDENCE_BUCKET);
    let s3 = aws.s3();
    let head = s3
        .head_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .send()
        .await
        .unwrap();
    let version = head.version_id().expect("a versioned bucket").to_owned();
    // The bucket's default retention applied to the version the receipt store wrote.
    // (Read from HeadObject: the emulator's GetObjectRetention answers with the object.)
    assert_eq!(
        head.object_lock_mode().map(|m| m.as_str()),
        Some("COMPLIANCE")
    );
    let until = drpilot_shared::time::utc(head.object_lock_retain_until_date().unwrap()).unwrap();
    let expected = Utc::now() + Duration::days(i64::from(EVIDENCE_RETENTION_DAYS));
    assert!(
        (until - expected).num_minutes().abs() < 5,
        "retained until {until}, expected about {expected}"
    );

    // Deleting the version is refused (403 AccessDenied), governance bypass or not.
    for bypass in [false, true] {
        let err = s3
            .delete_object()
            .bucket(&uri.bucket)
            .key(&uri.key)
            .version_id(&version)
            .bypass_governance_retention(bypass)
            .send()
            .await
            .unwrap_err();
        let code = err
            .as_service_error()
            .and_then(|e| aws_sdk_s3::error::ProvideErrorMetadata::code(e).map(str::to_owned));
        assert_eq!(code.as_deref(), Some("AccessDenied"), "{err:?}");
    }
    // Writing the key again (a phase re-run) adds a version; the first stays as it was.
    let rerun = PhaseClock::start("run-1", Phase::Validate, 2).finish(
        PhaseStatus::Failed,
        Some("tampered".into()),
        json!({}),
    );
    store.put_phase(&rerun).await.unwrap();
    let versions = s3
        .list_object_versions()
        .bucket(&uri.bucket)
        .prefix(&uri.key)
        .send()
        .await
        .unwrap();
    assert_eq!(versions.versions().len(), 2);
    let original = s3
        .get_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .version_id(&version)
        .send()
        .await
        .unwrap();
    let body = original.body.collect().await.unwrap().into_bytes();
    let kept: drpilot_shared::receipt::PhaseReceipt = serde_json::from_slice(&body).unwrap();
    assert_eq!(kept, receipt);
    // A plain delete only hides the key behind a delete marker; the version remains.
    s3.delete_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .send()
        .await
        .unwrap();
    assert!(s3
        .get_object()
        .bucket(&uri.bucket)
        .key(&uri.key)
        .version_id(&version)
        .send()
        .await
        .is_ok());
}
