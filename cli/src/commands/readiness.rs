//! `drpilot readiness`: what the readiness function last found for a profile (its hourly
//! `readiness/latest.json`), or with `--check` a check made now by the function itself.

use drpilot_shared::profile::ProfileSource;
use drpilot_shared::readiness::ReadinessReport;
use drpilot_shared::store::ReceiptStore;
use serde_json::json;

use crate::{CliError, Ctx};

/// The readiness function the CLI invokes with `--check` when none is named: the
/// template's name for the default stack; on the local stack, the served binary.
pub const DEFAULT_READINESS_FUNCTION: &str = "drpilot-readiness";
pub const LOCAL_READINESS_FUNCTION: &str = "readiness";

/// `drpilot readiness --profile P [--check]`.
pub async fn readiness(
    ctx: &Ctx,
    profile: &str,
    check: bool,
    function: Option<&str>,
) -> Result<ReadinessReport, CliError> {
    let report = if check {
        invoke(ctx, profile, function).await?
    } else {
        let loaded = ProfileSource::from_env(ctx.aws.ssm.clone())
            .load(profile)
            .await?;
        let store = ReceiptStore::new(ctx.aws.s3.clone(), loaded.receipts.clone());
        store.get_readiness().await?.ok_or_else(|| {
            CliError::Usage(format!(
                "no readiness report for profile {profile} at {} yet: the hourly schedule (EnableTriggers=true) writes one, or run `drpilot readiness --profile {profile} --check`",
                store.readiness_uri().map(|u| u.to_string()).unwrap_or_default()
            ))
        })?
    };
    print(ctx, &report);
    Ok(report)
}

async fn invoke(
    ctx: &Ctx,
    profile: &str,
    function: Option<&str>,
) -> Result<ReadinessReport, CliError> {
    let function = function.map(str::to_owned).unwrap_or_else(|| {
        if ctx.emulator {
            LOCAL_READINESS_FUNCTION
        } else {
            DEFAULT_READINESS_FUNCTION
        }
        .to_owned()
    });
    let request = json!({"action": "readiness", "profile": profile});
    let answer = ctx
        .invoke_function(&function, "the readiness function", &request)
        .await?;
    serde_json::from_value(answer).map_err(|e| {
        CliError::Function(format!(
            "the readiness function answered something that is not a readiness report: {e}"
        ))
    })
}

fn print(ctx: &Ctx, report: &ReadinessReport) {
    ctx.out.say(format!(
        "profile {}: {} (checked {})",
        report.profile,
        if report.ready { "READY" } else { "NOT READY" },
        report.checked_at.format("%Y-%m-%d %H:%M:%S UTC")
    ));
    for check in &report.checks {
        ctx.out.say(format!(
            "  {} {:<19} {}",
            if check.passed { "ok  " } else { "FAIL" },
            check.name,
            check.detail
        ));
    }
}
