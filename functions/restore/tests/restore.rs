//! restore against real S3 calls on the local emulator, with backups made by
//! `scripts/make-backup.sh` (tar, zstd, sha256sum) and adversarial ones made by hand.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::receipt::PhaseStatus;
use drpilot_shared::{ErrorKind, Phase, S3Uri};
use drpilot_testkit::{
    make_backup, phase_request, sh, test_profile, LocalAws, TempDir, BACKUP_BUCKET, BACKUP_PREFIX,
    TARGET_BUCKET,
};
use restore::staging::Tuning;
use restore::Restore;
use sha2::{Digest, Sha256};

/// 5 MiB parts (S3's minimum) so a 12 MiB file goes multipart.
const TUNING: Tuning = Tuning {
    part_size: 5 << 20,
    concurrency: 4,
};

fn restorer(aws: &LocalAws) -> Restore {
    Restore {
        clients: aws.clients.for_function("restore"),
        profiles: ProfileSource::Ssm(aws.clients.ssm.clone()),
        tuning: TUNING,
    }
}

/// The source tree most tests restore: nested paths, unicode names, an empty file, and
/// (when `large`) a 12 MiB file above the multipart threshold.
fn source_tree(dir: &Path, large: bool) {
    let d = dir.display();
    sh(&format!(
        r#"mkdir -p '{d}/a/b/c' '{d}/données' '{d}/empty-dir'
        echo '{{"n": 1}}' > '{d}/a/b/c/deep.json'
        echo 'top' > '{d}/top.txt'
        printf 'é☃' > '{d}/données/naïve ☃ file.json'
        : > '{d}/a/empty.json'
        for i in $(seq 1 40); do echo "object $i" > '{d}/a/b/obj-'$i'.json'; done"#
    ));
    if large {
        sh(&format!(
            "head -c 12582917 /dev/urandom > '{d}/a/large.bin'"
        ));
    }
}

/// Every file under `dir` as (relative key, sha256 hex), sorted.
fn expected_files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let sum = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
                out.push((rel, sum));
            }
        }
    }
    out.sort();
    out
}

async fn publish(aws: &LocalAws, backup_dir: &Path, backup_id: &str) {
    aws.upload_dir(
        BACKUP_BUCKET,
        &format!("{BACKUP_PREFIX}{backup_id}"),
        backup_dir,
    )
    .await;
}

async fn staged(aws: &LocalAws, run_id: &str) -> Vec<String> {
    let prefix = format!("_staging/{run_id}/");
    aws.keys(TARGET_BUCKET, &prefix)
        .await
        .into_iter()
        .map(|k| k[prefix.len()..].to_owned())
        .collect()
}

/// The request of run `run_id`'s child for range `index` of `items`, a plan of backup
/// `backup_id` stored where bringup would store it.
fn range_child(
    run_id: &str,
    backup_id: &str,
    items: &[drpilot_shared::plan::PlanItem],
    index: usize,
) -> drpilot_shared::run::PhaseRequest {
    let mut request = phase_request(run_id, backup_id);
    request.run.plan = Some(drpilot_shared::plan::PlanRef {
        bucket: drpilot_testkit::EVIDENCE_BUCKET.into(),
        key: format!("drpilot/receipts/runs/{run_id}/plan.json"),
        ranges: items.len() as u32,
    });
    request.range = Some(items[index].clone());
    request
}

async fn stored_sha256(aws: &LocalAws, key: &str) -> String {
    let uri = S3Uri::new(TARGET_BUCKET, key).unwrap();
    drpilot_shared::objects::stored_sha256(aws.s3(), &uri)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{key}: no sha256 stored"))
}

#[tokio::test]
async fn a_backup_made_by_ordinary_tools_restores_exactly() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("restore-ok");
    let src = tmp.path().join("src");
    source_tree(&src, true);
    make_backup(&src, &tmp.path().join("b1"), &[]);
    publish(&aws, &tmp.path().join("b1"), "b1").await;

    let out = restorer(&aws)
        .handle(phase_request("run-ok", "b1"))
        .await
        .unwrap();
    assert_eq!(out.status, PhaseStatus::Success);
    let expected = expected_files(&src);
    assert_eq!(out.details["objects"], expected.len() as u64);
    let keys: Vec<String> = expected.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(staged(&aws, "run-ok").await, keys);
    for (key, sum) in &expected {
        let full = format!("_staging/run-ok/{key}");
        assert_eq!(&stored_sha256(&aws, &full).await, sum, "{key}");
    }
    // Single-part objects carry the hash as their S3 checksum too, which S3 verified on upload.
    let head = aws
        .s3()
        .head_object()
        .bucket(TARGET_BUCKET)
        .key("_staging/run-ok/top.txt")
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    let top_sum = &expected.iter().find(|(k, _)| k == "top.txt").unwrap().1;
    assert_eq!(
        head.checksum_sha256(),
        Some(restore::staging::base64_sha256(&hex::decode(top_sum).unwrap()).as_str())
    );
    // The large file's bytes survived multipart intact.
    let body = aws
        .s3()
        .get_object()
        .bucket(TARGET_BUCKET)
        .key("_staging/run-ok/a/large.bin")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(
        body.as_ref(),
        std::fs::read(src.join("a/large.bin")).unwrap()
    );

    let receipt = aws
        .receipts()
        .get_phase("run-ok", Phase::Restore)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.status, PhaseStatus::Success);
    assert!(receipt.details["backup_created_at"].is_string());
    assert!(receipt.details["bytes"].as_u64().unwrap() > 12 << 20);
}

/// An adversarial backup: how to make it, and the error it must fail with.
struct Bad {
    name: &'static str,
    kind: ErrorKind,
    says: &'static str,
    make: fn(src: &Path, out: &Path),
}

fn crafted_tar(src: &Path, out: &Path, tar_script: &str) {
    let tar_path = out.with_extension("tar");
    sh(&format!(
        "cd '{}' && {{ {tar_script}; }} > '{}'",
        src.display(),
        tar_path.display()
    ));
    make_backup(src, out, &["--state-tar", tar_path.to_str().unwrap()]);
}

fn edit_metadata(out: &Path, from: &str, to: &str) {
    let path = out.join("metadata.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "metadata has no {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

fn artifact_sha(out: &Path, name: &str) -> String {
    hex::encode(Sha256::digest(std::fs::read(out.join(name)).unwrap()))
}

const BAD: &[Bad] = &[
    Bad {
        name: "symlink",
        kind: ErrorKind::ContractError,
        says: "symlink",
        make: |src, out| {
            crafted_tar(
                src,
                out,
                "ln -s top.txt link.txt && tar --format=pax -cf - top.txt link.txt",
            )
        },
    },
    Bad {
        name: "hard link",
        kind: ErrorKind::ContractError,
        says: "hard link",
        make: |src, out| {
            crafted_tar(
                src,
                out,
                "ln top.txt hard.txt && tar --format=pax -cf - top.txt hard.txt",
            )
        },
    },
    Bad {
        name: "dot-dot",
        kind: ErrorKind::ContractError,
        says: "..",
        make: |src, out| {
            crafted_tar(
                src,
                out,
                "mkdir -p sub && cd sub && tar -P --format=pax -cf - ../top.txt",
            )
        },
    },
    Bad {
        name: "absolute path",
        kind: ErrorKind::ContractError,
        says: "absolute",
        make: |src, out| crafted_tar(src, out, "tar -P --format=pax -cf - \"$PWD/top.txt\""),
    },
    Bad {
        name: "duplicate entry",
        kind: ErrorKind::ContractError,
        says: "duplicate",
        make: |src, out| {
            crafted_tar(
                src,
                out,
                "tar --format=pax -cf /tmp/dup-$$.tar top.txt && echo changed > top.txt && tar --format=pax -rf /tmp/dup-$$.tar top.txt && cat /tmp/dup-$$.tar && rm /tmp/dup-$$.tar",
            )
        },
    },
    Bad {
        name: "truncated zstd",
        kind: ErrorKind::ContractError,
        says: "truncated",
        make: |src, out| {
            make_backup(src, out, &[]);
            let state = out.join("state.tar.zst");
            let bytes = std::fs::read(&state).unwrap();
            std::fs::write(&state, &bytes[..bytes.len() / 2]).unwrap();
            // Metadata that matches the truncated file: only the stream itself is wrong.
            let text = std::fs::read_to_string(out.join("metadata.json")).unwrap();
            let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
            let old = &meta["artifacts"]["state.tar.zst"];
            edit_metadata(
                out,
                old["sha256"].as_str().unwrap(),
                &artifact_sha(out, "state.tar.zst"),
            );
            edit_metadata(
                out,
                &format!("\"size\": {}", old["size"]),
                &format!("\"size\": {}", bytes.len() / 2),
            );
        },
    },
    Bad {
        name: "wrong sha256",
        kind: ErrorKind::IntegrityError,
        says: "sha256",
        make: |src, out| {
            make_backup(src, out, &[]);
            let real = artifact_sha(out, "state.tar.zst");
            edit_metadata(out, &real, &"0".repeat(64));
        },
    },
    Bad {
        name: "wrong size",
        kind: ErrorKind::IntegrityError,
        says: "size",
        make: |src, out| {
            make_backup(src, out, &[]);
            let size = std::fs::metadata(out.join("state.tar.zst")).unwrap().len();
            edit_metadata(
                out,
                &format!("\"size\": {size}"),
                &format!("\"size\": {}", size + 1),
            );
        },
    },
    Bad {
        name: "missing artifact",
        kind: ErrorKind::ContractError,
        says: "missing artifact manifests.tar.zst",
        make: |src, out| {
            make_backup(src, out, &[]);
            std::fs::remove_file(out.join("manifests.tar.zst")).unwrap();
        },
    },
    Bad {
        name: "unknown format version",
        kind: ErrorKind::ContractError,
        says: "format",
        make: |src, out| make_backup(src, out, &["--format", "drpilot.backup/v3"]),
    },
    Bad {
        name: "garbage metadata",
        kind: ErrorKind::ContractError,
        says: "not valid JSON",
        make: |src, out| {
            make_backup(src, out, &[]);
            std::fs::write(out.join("metadata.json"), b"\x00\x01 garbage {").unwrap();
        },
    },
    Bad {
        name: "metadata without artifacts",
        kind: ErrorKind::ContractError,
        says: "artifacts",
        make: |src, out| {
            make_backup(src, out, &[]);
            std::fs::write(
                out.join("metadata.json"),
                r#"{"format": "drpilot.backup/v1", "backup_id": "x", "created_at": "2026-01-01T00:00:00Z", "source": {"git_sha": "abc"}}"#,
            )
            .unwrap();
        },
    },
];

#[tokio::test]
async fn adversarial_backups_fail_with_the_right_error_and_no_success_receipt() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    refused(&aws, BAD, "bad").await;
}

/// Each of `bads`, published, is refused by `backup verify` (writing nothing) and by
/// restore with the case's error kind and words, leaving a failed receipt.
async fn refused(aws: &LocalAws, bads: &[Bad], label: &str) {
    for (i, bad) in bads.iter().enumerate() {
        let tmp = TempDir::new(label);
        let src = tmp.path().join("src");
        source_tree(&src, false);
        let out = tmp.path().join("backup");
        (bad.make)(&src, &out);
        let backup_id = format!("{label}{i}");
        publish(aws, &out, &backup_id).await;
        // `drpilot backup verify` finds the same fault with the same name, writing nothing.
        let before = aws.snapshot(TARGET_BUCKET).await;
        let uri: S3Uri = format!("s3://{BACKUP_BUCKET}/{BACKUP_PREFIX}{backup_id}/")
            .parse()
            .unwrap();
        let verified = drpilot_shared::backup::verify(aws.s3(), &uri, None)
            .await
            .expect_err(bad.name);
        assert_eq!(verified.kind, bad.kind, "{}: verify: {verified}", bad.name);
        assert!(
            verified.message.contains(bad.says),
            "{}: verify: {verified} lacks {:?}",
            bad.name,
            bad.says
        );
        assert_eq!(aws.snapshot(TARGET_BUCKET).await, before, "{}", bad.name);
        let run_id = format!("run-{label}{i}");
        let err = restorer(aws)
            .handle(phase_request(&run_id, &backup_id))
            .await
            .expect_err(bad.name);
        assert_eq!(err.kind, bad.kind, "{}: {err}", bad.name);
        assert!(
            err.message.contains(bad.says),
            "{}: {err} lacks {:?}",
            bad.name,
            bad.says
        );
        let receipt = aws
            .receipts()
            .get_phase(&run_id, Phase::Restore)
            .await
            .unwrap();
        assert_eq!(
            receipt.map(|r| r.status),
            Some(PhaseStatus::Failed),
            "{}: a failed restore leaves a failed receipt",
            bad.name
        );
    }
}

/// A v2 backup of the source tree in three shards or more (`--shard-size` 64 bytes),
/// with `edit` applied to its parsed `metadata.json`.
fn sharded(src: &Path, out: &Path, edit: impl FnOnce(&mut serde_json::Value, &Path)) {
    make_backup(src, out, &["--shard-size", "64"]);
    let path = out.join("metadata.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(meta["shards"].as_array().unwrap().len() >= 3);
    edit(&mut meta, out);
    std::fs::write(&path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
}

const BAD_V2: &[Bad] = &[
    Bad {
        name: "a file outside its shard's range",
        kind: ErrorKind::ContractError,
        says: "outside the shard's range",
        // The first shard says it ends before its last file (still before the next shard).
        make: |src, out| {
            sharded(src, out, |meta, _| {
                let first = meta["shards"][0]["first_key"].clone();
                meta["shards"][0]["last_key"] = first;
            })
        },
    },
    Bad {
        name: "overlapping ranges",
        kind: ErrorKind::ContractError,
        says: "disjoint",
        make: |src, out| {
            sharded(src, out, |meta, _| {
                let last = meta["shards"][0]["last_key"].clone();
                meta["shards"][1]["first_key"] = last;
            })
        },
    },
    Bad {
        name: "a missing shard",
        kind: ErrorKind::ContractError,
        says: "missing artifact state-0001.tar.zst",
        make: |src, out| {
            sharded(src, out, |_, out| {
                std::fs::remove_file(out.join("state-0001.tar.zst")).unwrap()
            })
        },
    },
    Bad {
        name: "a shard whose hash is wrong",
        kind: ErrorKind::IntegrityError,
        says: "sha256",
        make: |src, out| {
            sharded(src, out, |meta, _| {
                meta["shards"][1]["sha256"] = "0".repeat(64).into();
            })
        },
    },
    Bad {
        name: "a shard whose size is wrong",
        kind: ErrorKind::IntegrityError,
        says: "state-0002.tar.zst: size is",
        make: |src, out| {
            sharded(src, out, |meta, _| {
                let size = meta["shards"][2]["size"].as_u64().unwrap();
                meta["shards"][2]["size"] = (size + 1).into();
            })
        },
    },
    Bad {
        name: "a shard holding another number of files than it says",
        kind: ErrorKind::IntegrityError,
        says: "holds",
        make: |src, out| {
            sharded(src, out, |meta, _| {
                let objects = meta["shards"][1]["objects"].as_u64().unwrap();
                meta["shards"][1]["objects"] = (objects + 1).into();
            })
        },
    },
    Bad {
        name: "shards in a v1 backup",
        kind: ErrorKind::ContractError,
        says: "no shards",
        make: |src, out| {
            sharded(src, out, |meta, _| {
                meta["format"] = "drpilot.backup/v1".into();
            })
        },
    },
];

/// Every v1 refusal has its v2 counterpart: restore (and `backup verify`) refuse each
/// broken sharded backup with the right error, leaving a failed receipt and nothing in
/// `root/`.
#[tokio::test]
async fn broken_sharded_backups_fail_with_the_right_error() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    refused(&aws, BAD_V2, "badv2").await;
    assert!(aws.keys(TARGET_BUCKET, "root/").await.is_empty());
}

/// A sound sharded backup restores inline (a run context without a plan) exactly as
/// its v1 twin does: the same staged keys and hashes, and counts that add up.
#[tokio::test]
async fn a_sharded_backup_restores_inline_like_its_v1_twin() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("restore-v2");
    let src = tmp.path().join("src");
    source_tree(&src, false);
    let v1 = tmp.path().join("v1");
    make_backup(&src, &v1, &[]);
    let v2 = tmp.path().join("v2");
    sharded(&src, &v2, |_, _| {});
    publish(&aws, &v1, "twin-v1").await;
    publish(&aws, &v2, "twin-v2").await;
    let one = restorer(&aws)
        .handle(phase_request("run-v1", "twin-v1"))
        .await
        .unwrap();
    let two = restorer(&aws)
        .handle(phase_request("run-v2", "twin-v2"))
        .await
        .unwrap();
    assert_eq!(one.details["objects"], two.details["objects"]);
    assert_eq!(one.details["bytes"], two.details["bytes"]);
    assert_eq!(staged(&aws, "run-v1").await, staged(&aws, "run-v2").await);
    for key in staged(&aws, "run-v1").await {
        assert_eq!(
            stored_sha256(&aws, &format!("_staging/run-v1/{key}")).await,
            stored_sha256(&aws, &format!("_staging/run-v2/{key}")).await,
            "{key}"
        );
    }
}

/// A sound archive whose files are not what the manifests list: restore stages it (it
/// is validate's to find), but `backup verify` and a dry-run restore, which check what
/// validate would, refuse it with `IntegrityError` naming the differences.
#[tokio::test]
async fn an_archive_the_manifests_do_not_cover_is_refused_by_verify_and_dry_run() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("restore-coverage");
    let src = tmp.path().join("src");
    source_tree(&src, false);
    let out = tmp.path().join("backup");
    // The archive holds one file more, and one changed, than the manifests list.
    let changed = tmp.path().join("changed");
    sh(&format!(
        "cp -r '{}' '{1}' && echo more > '{1}/extra.json' && echo changed >> '{1}/a/b/obj-1.json'",
        src.display(),
        changed.display()
    ));
    crafted_tar(
        &src,
        &out,
        &format!("cd '{}' && tar --format=pax -cf - .", changed.display()),
    );
    publish(&aws, &out, "cov").await;
    let uri: S3Uri = format!("s3://{BACKUP_BUCKET}/{BACKUP_PREFIX}cov/")
        .parse()
        .unwrap();
    let err = drpilot_shared::backup::verify(aws.s3(), &uri, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::IntegrityError, "{err}");
    assert!(err.message.contains("1 not listed"), "{err}");
    assert!(err.message.contains("a/b/obj-1.json"), "{err}");
    let mut dry = phase_request("run-cov-dry", "cov");
    dry.run.input.dry_run = true;
    let err = restorer(&aws).handle(dry).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::IntegrityError, "{err}");
    restorer(&aws)
        .handle(phase_request("run-cov", "cov"))
        .await
        .unwrap();
}

/// Fails the `n`th single-part PUT into staging, as a flaky network would.
#[derive(Debug)]
struct FailNthStagingPut {
    n: usize,
    seen: Arc<AtomicUsize>,
}

impl Intercept for FailNthStagingPut {
    fn name(&self) -> &'static str {
        "FailNthStagingPut"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        if request.method() == "PUT"
            && request.uri().contains("/_staging/")
            && !request.uri().contains("partNumber")
        {
            let seen = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
            if seen == self.n {
                return Err("injected failure: connection reset".into());
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_rerun_after_a_failure_mid_restore_stages_exactly_the_backup() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("restore-rerun");
    let src = tmp.path().join("src");
    source_tree(&src, false);
    make_backup(&src, &tmp.path().join("b2"), &[]);
    publish(&aws, &tmp.path().join("b2"), "b2").await;

    let mut flaky = restorer(&aws);
    let s3_config = aws
        .s3()
        .config()
        .to_builder()
        .interceptor(FailNthStagingPut {
            n: 20,
            seen: Arc::default(),
        })
        .build();
    flaky.clients.s3 = aws_sdk_s3::Client::from_conf(s3_config);
    let err = flaky
        .handle(phase_request("run-rerun", "b2"))
        .await
        .unwrap_err();
    assert!(err.message.contains("injected failure"), "{err}");
    let partial = staged(&aws, "run-rerun").await;
    assert!(!partial.is_empty(), "the failure came mid-restore");
    assert_eq!(
        aws.receipts()
            .get_phase("run-rerun", Phase::Restore)
            .await
            .unwrap()
            .unwrap()
            .status,
        PhaseStatus::Failed
    );
    // Debris from elsewhere under the run's prefix is gone after the re-run too.
    aws.put_text(TARGET_BUCKET, "_staging/run-rerun/stray.json", "{}")
        .await;

    let out = restorer(&aws)
        .handle(phase_request("run-rerun", "b2"))
        .await
        .unwrap();
    assert_eq!(out.status, PhaseStatus::Success);
    let keys: Vec<String> = expected_files(&src).into_iter().map(|(k, _)| k).collect();
    assert_eq!(staged(&aws, "run-rerun").await, keys);
    // And once more: a re-run of a successful restore ends in the same state.
    restorer(&aws)
        .handle(phase_request("run-rerun", "b2"))
        .await
        .unwrap();
    assert_eq!(staged(&aws, "run-rerun").await, keys);
}

#[tokio::test]
async fn a_dry_run_verifies_without_staging() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("restore-dry");
    let src = tmp.path().join("src");
    source_tree(&src, false);
    make_backup(&src, &tmp.path().join("b3"), &[]);
    publish(&aws, &tmp.path().join("b3"), "b3").await;
    let mut req = phase_request("run-dry", "b3");
    req.run.input.dry_run = true;
    let out = restorer(&aws).handle(req).await.unwrap();
    assert_eq!(out.status, PhaseStatus::Success);
    assert_eq!(out.details["objects"], expected_files(&src).len() as u64);
    assert!(staged(&aws, "run-dry").await.is_empty());
}

#[tokio::test]
async fn a_phase_outside_the_window_is_recorded_as_skipped() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let mut req = phase_request("run-skip", "nonexistent");
    req.run.input.start_at = Phase::Validate;
    let out = restorer(&aws).handle(req).await.unwrap();
    assert_eq!(out.status, PhaseStatus::Skipped);
    assert_eq!(out.reason.as_deref(), Some("start_at=validate"));
}

#[tokio::test]
async fn the_control_plane_bundle_is_verified_and_staged() {
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("restore-cp");
    let src = tmp.path().join("src");
    source_tree(&src, false);
    make_backup(&src, &tmp.path().join("b4"), &[]);
    publish(&aws, &tmp.path().join("b4"), "b4").await;

    let bundle = b"control plane bundle v7".repeat(1000);
    let bundle_sha = hex::encode(Sha256::digest(&bundle));
    aws.s3()
        .put_object()
        .bucket(BACKUP_BUCKET)
        .key("prod/control-plane/bundles/cp-7.tar.gz")
        .body(bundle.clone().into())
        .send()
        .await
        .unwrap();
    let mut profile = test_profile();
    profile["control_plane"] = serde_json::json!({"pointer": format!("s3://{BACKUP_BUCKET}/prod/control-plane/current.json")});
    aws.put_profile(drpilot_testkit::PROFILE, &profile).await;
    let pointer = |sha: &str| {
        serde_json::json!({
            "bundle_uri": format!("s3://{BACKUP_BUCKET}/prod/control-plane/bundles/cp-7.tar.gz"),
            "bundle_sha256": sha,
            "created_at": "2026-11-01T00:00:00Z",
            "git_sha": "abc123",
            "image_ref_digest": "sha256:0123"
        })
        .to_string()
    };

    aws.put_text(
        BACKUP_BUCKET,
        "prod/control-plane/current.json",
        &pointer(&"f".repeat(64)),
    )
    .await;
    let err = restorer(&aws)
        .handle(phase_request("run-cp", "b4"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::IntegrityError, "{err}");
    assert!(err.message.contains("control-plane bundle"), "{err}");
    assert!(!staged(&aws, "run-cp")
        .await
        .iter()
        .any(|k| k.starts_with("_control-plane/")));

    aws.put_text(
        BACKUP_BUCKET,
        "prod/control-plane/current.json",
        &pointer(&bundle_sha),
    )
    .await;
    let out = restorer(&aws)
        .handle(phase_request("run-cp", "b4"))
        .await
        .unwrap();
    assert_eq!(out.details["control_plane"]["bundle_sha256"], bundle_sha);
    let keys = staged(&aws, "run-cp").await;
    assert!(
        keys.contains(&"_control-plane/cp-7.tar.gz".to_owned()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"_control-plane/current.json".to_owned()),
        "{keys:?}"
    );
    assert_eq!(
        aws.get_text(TARGET_BUCKET, "_staging/run-cp/_control-plane/cp-7.tar.gz")
            .await
            .unwrap()
            .as_bytes(),
        bundle.as_slice()
    );
}

/// A range's child behind its execution's fence (teardown raised it: the Map failed,
/// this invocation ran on) stages nothing and fails naming the fence; a fence raised
/// against another execution of the run does not stop it.
#[tokio::test]
async fn a_child_behind_its_executions_fence_stages_nothing() {
    use drpilot_shared::backup::BackupMetadata;
    use drpilot_shared::fence::{fence_uri, raise};
    use drpilot_shared::plan;
    use drpilot_shared::store::ReceiptStore;
    use drpilot_testkit::EVIDENCE_BUCKET;

    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("restore-fence");
    let src = tmp.path().join("src");
    source_tree(&src, false);
    let out = tmp.path().join("v2");
    sharded(&src, &out, |_, _| {});
    publish(&aws, &out, "fenced-v2").await;
    let meta: BackupMetadata =
        serde_json::from_slice(&std::fs::read(out.join("metadata.json")).unwrap()).unwrap();
    let items = plan::items(&meta, 1);
    let child = |run_id: &str| range_child(run_id, "fenced-v2", &items, 1);
    let receipts: S3Uri = format!("s3://{EVIDENCE_BUCKET}/drpilot/receipts/")
        .parse()
        .unwrap();
    let store = ReceiptStore::new(aws.s3().clone(), receipts);

    let fenced = child("run-fenced");
    let uri = fence_uri(&store, "run-fenced").unwrap();
    raise(
        aws.s3(),
        &uri,
        fenced.run.execution_arn.as_deref(),
        "restore failed with Retryable",
    )
    .await
    .unwrap();
    let err = restorer(&aws).serve_step(fenced).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::ServiceError, "{err}");
    assert!(err.message.contains("fence"), "{err}");
    assert!(
        err.message.contains("restore failed with Retryable"),
        "{err}"
    );
    assert!(staged(&aws, "run-fenced").await.is_empty());

    let other = child("run-resumed");
    let uri = fence_uri(&store, "run-resumed").unwrap();
    raise(
        aws.s3(),
        &uri,
        Some("arn:aws:states:us-east-1:123456789012:execution:drpilot-drill:an-earlier-one"),
        "an earlier execution failed",
    )
    .await
    .unwrap();
    restorer(&aws).serve_step(other).await.unwrap();
    assert_eq!(
        Some(staged(&aws, "run-resumed").await.len() as u64),
        items[1].shards[0].objects
    );
}

/// A range's child cut off after its N-th write (a read error mid-stream, a timeout, a
/// lost answer) and invoked again — as the Map's Retry does — finishes and leaves exactly
/// what an uncut child stages: what it wrote before is checked by its stored SHA-256 and
/// kept, not refused as a duplicate.
#[tokio::test]
async fn a_child_cut_after_its_nth_write_and_run_again_stages_what_an_uncut_one_does() {
    use drpilot_shared::backup::BackupMetadata;
    use drpilot_shared::plan;
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("restore-resume");
    let src = tmp.path().join("src");
    source_tree(&src, false);
    let out = tmp.path().join("v2");
    sharded(&src, &out, |_, _| {});
    publish(&aws, &out, "resumed-v2").await;
    let meta: BackupMetadata =
        serde_json::from_slice(&std::fs::read(out.join("metadata.json")).unwrap()).unwrap();
    let items = plan::items(&meta, 1);
    let child = |run_id: &str| range_child(run_id, "resumed-v2", &items, 1);
    let contents = async |run_id: &str| {
        let mut out = Vec::new();
        for key in staged(&aws, run_id).await {
            let full = format!("_staging/{run_id}/{key}");
            out.push((key, stored_sha256(&aws, &full).await));
        }
        out
    };
    restorer(&aws).serve_step(child("run-whole")).await.unwrap();
    let whole = contents("run-whole").await;
    assert!(whole.len() > 4, "{whole:?}");

    for n in [1_u32, 2, 4] {
        let run_id = format!("run-cut-{n}");
        let mut cut = restorer(&aws);
        cut.clients.s3 = drpilot_testkit::FailAfter::s3(&cut.clients.s3, "PutObject", n);
        let err = cut.serve_step(child(&run_id)).await.unwrap_err();
        assert!(err.to_string().contains("injected fault"), "{err}");
        assert_eq!(staged(&aws, &run_id).await.len(), n as usize);
        // The Map's retry: the same child again.
        restorer(&aws).serve_step(child(&run_id)).await.unwrap();
        assert_eq!(contents(&run_id).await, whole, "cut after write {n}");
    }
}

/// A range's child whose invocation's time runs out stops between files, answers where
/// it got to, and — invoked again with that continuation, as the Map's loop does, pass
/// after pass — ends with exactly what a child with all the time it needs stages.
#[tokio::test]
async fn a_child_out_of_time_goes_on_from_its_continuation_to_what_an_uncut_one_stages() {
    use drpilot_shared::backup::BackupMetadata;
    use drpilot_shared::plan;
    use drpilot_shared::run::StepOutput;
    let aws = LocalAws::start().await;
    aws.standard_setup().await;
    let tmp = TempDir::new("restore-continue");
    let src = tmp.path().join("src");
    source_tree(&src, false);
    let out = tmp.path().join("v2");
    sharded(&src, &out, |_, _| {});
    publish(&aws, &out, "continued-v2").await;
    let meta: BackupMetadata =
        serde_json::from_slice(&std::fs::read(out.join("metadata.json")).unwrap()).unwrap();
    // Every shard in one range: a continuation also crosses from shard to shard.
    let items = plan::items(&meta, u64::MAX);
    assert!(items[0].shards.len() > 1, "{items:?}");
    let child = |run_id: &str| range_child(run_id, "continued-v2", &items, 0);
    let contents = async |run_id: &str| {
        let mut out = Vec::new();
        for key in staged(&aws, run_id).await {
            let full = format!("_staging/{run_id}/{key}");
            out.push((key, stored_sha256(&aws, &full).await));
        }
        out
    };
    restorer(&aws).serve_step(child("run-uncut")).await.unwrap();
    let whole = contents("run-uncut").await;

    // 4 writes a second, and 1.5 s an invocation (1.125 s of work): a few files a pass.
    aws.limit_s3(serde_json::json!({"write_per_second": 4}));
    let mut request = child("run-passes");
    let mut passes = 0;
    loop {
        passes += 1;
        assert!(passes <= 60, "no end after {passes} passes");
        let out = drpilot_shared::deadline::scope(
            std::time::Duration::from_millis(1500),
            restorer(&aws).serve_step(request.clone()),
        )
        .await
        .unwrap();
        let StepOutput::Range(out) = out else {
            panic!("a child answers as a range: {out:?}")
        };
        match out.continuation {
            Some(continuation) => {
                assert_eq!(continuation.pass, passes);
                request.continuation = Some(continuation);
            }
            None => break,
        }
    }
    assert!(passes >= 2, "the child never ran out of time");
    assert_eq!(contents("run-passes").await, whole);
    let result = aws
        .get_text(
            drpilot_testkit::EVIDENCE_BUCKET,
            "drpilot/receipts/runs/run-passes/ranges/restore/00000.json",
        )
        .await
        .unwrap();
    let result: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result["passes"], passes, "{result}");
    let staged_shards = result["details"].as_array().unwrap();
    assert_eq!(staged_shards.len(), items[0].shards.len(), "{result}");
    let objects: u64 = staged_shards
        .iter()
        .map(|s| s["objects"].as_u64().unwrap())
        .sum();
    assert_eq!(objects as usize, whole.len(), "{result}");
}
