//! `drpilot backup make`'s writer: a backup of a tree that every reader check accepts,
//! listing what `scripts/make-backup.sh` (tar, zstd, sha256sum) lists for the same tree,
//! and refusing what a restore would refuse before writing anything.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use std::path::Path;

use chrono::Utc;
use drpilot_shared::archive::unpack;
use drpilot_shared::backup::{BackupMetadata, Coverage, MANIFESTS, STATE};
use drpilot_shared::manifest::{ContentCollector, ExternalSort, ManifestCollector, ManifestEntry};
use drpilot_shared::{ErrorKind, Result, S3Uri};
use drpilot_testkit::{make_backup, sh, TempDir};
use drpilot_tools::maker::{make, MakeOptions};

fn options(id: &str) -> MakeOptions {
    MakeOptions {
        backup_id: id.into(),
        created_at: Utc::now(),
        git_sha: "abc".into(),
        level: 3,
        shard_size: None,
    }
}

/// A tree with what trips tar writers up: a name past ustar's 100 characters, non-ASCII
/// names, an empty file, an empty directory.
fn tree(dir: &Path) {
    let long = "l".repeat(120);
    sh(&format!(
        "mkdir -p '{0}/a/{long}' '{0}/empty' '{0}/données' && echo x > '{0}/a/{long}/f.json' && : > '{0}/zero' && printf 'é☃' > '{0}/données/naïve ☃.json' && for i in 1 2 3; do echo $i > '{0}/a/'$i; done",
        dir.display()
    ));
}

/// Reads a local backup as restore reads one: metadata, then both archives through every
/// check, then the archive's files against the manifests.
fn read_back(dir: &Path) -> (BackupMetadata, Vec<ManifestEntry>, Coverage) {
    let uri: S3Uri = "s3://local/backup/".parse().unwrap();
    let meta =
        BackupMetadata::parse(&uri, &std::fs::read(dir.join("metadata.json")).unwrap()).unwrap();
    let mut listed = ManifestCollector {
        sorter: ExternalSort::new(2).unwrap(),
        manifests: 0,
        range: drpilot_shared::s3uri::KeyRange::all(),
    };
    let open = |name: &str| std::fs::File::open(dir.join(name)).unwrap();
    unpack(
        MANIFESTS,
        open(MANIFESTS),
        meta.artifact(MANIFESTS),
        &mut listed,
    )
    .unwrap();
    let mut archived = ContentCollector {
        sorter: ExternalSort::new(2).unwrap().refusing_duplicates(),
    };
    unpack(STATE, open(STATE), meta.artifact(STATE), &mut archived).unwrap();
    let entries: Vec<ManifestEntry> = listed
        .sorter
        .finish()
        .unwrap()
        .collect::<Result<_>>()
        .unwrap();
    let mut again = ExternalSort::new(2).unwrap();
    for e in &entries {
        again.push(e.clone()).unwrap();
    }
    let coverage =
        Coverage::measure(again.finish().unwrap(), archived.sorter.finish().unwrap()).unwrap();
    (meta, entries, coverage)
}

#[test]
fn a_made_backup_reads_back_and_lists_what_the_shell_tools_list() {
    let tmp = TempDir::new("maker");
    let src = tmp.path().join("src");
    tree(&src);
    let out = tmp.path().join("made");
    let made = make(&src, &out, &options("made-1")).unwrap();
    assert_eq!((made.files, made.directories), (6, 4));
    let (meta, entries, coverage) = read_back(&out);
    assert_eq!(meta.backup_id, "made-1");
    assert_eq!(meta.artifact(STATE), &made.state);
    assert!(
        coverage.complete() && coverage.matching == 6,
        "{coverage:?}"
    );

    let scripted = tmp.path().join("scripted");
    make_backup(&src, &scripted, &[]);
    let (_, by_script, _) = read_back(&scripted);
    assert_eq!(entries, by_script);
}

#[test]
fn what_a_restore_would_refuse_is_refused_before_anything_is_written() {
    let tmp = TempDir::new("maker-bad");
    let src = tmp.path().join("src");
    tree(&src);
    sh(&format!("ln -s /etc/passwd '{}/a/link'", src.display()));
    let out = tmp.path().join("out");
    let err = make(&src, &out, &options("bad")).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InputError);
    assert!(err.message.contains("a/link"), "{err}");
    assert!(!out.exists(), "nothing written");

    let err = make(&tmp.path().join("missing"), &out, &options("bad")).unwrap_err();
    assert!(err.message.contains("not a directory"), "{err}");
    let err = make(&src, &out, &options("has.dot")).unwrap_err();
    assert!(err.message.contains("backup id"), "{err}");
    let err = make(
        &src,
        &out,
        &MakeOptions {
            level: 40,
            ..options("ok")
        },
    )
    .unwrap_err();
    assert!(err.message.contains("level"), "{err}");

    sh(&format!("rm '{}/a/link'", src.display()));
    make(&src, &out, &options("ok")).unwrap();
    let err = make(&src, &out, &options("ok")).unwrap_err();
    assert!(err.message.contains("already holds a backup"), "{err}");
}

/// With a shard size, the same tree becomes a v2 backup whose shards every reader check
/// accepts (ranges disjoint and in key order, each file inside its shard's range, the
/// counts as declared), holding what the v1 backup and the shell tools' v2 hold.
#[test]
fn a_sharded_backup_reads_back_like_its_v1_twin_and_the_scripts() {
    use drpilot_shared::backup::InRange;
    let tmp = TempDir::new("maker-v2");
    let src = tmp.path().join("src");
    tree(&src);
    // Names whose byte order differs from a per-directory walk's.
    sh(&format!(
        "mkdir -p '{0}/b/x' && echo 1 > '{0}/b-c' && echo 2 > '{0}/b.txt' && echo 3 > '{0}/b/x/y'",
        src.display()
    ));
    let out = tmp.path().join("made");
    let made = make(
        &src,
        &out,
        &MakeOptions {
            shard_size: Some(2),
            ..options("made-v2")
        },
    )
    .unwrap();
    assert!(made.shards.len() >= 3, "{:?}", made.shards);
    let uri: S3Uri = "s3://local/backup/".parse().unwrap();
    let meta =
        BackupMetadata::parse(&uri, &std::fs::read(out.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(meta.format, "drpilot.backup/v2");
    let mut archived = ContentCollector {
        sorter: ExternalSort::new(2).unwrap().refusing_duplicates(),
    };
    for shard in meta.shards() {
        let file = std::fs::File::open(out.join(&shard.name)).unwrap();
        let mut in_range = InRange::new(&shard, archived);
        let report = unpack(&shard.name, file, &shard.artifact(), &mut in_range).unwrap();
        archived = in_range.finish(&report).unwrap();
    }
    let archived: Vec<ManifestEntry> = archived
        .sorter
        .finish()
        .unwrap()
        .collect::<Result<_>>()
        .unwrap();
    let v1 = tmp.path().join("v1");
    make(&src, &v1, &options("made-v1")).unwrap();
    let (_, listed, _) = read_back(&v1);
    assert_eq!(archived, listed, "the shards hold what v1's archive holds");

    let scripted = tmp.path().join("scripted");
    make_backup(&src, &scripted, &["--shard-size", "2"]);
    let by_script: serde_json::Value =
        serde_json::from_slice(&std::fs::read(scripted.join("metadata.json")).unwrap()).unwrap();
    let ranges = |shards: &serde_json::Value| -> Vec<(String, String, u64)> {
        shards
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["first_key"].as_str().unwrap().to_owned(),
                    s["last_key"].as_str().unwrap().to_owned(),
                    s["objects"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let made_meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(
        ranges(&made_meta["shards"]),
        ranges(&by_script["shards"]),
        "the same cut as scripts/make-backup.sh"
    );

    let err = make(
        &src,
        &tmp.path().join("zero"),
        &MakeOptions {
            shard_size: Some(0),
            ..options("zero")
        },
    )
    .unwrap_err();
    assert!(err.message.contains("shard size"), "{err}");
}
