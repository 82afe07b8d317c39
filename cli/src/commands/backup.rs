//! `drpilot backup make SRC --out DIR [--upload PREFIX]`: a contract backup of a
//! directory, written locally and optionally published under a backups prefix.
//!
//! `drpilot backup verify URI [--profile P]`: a backup in S3 checked in place, writing
//! nothing — the contract, each archive's size, both archives streamed through every
//! check restore makes, the archive's files against the manifests, and (with a profile)
//! its age against the RPO target, with a progress bar while it reads.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use drpilot_shared::backup::{self, ReadProgress, Verified};
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::time::{seconds, Objective};
use drpilot_shared::{ErrorKind, S3Uri};
use drpilot_tools::maker::{self, Made, MakeOptions};
use serde::Serialize;

use crate::{CliError, Ctx, ExitStatus};

/// The verdict on one backup.
#[derive(Clone, Debug, Serialize)]
pub struct BackupCheck {
    pub uri: S3Uri,
    pub ok: bool,
    /// What `verify` found, when the backup is sound.
    pub verified: Option<Verified>,
    /// The error name restore would fail with (`ContractError`, `IntegrityError`).
    pub error: Option<&'static str>,
    pub message: Option<String>,
    /// The backup's age now, against the profile's RPO target (with `--profile`).
    pub age: Option<Objective>,
}

/// Verifies the backup at `uri`. A backup that fails a check is a verdict (exit 1); a
/// call that could not be made (access, network) is an error (exit 2).
pub async fn verify(
    ctx: &Ctx,
    uri: &str,
    profile: Option<&str>,
) -> Result<(BackupCheck, ExitStatus), CliError> {
    let uri: S3Uri = uri
        .parse()
        .map_err(|e| CliError::Usage(format!("URI: {e}")))?;
    let rpo_target = match profile {
        Some(name) => Some(
            ProfileSource::from_env(ctx.aws.ssm.clone())
                .load(name)
                .await?
                .rpo_target_seconds,
        ),
        None => None,
    };
    ctx.out.say(format!("verifying {uri} (nothing is written)"));
    let progress = Arc::new(ReadProgress::default());
    let bar = ProgressBar::new(&progress, ctx.out.json);
    let verified = backup::verify(&ctx.aws.s3, &uri, Some(progress)).await;
    bar.finish();
    let check = match verified {
        Ok(verified) => {
            let age = seconds(Utc::now() - verified.backup.created_at);
            let check = BackupCheck {
                uri,
                ok: true,
                age: rpo_target.map(|target| Objective::measure(Some(age), target)),
                verified: Some(verified),
                error: None,
                message: None,
            };
            say_verified(ctx, &check);
            check
        }
        Err(err)
            if matches!(
                err.kind,
                ErrorKind::ContractError | ErrorKind::IntegrityError
            ) =>
        {
            ctx.out.say(format!("  FAILED: {err}"));
            BackupCheck {
                uri,
                ok: false,
                verified: None,
                error: Some(err.kind.name()),
                message: Some(err.message),
                age: None,
            }
        }
        Err(err) => return Err(err.into()),
    };
    // A backup older than the RPO target restores, but not to the point promised.
    let in_time = check.age.as_ref().is_none_or(|age| age.met != Some(false));
    let status = ExitStatus::success_if(check.ok && in_time);
    Ok((check, status))
}

/// The archive bytes read so far, drawn on stderr while `verify` reads (never in `--json`
/// mode, and not when stderr is not a terminal).
struct ProgressBar {
    bar: indicatif::ProgressBar,
    drawing: tokio::task::JoinHandle<()>,
}

impl ProgressBar {
    fn new(progress: &Arc<ReadProgress>, json: bool) -> Self {
        let bar = if json || !std::io::stderr().is_terminal() {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(0)
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "  {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let (progress, shown) = (Arc::clone(progress), bar.clone());
        let drawing = tokio::spawn(async move {
            loop {
                shown.set_length(progress.total.load(Ordering::Relaxed));
                shown.set_position(progress.read.load(Ordering::Relaxed));
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        Self { bar, drawing }
    }

    fn finish(self) {
        self.drawing.abort();
        self.bar.finish_and_clear();
    }
}

fn say_verified(ctx: &Ctx, check: &BackupCheck) {
    let Some(v) = &check.verified else { return };
    ctx.out.say(format!(
        "  backup {} (created {}): contract, sizes and both archives verified",
        v.backup_id, v.backup.created_at
    ));
    // The state is one archive in v1 and its shards together in v2.
    for (name, report) in [(backup::MANIFESTS, &v.manifests), ("state", &v.state)] {
        ctx.out.say(format!(
            "  {name:<18} {} files, {} bytes ({} compressed), sha256 {}",
            report.files, report.bytes, report.archive_bytes, report.archive_sha256
        ));
    }
    ctx.out.say(format!(
        "  manifests cover the archive: {} listed, {} archived, all {} with the listed size and SHA-256",
        v.coverage.listed, v.coverage.archived, v.coverage.matching
    ));
    if let Some(age) = &check.age {
        ctx.out
            .say(format!("  age {} against the RPO", age.describe()));
    }
}

/// What `drpilot backup make` is asked for.
#[derive(Clone, Debug, clap::Args)]
pub struct MakeArgs {
    /// The directory to back up.
    pub src: PathBuf,
    /// Where to write the backup (created; must not hold one already).
    #[arg(long)]
    pub out: PathBuf,
    /// The backup id (default: the --out directory's name).
    #[arg(long)]
    pub id: Option<String>,
    /// The source revision recorded as source.git_sha (default: `git rev-parse HEAD` in
    /// SRC, else "unknown").
    #[arg(long)]
    pub git_sha: Option<String>,
    /// When the backup was taken, RFC 3339 (default: now).
    #[arg(long)]
    pub created_at: Option<String>,
    /// zstd level, 1-19.
    #[arg(long, default_value_t = 3)]
    pub level: i32,
    /// Make a sharded (v2) backup: consecutive files in key order, a shard closed once
    /// its files reach this many bytes (default: v1, one state.tar.zst).
    #[arg(long, value_name = "BYTES")]
    pub shard_size: Option<u64>,
    /// Publish it under this backups prefix, as <PREFIX><id>/ (metadata.json last, so a
    /// partial upload is never a backup).
    #[arg(long, value_name = "S3_PREFIX")]
    pub upload: Option<String>,
}

/// What `drpilot backup make` did.
#[derive(Clone, Debug, Serialize)]
pub struct MadeBackup {
    #[serde(flatten)]
    pub made: Made,
    /// Where it was published, with `--upload`.
    pub uri: Option<S3Uri>,
}

/// `drpilot backup make`: the arguments are checked (and the destination, with
/// `--upload`) before anything is written.
pub async fn make(ctx: &Ctx, args: &MakeArgs) -> Result<MadeBackup, CliError> {
    let backup_id = match &args.id {
        Some(id) => id.clone(),
        None => args
            .out
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "--out {}: name a directory, or pass --id",
                    args.out.display()
                ))
            })?,
    };
    let created_at = match &args.created_at {
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map_err(|e| CliError::Usage(format!("--created-at {text:?}: expected RFC 3339: {e}")))?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let destination = match &args.upload {
        Some(prefix) => {
            let prefix: S3Uri = prefix
                .parse()
                .map_err(|e| CliError::Usage(format!("--upload: {e}")))?;
            Some(
                prefix
                    .as_prefix()
                    .join(&backup_id)
                    .map_err(|e| CliError::Usage(format!("--id: {e}")))?
                    .as_prefix(),
            )
        }
        None => None,
    };
    let options = MakeOptions {
        backup_id,
        created_at,
        git_sha: args.git_sha.clone().unwrap_or_else(|| git_head(&args.src)),
        level: args.level,
        shard_size: args.shard_size,
    };
    let (src, out) = (args.src.clone(), args.out.clone());
    let made = tokio::task::spawn_blocking(move || maker::make(&src, &out, &options))
        .await
        .map_err(drpilot_shared::Error::from)??;
    let state = if made.shards.is_empty() {
        format!("{} {} bytes", backup::STATE, made.state.size)
    } else {
        format!("{} shards, {} bytes", made.shards.len(), made.state.size)
    };
    ctx.out.say(format!(
        "backup {} in {}: {} files, {} directories, {} bytes; {state}, {} {} bytes",
        made.backup_id,
        made.dir.display(),
        made.files,
        made.directories,
        made.bytes,
        backup::MANIFESTS,
        made.manifests.size
    ));
    if let Some(uri) = &destination {
        let mut names: Vec<String> = if made.shards.is_empty() {
            vec![backup::STATE.to_owned()]
        } else {
            made.shards.iter().map(|s| s.name.clone()).collect()
        };
        names.push(backup::MANIFESTS.to_owned());
        publish(ctx, &made.dir, uri, &names).await?;
        ctx.out.say(format!(
            "  published as {uri} (check it with: drpilot backup verify {uri})"
        ));
    }
    Ok(MadeBackup {
        made,
        uri: destination,
    })
}

/// The revision of the git checkout at `dir`, else "unknown".
fn git_head(dir: &std::path::Path) -> String {
    std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Uploads the archives (`names`), then `metadata.json`: until the last PUT the prefix is
/// not a backup (bringup and verify need every object it names). One PUT per object, so
/// at most S3's 5 GiB each.
async fn publish(
    ctx: &Ctx,
    dir: &std::path::Path,
    uri: &S3Uri,
    names: &[String],
) -> Result<(), CliError> {
    const SINGLE_PUT_MAX: u64 = 5 * 1024 * 1024 * 1024;
    for name in names.iter().map(String::as_str).chain([backup::METADATA]) {
        let path = dir.join(name);
        let size = std::fs::metadata(&path)
            .map_err(|e| CliError::Io(format!("{}: {e}", path.display())))?
            .len();
        if size > SINGLE_PUT_MAX {
            return Err(CliError::Usage(format!(
                "{}: {size} bytes is more than one PUT takes (5 GiB); upload the directory with a multipart tool (aws s3 cp), {} last",
                path.display(),
                backup::METADATA
            )));
        }
        let target = uri
            .join(name)
            .map_err(|e| CliError::Usage(format!("--upload: {e}")))?;
        let body = aws_sdk_s3::primitives::ByteStream::from_path(&path)
            .await
            .map_err(|e| CliError::Io(format!("{}: {e}", path.display())))?;
        ctx.aws
            .s3
            .put_object()
            .bucket(&target.bucket)
            .key(&target.key)
            .body(body)
            .send()
            .await
            .map_err(|e| CliError::aws(&format!("PutObject {target}"), e))?;
    }
    Ok(())
}
