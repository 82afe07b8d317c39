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

/// Every key of a listing stream, in the order it came.
async fn drain(mut rx: Sorted<ObjectInfo>) -> Vec<String> {
    let mut keys = Vec::new();
    while let Some(item) = rx.recv().await {
        keys.push(item.unwrap().key);
    }
    keys
}

/// The partitioned, parallel listing yields exactly what one flat listing would, in the
/// same order, for any layout and key range: objects beside directories (`a.txt` sorts
/// before `a/`), a lone directory it descends through, deep and empty-named parts, and
/// ranges whose bounds fall inside a partition.
#[tokio::test]
async fn the_parallel_listing_is_the_flat_listing_in_order() {
    use drpilot_shared::listing::list_sorted_in;
    use drpilot_shared::s3uri::KeyRange;
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let mut keys: Vec<String> = Vec::new();
    for dir in ["a", "a-b", "b/c", "only/one/level", "z"] {
        for i in 0..12 {
            keys.push(format!("{dir}/{i:02}.json"));
        }
    }
    keys.extend(["a.txt", "top", "b/c.txt", "é/x", "_control-plane/skip"].map(str::to_owned));
    aws.put_many(
        TARGET_BUCKET,
        keys.iter()
            .map(|k| (format!("list/{k}"), "x".to_owned()))
            .collect(),
    )
    .await;
    // Something beside the prefix that must never appear.
    aws.put_text(TARGET_BUCKET, "listing/elsewhere", "x").await;
    let mut sorted: Vec<String> = keys
        .iter()
        .filter(|k| !k.starts_with("_control-plane/"))
        .cloned()
        .collect();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let prefix = S3Uri::new(TARGET_BUCKET, "list").unwrap();
    let range = |after: Option<&str>, through: Option<&str>| KeyRange {
        after: after.map(str::to_owned),
        through: through.map(str::to_owned),
    };
    for range in [
        KeyRange::all(),
        range(Some("a-b/05.json"), Some("b/c/03.json")),
        range(None, Some("a.txt")),
        range(Some("only/one/level/11.json"), None),
        range(Some("zz"), None),
    ] {
        let (rx, _task) = list_sorted_in(
            aws.s3().clone(),
            &prefix,
            vec!["_control-plane/".to_owned()],
            range.clone(),
        );
        let expected: Vec<String> = sorted
            .iter()
            .filter(|k| range.contains(k))
            .cloned()
            .collect();
        assert_eq!(drain(rx).await, expected, "{range}");
    }
    // A prefix that is one directory deep all the way down.
    let deep = S3Uri::new(TARGET_BUCKET, "list/only").unwrap();
    let (rx, _task) = list_sorted_in(aws.s3().clone(), &deep, Vec::new(), KeyRange::all());
    let expected: Vec<String> = (0..12).map(|i| format!("one/level/{i:02}.json")).collect();
    assert_eq!(drain(rx).await, expected);
}
