//! The parity engine's content judgement against real SDK calls on the local emulator.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use drpilot_shared::listing::{ObjectInfo, Sorted};
use drpilot_shared::objects::SHA256_TAG;
use drpilot_shared::parity::{compare_streams, ChecksumLookup, Verdict};
use drpilot_shared::S3Uri;
use drpilot_testkit::{LocalAws, TARGET_BUCKET};

fn listed(objects: &[(&str, &str)]) -> Sorted<ObjectInfo> {
    let (tx, rx) = tokio::sync::mpsc::channel(objects.len().max(1));
    for (key, etag) in objects {
        tx.try_send(Ok(ObjectInfo {
            key: (*key).to_owned(),
            size: 5,
            etag: (*etag).to_owned(),
            last_modified: None,
        }))
        .unwrap();
    }
    rx
}

async fn put(aws: &LocalAws, key: &str, sha256: Option<&str>) {
    let mut request = aws
        .s3()
        .put_object()
        .bucket(TARGET_BUCKET)
        .key(key)
        .body(b"hello".to_vec().into());
    if let Some(sha) = sha256 {
        request = request.tagging(format!("{SHA256_TAG}={sha}"));
    }
    request.send().await.unwrap();
}

/// Under SSE-KMS an ETag is not the MD5 of the content: identical objects list with
/// different (and dash-free) ETags. The stored SHA-256 must decide, not the ETags.
#[tokio::test]
async fn different_etags_without_a_dash_do_not_prove_a_difference() {
    let aws = LocalAws::start().await;
    aws.create_bucket(TARGET_BUCKET).await;
    let same = "a".repeat(64);
    put(&aws, "left/same", Some(&same)).await;
    put(&aws, "right/same", Some(&same)).await;
    put(&aws, "left/changed", Some(&same)).await;
    put(&aws, "right/changed", Some(&"b".repeat(64))).await;
    put(&aws, "left/unknown", Some(&same)).await;
    put(&aws, "right/unknown", None).await;
    let left_uri = S3Uri::new(TARGET_BUCKET, "left/").unwrap();
    let right_uri = S3Uri::new(TARGET_BUCKET, "right/").unwrap();
    let lookup = ChecksumLookup {
        s3: aws.s3(),
        left: &left_uri,
        right: &right_uri,
    };
    // ETags as SSE-KMS lists them: 32 hex digits each, unrelated to the content.
    let left = listed(&[
        ("changed", "0f343b0931126a20f133d67c2b018a3b"),
        ("same", "7c9a1b0d6a1b4f5e8d2c3b4a59687766"),
        ("unknown", "1a2b3c4d5e6f708192a3b4c5d6e7f809"),
    ]);
    let right = listed(&[
        ("changed", "aa343b0931126a20f133d67c2b018a3b"),
        ("same", "e1f2a3b4c5d6e7f8091a2b3c4d5e6f70"),
        ("unknown", "99887766554433221100ffeeddccbbaa"),
    ]);
    let mut identical = Vec::new();
    let counts = compare_streams(left, right, Some(&lookup), async |verdict| {
        if let Verdict::Identical(object) = verdict {
            identical.push(object.key);
        }
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(identical, ["same"]);
    assert_eq!(counts.identical, 1);
    // A different stored hash is a difference; so is a side with no stored hash.
    assert_eq!(counts.checksum_differs, 2);
    assert_eq!(counts.delta, 2);
}
