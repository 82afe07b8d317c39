//! What the local stack's users (the CLI's `local` commands and the test kit) share: where
//! the repository and its scripts are, and plain requests to the emulator for what no SDK
//! client the project links does (moto's control API, IAM roles for its Lambda).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

/// The repository root: `DRPILOT_ROOT`, else the nearest ancestor of the current
/// directory holding `scripts/local-stack.sh`, else the checkout this crate was built in.
pub fn repo_root() -> PathBuf {
    if let Some(root) = std::env::var_os("DRPILOT_ROOT") {
        return root.into();
    }
    if let Ok(mut dir) = std::env::current_dir() {
        loop {
            if dir.join("scripts/local-stack.sh").exists() {
                return dir;
            }
            if !dir.pop() {
                break;
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Sends one HTTP/1.1 request to the emulator on `port` and returns the status code and
/// body. `headers` are added as they are.
pub fn http_with(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad HTTP response: {response:.200}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// [`http_with`] a JSON body (moto's control API).
pub fn http(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    http_with(
        port,
        method,
        path,
        &[("Content-Type", "application/json")],
        body,
    )
}

/// Creates the IAM role `name` in the emulator (its Lambda refuses a function whose role
/// does not exist): one IAM query request, with the unsigned authorization header the
/// emulator routes by.
pub fn emulator_role(port: u16, name: &str) -> Result<String, String> {
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    let body = format!(
        "Action=CreateRole&Version=2010-05-08&RoleName={name}&AssumeRolePolicyDocument={}",
        percent_encoding::utf8_percent_encode(trust, percent_encoding::NON_ALPHANUMERIC)
    );
    let (status, answer) = http_with(
        port,
        "POST",
        "/",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0"),
        ],
        &body,
    )?;
    if status != 200 && !answer.contains("EntityAlreadyExists") {
        return Err(format!("CreateRole {name}: HTTP {status}: {answer:.300}"));
    }
    Ok(format!("arn:aws:iam::123456789012:role/{name}"))
}

/// Registers `name` as a function in the emulator's Lambda (with a role, which it checks
/// exists), so `GetFunction` finds it; its invocations go to the real binary of that name
/// under `cargo lambda watch`. Idempotent.
pub async fn emulator_function(
    lambda: &aws_sdk_lambda::Client,
    port: u16,
    name: &str,
) -> Result<(), String> {
    if lambda
        .get_function()
        .function_name(name)
        .send()
        .await
        .is_ok()
    {
        return Ok(());
    }
    let role = emulator_role(port, &format!("drpilot-{name}"))?;
    lambda
        .create_function()
        .function_name(name)
        .runtime(aws_sdk_lambda::types::Runtime::Providedal2023)
        .handler("bootstrap")
        .role(role)
        // Stored, never run: the emulator forwards invocations to `cargo lambda watch`.
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(aws_sdk_lambda::primitives::Blob::new(
                    b"served by cargo lambda watch".to_vec(),
                ))
                .build(),
        )
        .send()
        .await
        .map_err(|e| sdk_error(&format!("CreateFunction {name}"), &e))?;
    Ok(())
}

/// A database in the emulator's RDS (created if missing) and, with `snapshot`, a new
/// manual snapshot of it named `<identifier>-<suffix>`: what production has for an
/// `rds_snapshot` component to restore.
pub async fn emulator_database(
    rds: &aws_sdk_rds::Client,
    identifier: &str,
    snapshot: Option<&str>,
) -> Result<(), String> {
    let describe = |e: &dyn std::error::Error| format!("{identifier}: {e}");
    if drpilot_shared::restored::rds_instance(rds, identifier)
        .await
        .map_err(|e| describe(&e))?
        .is_none()
    {
        rds.create_db_instance()
            .db_instance_identifier(identifier)
            .engine("postgres")
            .db_instance_class("db.t4g.micro")
            .allocated_storage(20)
            .master_username("drpilot")
            .master_user_password("emulator-password-1")
            .send()
            .await
            .map_err(|e| sdk_error(&format!("CreateDBInstance {identifier}"), &e))?;
    }
    if let Some(suffix) = snapshot {
        rds.create_db_snapshot()
            .db_instance_identifier(identifier)
            .db_snapshot_identifier(format!("{identifier}-{suffix}"))
            .send()
            .await
            .map_err(|e| sdk_error(&format!("CreateDBSnapshot {identifier}"), &e))?;
    }
    Ok(())
}

/// The name the template gives the stack's drill schedule when the stack is named
/// `drpilot` (`<stack>-monthly-drill`), which the local stack and the tests mirror.
pub const DRILL_SCHEDULE: &str = "drpilot-monthly-drill";

/// The stack's drill schedule in the emulator's EventBridge Scheduler, created if
/// missing, in the state `enabled` says (the template creates it disabled unless
/// `EnableTriggers=true`); failback's preflight reads it.
pub async fn emulator_schedule(
    scheduler: &aws_sdk_scheduler::Client,
    state_machine_arn: &str,
    enabled: bool,
) -> Result<(), String> {
    use aws_sdk_scheduler::types::{
        FlexibleTimeWindow, FlexibleTimeWindowMode, ScheduleState, Target,
    };
    let fail =
        |what: &str, e: &dyn std::error::Error| sdk_error(&format!("{what} {DRILL_SCHEDULE}"), e);
    let build = |what: &str, e: aws_sdk_scheduler::error::BuildError| fail(what, &e);
    let window = FlexibleTimeWindow::builder()
        .mode(FlexibleTimeWindowMode::Off)
        .build()
        .map_err(|e| build("FlexibleTimeWindow", e))?;
    let target = Target::builder()
        .arn(state_machine_arn)
        // The emulator checks no role; the template gives the schedule its own.
        .role_arn("arn:aws:iam::123456789012:role/drpilot-scheduler")
        .input("{\"mode\":\"drill\"}")
        .build()
        .map_err(|e| build("Target", e))?;
    let state = if enabled {
        ScheduleState::Enabled
    } else {
        ScheduleState::Disabled
    };
    let exists = scheduler
        .get_schedule()
        .name(DRILL_SCHEDULE)
        .send()
        .await
        .is_ok();
    if exists {
        scheduler
            .update_schedule()
            .name(DRILL_SCHEDULE)
            .schedule_expression("cron(0 9 ? * 2#1 *)")
            .flexible_time_window(window)
            .target(target)
            .state(state)
            .send()
            .await
            .map_err(|e| fail("UpdateSchedule", &e))?;
    } else {
        scheduler
            .create_schedule()
            .name(DRILL_SCHEDULE)
            .schedule_expression("cron(0 9 ? * 2#1 *)")
            .flexible_time_window(window)
            .target(target)
            .state(state)
            .send()
            .await
            .map_err(|e| fail("CreateSchedule", &e))?;
    }
    Ok(())
}

/// The approval key's alias on the local stack and in the tests: the template's
/// `alias/<stack>-approval` for the stack `drpilot`.
pub const APPROVAL_KEY_ALIAS: &str = "alias/drpilot-approval";

/// The emulator's HMAC key the approve function seals with and promote verifies with
/// (KMS `HMAC_256`, `GENERATE_VERIFY_MAC`), under [`APPROVAL_KEY_ALIAS`]; created when
/// the alias is missing. Returns the key's ARN.
pub async fn emulator_approval_key(kms: &aws_sdk_kms::Client) -> Result<String, String> {
    if let Ok(found) = kms.describe_key().key_id(APPROVAL_KEY_ALIAS).send().await {
        if let Some(arn) = found.key_metadata().and_then(|m| m.arn()) {
            return Ok(arn.to_owned());
        }
    }
    let created = kms
        .create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::Hmac256)
        .key_usage(aws_sdk_kms::types::KeyUsageType::GenerateVerifyMac)
        .description("drpilot approval seals (local stack)")
        .send()
        .await
        .map_err(|e| sdk_error("CreateKey", &e))?;
    let metadata = created
        .key_metadata()
        .ok_or("CreateKey answered without key metadata")?;
    kms.create_alias()
        .alias_name(APPROVAL_KEY_ALIAS)
        .target_key_id(metadata.key_id())
        .send()
        .await
        .map_err(|e| sdk_error("CreateAlias", &e))?;
    Ok(metadata.arn().unwrap_or_default().to_owned())
}

/// The state machines the approve function answers on the local stack and in the tests:
/// the drill's and the failback's, as the local stack deploys them.
pub const STATE_MACHINES: [&str; 2] = [
    "arn:aws:states:us-east-1:123456789012:stateMachine:drpilot-drill",
    "arn:aws:states:us-east-1:123456789012:stateMachine:drpilot-failback",
];

/// An evidence bucket in the emulator as the template creates it: versioned, with S3
/// Object Lock in compliance mode retaining every new object version `days` days by
/// default. Idempotent.
pub async fn emulator_evidence_bucket(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    days: i32,
) -> Result<(), String> {
    use aws_sdk_s3::types::{
        DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockRetentionMode,
        ObjectLockRule,
    };
    let fail = |what: &str, e: &dyn std::error::Error| sdk_error(&format!("{what} {bucket}"), e);
    if s3.head_bucket().bucket(bucket).send().await.is_ok() {
        // Made before (and perhaps written to since): its lock configuration stands.
        return Ok(());
    }
    {
        s3.create_bucket()
            .bucket(bucket)
            // Object Lock can only be switched on when the bucket is created; it turns
            // versioning on with it.
            .object_lock_enabled_for_bucket(true)
            .send()
            .await
            .map_err(|e| fail("CreateBucket", &e))?;
    }
    let rule = ObjectLockRule::builder()
        .default_retention(
            DefaultRetention::builder()
                .mode(ObjectLockRetentionMode::Compliance)
                .days(days)
                .build(),
        )
        .build();
    s3.put_object_lock_configuration()
        .bucket(bucket)
        .object_lock_configuration(
            ObjectLockConfiguration::builder()
                .object_lock_enabled(ObjectLockEnabled::Enabled)
                .rule(rule)
                .build(),
        )
        .send()
        .await
        .map_err(|e| fail("PutObjectLockConfiguration", &e))?;
    Ok(())
}

/// An SDK call's failure as one line: `what`, then the error and its causes.
fn sdk_error(what: &str, e: &dyn std::error::Error) -> String {
    format!(
        "{what}: {}",
        aws_smithy_types::error::display::DisplayErrorContext(e)
    )
}
