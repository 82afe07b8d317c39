//! The local stack and the local drill (the README's main job): the same state machine
//! definition that deploys, the real phase handlers under `cargo lambda watch`, moto as
//! AWS, and a generated demo backup in the backup contract format.

use std::path::{Path, PathBuf};
use std::process::Command;

use aws_sdk_s3::primitives::ByteStream;
use chrono::{Duration, Utc};
use serde_json::json;

use drpilot_shared::objects::upload_tree;
use drpilot_shared::profile::ProfileSource;
use drpilot_shared::S3Uri;
use drpilot_tools::local::repo_root;

use crate::history::ExecutionState;
use crate::{
    html, records, Approver, CliError, Ctx, Out, DEFAULT_STATE_MACHINE, FAILBACK_STATE_MACHINE,
};

pub const ENDPOINT: &str = "http://127.0.0.1:4599";
pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";
pub const PROFILE: &str = "demo";
pub const DATA_BUCKET: &str = "drpilot-demo-data";
/// The demo's primary site: where a failback returns the data the drill promoted.
pub const PRIMARY_BUCKET: &str = "drpilot-demo-primary";
pub const BACKUP_BUCKET: &str = "drpilot-demo-backups";
/// Where the demo's receipts, summaries, audit copies and reports go: a bucket with S3
/// Object Lock (compliance mode), as the template's evidence bucket.
pub const EVIDENCE_BUCKET: &str = "drpilot-demo-evidence";
/// The demo evidence's retention (the template's default).
pub const EVIDENCE_RETENTION_DAYS: i32 = 1095;
pub const TOPIC: &str = "drpilot-notifications";
pub const QUEUE: &str = "drpilot-notifications-inbox";
/// The demo's production database, whose snapshot the drill restores as a component.
pub const DEMO_DB: &str = "demo-orders";
/// The example verifier the drill's `lambda` component invokes (a binary of this
/// repository, served by `cargo lambda watch` under its binary name).
pub const VERIFIER: &str = "sample-verifier";
/// The demo storefront's health page, served by `scripts/local-stack.sh` on
/// `DRPILOT_SITE_PORT` (the drill's `http` component).
fn site_port() -> u16 {
    std::env::var("DRPILOT_SITE_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9011)
}

fn run_script(args: &[&str]) -> Result<(), CliError> {
    let root = repo_root();
    let status = Command::new(root.join("scripts/local-stack.sh"))
        .args(args)
        .current_dir(&root)
        .status()
        .map_err(|e| CliError::Io(format!("running scripts/local-stack.sh: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(CliError::Io(format!(
            "scripts/local-stack.sh {} failed: {status}",
            args.join(" ")
        )))
    }
}

/// What `up` and `drill` leave ready: the stack, the demo profile and its buckets, the
/// notification topic and its inbox queue, and the state machine.
pub struct Stack {
    pub ctx: Ctx,
    /// The SQS queue the topic delivers to (the drill reads its notifications back).
    pub queue: String,
}

/// Starts the stack and provisions everything a run of the demo profile needs.
async fn prepare(out: Out) -> Result<Stack, CliError> {
    out.say("== starting the local stack (moto + cargo lambda watch)");
    run_script(&["up"])?;
    let ctx = Ctx::new(Some(ENDPOINT), Some(DEFAULT_STATE_MACHINE.to_owned()), out).await;
    out.say("== provisioning buckets, profile, notifications and the state machine");
    let (topic, queue) = provision(&ctx).await?;
    for (machine, name) in [
        (Machine::Drill, DEFAULT_STATE_MACHINE),
        (Machine::Failback, FAILBACK_STATE_MACHINE),
    ] {
        let arn = deploy_state_machine(&ctx, machine, name, &topic, 3600).await?;
        out.say(format!("   state machine {arn} ({})", machine.file()));
    }
    Ok(Stack { ctx, queue })
}

/// `drpilot local up`: the stack, provisioned as the drill provisions it, with a demo
/// backup (made once), so `drpilot --local start --profile demo` works right after it.
pub async fn up(out: Out) -> Result<(), CliError> {
    let stack = prepare(out).await?;
    let backups = stack
        .ctx
        .aws
        .s3
        .list_objects_v2()
        .bucket(BACKUP_BUCKET)
        .prefix("demo/backups/")
        .max_keys(1)
        .send()
        .await
        .map_err(|e| {
            CliError::aws(
                &format!("ListObjectsV2 s3://{BACKUP_BUCKET}/demo/backups/"),
                e,
            )
        })?;
    if backups.contents().is_empty() {
        out.say("== seeding a demo backup (3003 objects) and production root/");
        let backup = seed_backup(&stack.ctx, 3000).await?;
        out.say(format!("   backup {backup}"));
    }
    out.say(format!(
        "== ready: drpilot --local start --profile {PROFILE}   (stop with drpilot local down)"
    ));
    Ok(())
}

pub fn down() -> Result<(), CliError> {
    run_script(&["down"])
}

/// A state machine of the repository, by its ASL file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// `statemachine/drill.asl.json`: drills and recoveries.
    Drill,
    /// `statemachine/failback.asl.json`.
    Failback,
}

impl Machine {
    pub fn file(self) -> &'static str {
        match self {
            Self::Drill => "statemachine/drill.asl.json",
            Self::Failback => "statemachine/failback.asl.json",
        }
    }
}

/// A state machine definition with this stack's function ARNs and topic.
pub fn definition(
    root: &Path,
    machine: Machine,
    topic_arn: &str,
    approval_timeout: u32,
) -> Result<String, CliError> {
    let path = root.join(machine.file());
    let mut text = std::fs::read_to_string(&path)
        .map_err(|e| CliError::Io(format!("reading {}: {e}", path.display())))?;
    let function = |name: &str| format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}");
    let substitutions = [
        ("BringupFunctionArn", function("bringup")),
        ("RestoreFunctionArn", function("restore")),
        ("ValidateFunctionArn", function("validate")),
        ("ParityReportFunctionArn", function("parity-report")),
        ("ComponentsFunctionArn", function("components")),
        ("PromoteFunctionArn", function("promote")),
        ("TeardownFunctionArn", function("teardown")),
        ("FailbackFunctionArn", function("failback")),
        ("TopicArn", topic_arn.to_owned()),
        ("ApprovalTimeoutSeconds", approval_timeout.to_string()),
        (
            "ApprovalHeartbeatSeconds",
            approval_timeout.saturating_sub(1).max(1).to_string(),
        ),
        (
            "FanOutConcurrency",
            drpilot_shared::budget::MAX_CHILDREN.to_string(),
        ),
    ];
    for (name, value) in substitutions {
        text = text.replace(&format!("${{{name}}}"), &value);
    }
    if let Some(left) = text.find("${") {
        return Err(CliError::Usage(format!(
            "{}: unsubstituted placeholder near {:?}",
            path.display(),
            &text[left..(left + 40).min(text.len())]
        )));
    }
    Ok(text)
}

/// Creates (or updates) the state machine named `name` from the repository's ASL.
pub async fn deploy_state_machine(
    ctx: &Ctx,
    machine: Machine,
    name: &str,
    topic_arn: &str,
    approval_timeout: u32,
) -> Result<String, CliError> {
    let definition = definition(&repo_root(), machine, topic_arn, approval_timeout)?;
    let role = format!("arn:aws:iam::{ACCOUNT}:role/drpilot-state-machine");
    let existing = ctx
        .sfn
        .list_state_machines()
        .send()
        .await
        .map_err(|e| CliError::aws("ListStateMachines", e))?
        .state_machines()
        .iter()
        .find(|m| m.name() == name)
        .map(|m| m.state_machine_arn().to_owned());
    match existing {
        Some(arn) => {
            ctx.sfn
                .update_state_machine()
                .state_machine_arn(&arn)
                .definition(definition)
                .send()
                .await
                .map_err(|e| CliError::aws("UpdateStateMachine", e))?;
            Ok(arn)
        }
        None => Ok(ctx
            .sfn
            .create_state_machine()
            .name(name)
            .definition(definition)
            .role_arn(role)
            .send()
            .await
            .map_err(|e| CliError::aws("CreateStateMachine", e))?
            .state_machine_arn()
            .to_owned()),
    }
}

/// Buckets, profile, metrics the profile's checks read, and the notification topic with
/// an SQS inbox (raw delivery) to read notifications back. Idempotent.
pub async fn provision(ctx: &Ctx) -> Result<(String, String), CliError> {
    for bucket in [DATA_BUCKET, BACKUP_BUCKET, PRIMARY_BUCKET] {
        let exists = ctx.aws.s3.head_bucket().bucket(bucket).send().await.is_ok();
        if !exists {
            ctx.aws
                .s3
                .create_bucket()
                .bucket(bucket)
                .send()
                .await
                .map_err(|e| CliError::aws(&format!("CreateBucket {bucket}"), e))?;
        }
    }
    let profile = json!({
        "target": {"bucket": DATA_BUCKET},
        "primary": {"bucket": PRIMARY_BUCKET},
        "backups": format!("s3://{BACKUP_BUCKET}/demo/backups/"),
        "receipts": format!("s3://{EVIDENCE_BUCKET}/drpilot/receipts/"),
        "account_id": ACCOUNT,
        "region": REGION,
        "rto_target_seconds": 900,
        "rpo_target_seconds": 14400,
        "allow_drill_failback_literals": true,
        "checks": [
            {"type": "cloudwatch_metric", "name": "no failed syncs", "namespace": "DemoApp", "metric_name": "SyncFailed", "missing_data_passes": false},
            {"type": "cloudwatch_metric", "name": "no missed syncs", "namespace": "DemoApp", "metric_name": "NoSync", "missing_data_passes": false}
        ],
        "components": [
            {"name": "orders-db", "kind": "rds_snapshot", "db_instance_identifier": DEMO_DB,
             "rto_target_seconds": 120, "rpo_target_seconds": 14400, "poll_seconds": 2},
            {"name": "decode-sample", "kind": "lambda", "function": VERIFIER, "after_restore": true,
             "parameters": {"sample": 50}, "rto_target_seconds": 300, "poll_seconds": 2},
            {"name": "storefront", "kind": "http", "url": format!("http://127.0.0.1:{}/health.json", site_port()),
             "body_contains": "\"status\": \"ok\"", "rto_target_seconds": 60, "poll_seconds": 2}
        ]
    });
    drpilot_tools::local::emulator_evidence_bucket(
        &ctx.aws.s3,
        EVIDENCE_BUCKET,
        EVIDENCE_RETENTION_DAYS,
    )
    .await
    .map_err(CliError::LocalStack)?;
    drpilot_tools::local::emulator_approval_key(&ctx.aws.kms())
        .await
        .map_err(CliError::LocalStack)?;
    demo_components(ctx).await?;
    // The stack's drill schedule, disabled as the template deploys it by default.
    let scheduler = aws_sdk_scheduler::Client::new(&ctx.aws.config);
    let drill_machine =
        format!("arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{DEFAULT_STATE_MACHINE}");
    drpilot_tools::local::emulator_schedule(&scheduler, &drill_machine, false)
        .await
        .map_err(CliError::LocalStack)?;
    ProfileSource::Ssm(ctx.aws.ssm.clone())
        .save(PROFILE, &profile.to_string())
        .await?;
    // The demo application reports healthy syncs.
    for metric in ["SyncFailed", "NoSync"] {
        ctx.aws
            .cloudwatch
            .put_metric_data()
            .namespace("DemoApp")
            .metric_data(
                aws_sdk_cloudwatch::types::MetricDatum::builder()
                    .metric_name(metric)
                    .value(0.0)
                    .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
                        Utc::now().timestamp() - 30,
                    ))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| CliError::aws("PutMetricData", e))?;
    }
    notifications(ctx).await
}

/// What the demo profile's components need in the emulator: the production database, a
/// fresh snapshot of it (the newest is what a drill restores, so each drill's RPO is
/// measured from a snapshot taken as it is provisioned), and the verifier function (its
/// role first: the emulator's Lambda checks it exists). Idempotent.
async fn demo_components(ctx: &Ctx) -> Result<(), CliError> {
    let suffix = Utc::now().format("%Y%m%d%H%M%S%3f").to_string();
    drpilot_tools::local::emulator_database(&ctx.aws.rds(), DEMO_DB, Some(&suffix))
        .await
        .map_err(CliError::LocalStack)?;
    let port = ENDPOINT
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(4599);
    // The approve function needs no registration: the emulator forwards Invoke by name.
    drpilot_tools::local::emulator_function(&ctx.aws.lambda(), port, VERIFIER)
        .await
        .map_err(CliError::LocalStack)?;
    Ok(())
}

/// The SNS topic and an SQS queue subscribed to it (raw delivery), so the drill can read
/// back what the run sent. Returns the topic ARN and the queue URL.
async fn notifications(ctx: &Ctx) -> Result<(String, String), CliError> {
    let topic = ctx
        .sns
        .create_topic()
        .name(TOPIC)
        .send()
        .await
        .map_err(|e| CliError::aws("CreateTopic", e))?
        .topic_arn()
        .unwrap_or_default()
        .to_owned();
    let queue = ctx
        .sqs
        .create_queue()
        .queue_name(QUEUE)
        .send()
        .await
        .map_err(|e| CliError::aws("CreateQueue", e))?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let queue_arn = format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{QUEUE}");
    let subscribed = ctx
        .sns
        .list_subscriptions_by_topic()
        .topic_arn(&topic)
        .send()
        .await
        .map_err(|e| CliError::aws("ListSubscriptionsByTopic", e))?
        .subscriptions()
        .iter()
        .any(|s| s.endpoint() == Some(queue_arn.as_str()));
    if !subscribed {
        ctx.sns
            .subscribe()
            .topic_arn(&topic)
            .protocol("sqs")
            .endpoint(&queue_arn)
            .attributes("RawMessageDelivery", "true")
            .send()
            .await
            .map_err(|e| CliError::aws("Subscribe", e))?;
    }
    Ok((topic, queue))
}

/// Writes the demo application's state: `count` JSON objects across nested prefixes
/// plus a few binary blobs. `generation` changes a few objects, as production drifts.
pub fn write_demo_state(dir: &Path, count: usize, generation: u32) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::Io(format!("writing demo data: {e}"));
    let regions = ["eu-west-1", "us-east-1", "ap-south-1"];
    for i in 0..count {
        let path = match i % 3 {
            0 => dir.join(format!(
                "customers/{}/c-{i:05}.json",
                regions[i % regions.len()]
            )),
            1 => dir.join(format!("orders/2026/11/{:02}/o-{i:05}.json", 1 + i % 28)),
            _ => dir.join(format!("catalog/{}/{}/item-{i:05}.json", i % 7, i % 11)),
        };
        std::fs::create_dir_all(path.parent().unwrap_or(dir)).map_err(io)?;
        let changed = generation > 0 && i % 997 == 0;
        let body = json!({"id": i, "version": if changed { generation } else { 0 }, "note": "drpilot demo", "pad": "x".repeat(i % 200)});
        std::fs::write(&path, body.to_string()).map_err(io)?;
    }
    std::fs::create_dir_all(dir.join("blobs")).map_err(io)?;
    for b in 0..3u8 {
        let data: Vec<u8> = (0..(300_000 + usize::from(b) * 1000))
            .map(|n| (n % 251) as u8 ^ b)
            .collect();
        std::fs::write(dir.join(format!("blobs/blob-{b}.bin")), data).map_err(io)?;
    }
    Ok(())
}

/// Makes a backup of freshly generated demo state (taken two hours ago, for a visible
/// RPO) and uploads it; returns its URI.
pub async fn seed_backup(ctx: &Ctx, objects: usize) -> Result<String, CliError> {
    let work = tempfile::Builder::new()
        .prefix("drpilot-demo-")
        .tempdir()
        .map_err(|e| CliError::Io(format!("creating a work directory: {e}")))?;
    let work = work.path();
    let src = work.join("state");
    write_demo_state(&src, objects, 0)?;
    let backup_id = format!("demo-{}", Utc::now().format("%Y%m%dT%H%M%SZ"));
    let out = work.join(&backup_id);
    let created_at = (Utc::now() - Duration::hours(2))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let status = Command::new(repo_root().join("scripts/make-backup.sh"))
        .arg("--src")
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .args([
            "--id",
            &backup_id,
            "--created-at",
            &created_at,
            "--git-sha",
            "d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0",
        ])
        .status()
        .map_err(|e| CliError::Io(format!("running make-backup.sh: {e}")))?;
    if !status.success() {
        return Err(CliError::Io(format!("make-backup.sh failed: {status}")));
    }
    for name in ["state.tar.zst", "manifests.tar.zst", "metadata.json"] {
        let body = ByteStream::from_path(out.join(name))
            .await
            .map_err(|e| CliError::Io(format!("reading {name}: {e}")))?;
        ctx.aws
            .s3
            .put_object()
            .bucket(BACKUP_BUCKET)
            .key(format!("demo/backups/{backup_id}/{name}"))
            .body(body)
            .send()
            .await
            .map_err(|e| CliError::aws(&format!("PutObject {name}"), e))?;
    }
    // Production (root/) is the same state plus a little drift since the backup, so the
    // parity report has something real to say.
    let prod = work.join("prod");
    write_demo_state(&prod, objects, 1)?;
    let root = S3Uri::new(DATA_BUCKET, "root/").map_err(drpilot_shared::Error::from)?;
    upload_tree(&ctx.aws.s3, &prod, &root, 32).await?;
    Ok(format!("s3://{BACKUP_BUCKET}/demo/backups/{backup_id}/"))
}

/// Options of `drpilot local drill`.
#[derive(Clone, Debug)]
pub struct DrillOptions {
    pub auto_approve: bool,
    pub objects: usize,
    pub report: Option<PathBuf>,
}

/// `drpilot local drill`: the whole drill on the local stack.
pub async fn drill(options: &DrillOptions, out: Out) -> Result<bool, CliError> {
    let Stack { ctx, queue } = prepare(out).await?;
    out.say(format!(
        "== seeding a demo backup ({} objects) and production root/",
        options.objects + 3
    ));
    let backup = seed_backup(&ctx, options.objects).await?;
    out.say(format!("   backup {backup}"));
    out.say("== running the drill");
    let approver = if options.auto_approve {
        Approver::Auto {
            approver: "local-drill".into(),
            ticket: "LOCAL-DRILL".into(),
        }
    } else {
        Approver::Prompt
    };
    let progress = crate::start(
        &ctx,
        PROFILE,
        None,
        Some(&backup),
        true,
        Some(&approver),
        &crate::StartFlags::full_drill(),
    )
    .await?;
    let run_id = progress.run_id();
    let succeeded = progress.succeeded();
    report_run(&ctx, &run_id, progress.status, options.report.clone()).await?;
    print_notifications(&ctx, &queue).await?;
    out.say(format!(
        "== drill {} — stop the stack with `make local-down`",
        if succeeded { "SUCCEEDED" } else { "FAILED" }
    ));
    Ok(succeeded)
}

/// Prints the run's summary and writes its HTML report (default
/// `.local/reports/<run>.html`).
async fn report_run(
    ctx: &Ctx,
    run_id: &str,
    status: ExecutionState,
    report: Option<PathBuf>,
) -> Result<(), CliError> {
    let out = ctx.out;
    match records(ctx, run_id).await {
        Ok(found) => {
            if let Some(summary) = &found.summary {
                out.say("== summary");
                for line in html::text_report(summary) {
                    out.say(line);
                }
                let path = report.unwrap_or_else(|| {
                    repo_root()
                        .join(".local/reports")
                        .join(format!("{run_id}.html"))
                });
                if let Some(parent) = path.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let store = drpilot_shared::store::ReceiptStore::new(
                    ctx.aws.s3.clone(),
                    found.receipts.clone(),
                );
                let history = store.summaries().await?;
                let audit = Box::pin(crate::audit::gather(
                    &ctx.aws.s3,
                    &store,
                    summary,
                    &found.phases,
                    &history,
                ))
                .await?;
                std::fs::write(&path, html::render_audit(&audit, &found.phases)?)
                    .map_err(|e| CliError::Io(format!("writing {}: {e}", path.display())))?;
                out.say(format!("   receipts     {}", found.receipts_location));
                out.say(format!("   HTML report  {}", path.display()));
            }
            out.result(&json!({"run_id": run_id, "status": status, "summary": found.summary}));
        }
        Err(err) => out.say(format!("   no receipts: {err}")),
    }
    Ok(())
}

/// Prints the notifications the run sent (SNS → SQS) and takes them off the queue.
async fn print_notifications(ctx: &Ctx, queue: &str) -> Result<(), CliError> {
    let out = ctx.out;
    let notes = ctx
        .sqs
        .receive_message()
        .queue_url(queue)
        .max_number_of_messages(10)
        .send()
        .await
        .map_err(|e| CliError::aws("ReceiveMessage", e))?;
    if !notes.messages().is_empty() {
        out.say("== notifications (SNS → SQS)");
        for m in notes.messages() {
            let first = m
                .body()
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or_default();
            out.say(format!("   {first}"));
            if let Some(handle) = m.receipt_handle() {
                let _ = ctx
                    .sqs
                    .delete_message()
                    .queue_url(queue)
                    .receipt_handle(handle)
                    .send()
                    .await;
            }
        }
    }
    Ok(())
}
