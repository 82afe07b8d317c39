//! `drpilot backup verify URI [--profile P]`: a backup in S3 checked in place, writing
//! nothing — the contract, each archive's size, both archives streamed through every
//! check restore makes, and (with a profile) its age against the RPO target.

use chrono::Utc;
use drpilot_shared::backup::{self, Verified};
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::receipt::{seconds, Objective};
use drpilot_shared::{ErrorKind, S3Uri};
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
    let check = match backup::verify(&ctx.aws.s3, &uri).await {
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

fn say_verified(ctx: &Ctx, check: &BackupCheck) {
    let Some(v) = &check.verified else { return };
    ctx.out.say(format!(
        "  backup {} (created {}): contract, sizes and both archives verified",
        v.backup_id, v.backup.created_at
    ));
    for (name, report) in [(backup::MANIFESTS, &v.manifests), (backup::STATE, &v.state)] {
        ctx.out.say(format!(
            "  {name:<18} {} files, {} bytes ({} compressed), sha256 {}",
            report.files, report.bytes, report.archive_bytes, report.archive_sha256
        ));
    }
    if let Some(age) = &check.age {
        ctx.out
            .say(format!("  age {} against the RPO", age.describe()));
    }
}
