//! The local AWS every integration test runs against: one moto server per test process
//! (`infra/local/motoserver.py`, from the project's `.venv`), on a free loopback port,
//! reset before each case. Cases in one process take turns (a case holds the
//! [`LocalAws`] guard while it runs), so a reset never pulls state from under another.
//! The server exits by itself when the test process is gone.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use drpilot_shared::AwsClients;
use tokio::sync::{Mutex, MutexGuard};

pub const REGION: &str = "us-east-1";
/// The account moto answers STS GetCallerIdentity with.
pub const ACCOUNT_ID: &str = "123456789012";

pub use drpilot_tools::local::repo_root;

pub mod quotas;

pub const PROFILE: &str = "test";
pub const TARGET_BUCKET: &str = "target-data";
/// The primary site [`test_profile`] fails back to (the target is the DR site).
pub const PRIMARY_BUCKET: &str = "primary-data";
pub const BACKUP_BUCKET: &str = "backup-store";
/// Where [`test_profile`]'s receipts go: the evidence bucket the template creates for the
/// stack `drpilot` (Object Lock, compliance mode).
pub const EVIDENCE_BUCKET: &str = "drpilot-evidence-123456789012-us-east-1";
/// The evidence bucket's default retention in the tests, as the template's default.
pub const EVIDENCE_RETENTION_DAYS: i32 = 1095;
/// Where [`test_profile`] expects backups: `s3://backup-store/prod/backups/<id>/`.
pub const BACKUP_PREFIX: &str = "prod/backups/";

/// A profile for the local account and region, with every location in the two test buckets.
pub fn test_profile() -> serde_json::Value {
    serde_json::json!({
        "target": {"bucket": TARGET_BUCKET},
        "primary": {"bucket": PRIMARY_BUCKET},
        "backups": format!("s3://{BACKUP_BUCKET}/{BACKUP_PREFIX}"),
        "receipts": format!("s3://{EVIDENCE_BUCKET}/drpilot/receipts/"),
        "account_id": ACCOUNT_ID,
        "region": REGION,
        "rto_target_seconds": 3600,
        "rpo_target_seconds": 86400,
        // The tests' drills promote and fail back unattended where they say so; the
        // attack tests turn these off.
        "allow_drill_promote_bypass": true,
        "allow_drill_failback_literals": true,
        // The tests' sharded backups are tiny: one small shard per range, so they fan out.
        "objects_per_range": 20
    })
}

/// A run of the test profile restoring backup `backup_id` (under [`BACKUP_PREFIX`]), as
/// bringup hands it to the later phases.
pub fn run_context(run_id: &str, backup_id: &str) -> drpilot_shared::run::RunContext {
    let mut input = drpilot_shared::RunInput::drill(PROFILE);
    input.run_id = Some(run_id.into());
    drpilot_shared::run::RunContext {
        run_id: run_id.into(),
        promotion: input.promotion(),
        input,
        trigger: drpilot_shared::input::Trigger::manual(),
        execution_arn: Some(execution_arn(run_id)),
        kickoff_at: chrono::Utc::now(),
        published_generation: 0,
        plan: None,
        backup: drpilot_shared::backup::BackupRef {
            uri: drpilot_shared::S3Uri {
                bucket: BACKUP_BUCKET.into(),
                key: format!("{BACKUP_PREFIX}{backup_id}/"),
            },
            backup_id: backup_id.into(),
            created_at: chrono::Utc::now(),
            git_sha: None,
        },
    }
}

/// The drill execution [`run_context`] names for run `run_id`.
pub fn execution_arn(run_id: &str) -> String {
    format!("arn:aws:states:{REGION}:{ACCOUNT_ID}:execution:drpilot-drill:{run_id}")
}

/// [`run_context`] as a phase's first attempt.
pub fn phase_request(run_id: &str, backup_id: &str) -> drpilot_shared::run::PhaseRequest {
    drpilot_shared::run::PhaseRequest::new(run_context(run_id, backup_id), 0)
}

/// This process's peak resident set size (VmHWM), for benchmarks.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A directory removed when dropped, named after what the test uses it for.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("drpilot-{label}-"))
            .tempdir()
            .expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Runs `scripts/make-backup.sh --src SRC --out OUT` plus `extra` arguments.
pub fn make_backup(src: &Path, out: &Path, extra: &[&str]) {
    let status = Command::new(repo_root().join("scripts/make-backup.sh"))
        .arg("--src")
        .arg(src)
        .arg("--out")
        .arg(out)
        .args(extra)
        .status()
        .expect("run make-backup.sh");
    assert!(status.success(), "make-backup.sh failed: {status}");
}

/// Makes the backup in `dir` fail its hash check: `metadata.json` then names a
/// different SHA-256 for `state.tar.zst` (size unchanged).
pub fn corrupt_state_sha256(dir: &Path) {
    let meta = dir.join("metadata.json");
    let text = std::fs::read_to_string(&meta).expect("read metadata.json");
    let value: serde_json::Value = serde_json::from_str(&text).expect("metadata.json is JSON");
    let sha = value["artifacts"]["state.tar.zst"]["sha256"]
        .as_str()
        .expect("state.tar.zst sha256");
    std::fs::write(&meta, text.replace(sha, &"0".repeat(64))).expect("write metadata.json");
}

/// Runs a shell command line (for fixtures made with ordinary tools), panicking on failure.
pub fn sh(script: &str) {
    let status = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .status()
        .expect("run bash");
    assert!(status.success(), "fixture command failed: {script}");
}

struct Server {
    port: u16,
    /// Where moto forwards Lambda Invoke: a `cargo lambda watch` started on demand.
    lambda_port: u16,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The seconds every Lambda invocation of this process's local AWS may take, unless the
/// process chose otherwise with [`hold_invocations_to`] before its first case: a
/// function held to it stops its resumable work in time (`drpilot_shared::deadline`),
/// and the local stack ends one that overruns it with `Sandbox.Timedout`, as Lambda does
/// at the function's timeout. A third of Lambda's 900 s: the emulator is slower than AWS.
pub const INVOCATION_BUDGET_SECONDS: f64 = 300.0;

static INVOCATION_BUDGET: OnceLock<f64> = OnceLock::new();

/// Holds every Lambda invocation of this process's local AWS to `seconds` (a scaled-down
/// timeout, so that a small test meets what a large run meets on AWS). Call it before the
/// process's first [`LocalAws::start`]; a second call must agree with the first.
pub fn hold_invocations_to(seconds: f64) {
    let held = *INVOCATION_BUDGET.get_or_init(|| seconds);
    assert_eq!(
        held, seconds,
        "this process's invocations are already held to {held} s"
    );
}

fn invocation_budget() -> f64 {
    *INVOCATION_BUDGET.get_or_init(|| INVOCATION_BUDGET_SECONDS)
}
static TURN: Mutex<()> = Mutex::const_new(());

fn server() -> &'static Server {
    SERVER.get_or_init(|| start_server().unwrap_or_else(|e| panic!("local AWS: {e}")))
}

fn start_server() -> Result<Server, String> {
    let root = repo_root();
    let status = Command::new(root.join("scripts/ensure-venv.sh"))
        .status()
        .map_err(|e| format!("running scripts/ensure-venv.sh: {e}"))?;
    if !status.success() {
        return Err(format!("scripts/ensure-venv.sh failed: {status}"));
    }
    let dir = std::env::temp_dir().join(format!("drpilot-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let port_file = dir.join("moto.port");
    let log_path = dir.join("moto.log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let lambda_port = free_port()?;
    Command::new(root.join(".venv/bin/python"))
        .env(
            "DRPILOT_LAMBDA_ENDPOINT",
            format!("http://127.0.0.1:{lambda_port}"),
        )
        .env("DRPILOT_LAMBDA_TIMEOUT", invocation_budget().to_string())
        .arg(root.join("infra/local/motoserver.py"))
        .args(["--port", "0", "--port-file"])
        .arg(&port_file)
        .args(["--parent-pid", &std::process::id().to_string()])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("starting motoserver.py: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(&port_file) {
            if let Ok(port) = text.trim().parse::<u16>() {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Server { port, lambda_port });
                }
            }
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("moto did not start within 60 s; its log:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

static FUNCTIONS: OnceLock<Result<(), String>> = OnceLock::new();

/// Starts `cargo lambda watch` (once per process) serving the phase functions on the
/// port moto forwards Lambda Invoke to, with this emulator as their AWS. Builds the
/// functions first so the first invocation does not wait for a compile.
fn start_functions(server: &Server) -> Result<(), String> {
    let root = repo_root();
    let status = Command::new(root.join("scripts/ensure-venv.sh"))
        .arg("--build")
        .status()
        .map_err(|e| format!("running scripts/ensure-venv.sh --build: {e}"))?;
    if !status.success() {
        return Err(format!("scripts/ensure-venv.sh --build failed: {status}"));
    }
    let built = Command::new(root.join("scripts/build-functions.sh"))
        .status()
        .map_err(|e| format!("running scripts/build-functions.sh: {e}"))?;
    if !built.success() {
        return Err(format!("building the functions failed: {built}"));
    }
    let dir = std::env::temp_dir().join(format!("drpilot-test-{}", std::process::id()));
    let log_path = dir.join("watch.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let path = format!(
        "{}:{}",
        root.join(".venv/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(root.join("scripts/with-parent.sh"))
        .arg(std::process::id().to_string())
        .args(["cargo", "lambda", "watch", "--ignore-changes"])
        .args(["--invoke-address", "127.0.0.1"])
        .args(["--invoke-port", &server.lambda_port.to_string()])
        .current_dir(&root)
        .env("PATH", path)
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", server.port),
        )
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", REGION)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("DRPILOT_DEFAULT_PROFILE", PROFILE)
        .env(
            "DRPILOT_DRILL_SCHEDULE",
            drpilot_tools::local::DRILL_SCHEDULE,
        )
        .env(
            drpilot_shared::approval::APPROVAL_KEY_ENV,
            drpilot_tools::local::APPROVAL_KEY_ALIAS,
        )
        .env(
            drpilot_shared::deadline::BUDGET_ENV,
            invocation_budget().to_string(),
        )
        // The longest approval timeout the tests deploy their machines with (600 s).
        .env("DRPILOT_APPROVAL_TIMEOUT_SECONDS", "600")
        .env(
            "DRPILOT_STATE_MACHINES",
            drpilot_tools::local::STATE_MACHINES.join(","),
        )
        .env_remove("AWS_PROFILE")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("starting cargo lambda watch: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while TcpStream::connect(("127.0.0.1", server.lambda_port)).is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("cargo lambda watch did not start; its log:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

pub use drpilot_tools::local::http;

/// An interceptor that lets the first `allowed` requests of one operation through and
/// fails every later one before it is sent: a fault injected into a real client (a copy
/// cut off in the middle) where the emulator has no way to fail on cue.
#[derive(Clone, Debug)]
pub struct FailAfter {
    operation: &'static str,
    allowed: u32,
    seen: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl FailAfter {
    pub fn new(operation: &'static str, allowed: u32) -> Self {
        Self {
            operation,
            allowed,
            seen: std::sync::Arc::default(),
        }
    }

    /// `s3` with every `operation` after its first `allowed` refused before it is sent.
    pub fn s3(
        s3: &aws_sdk_s3::Client,
        operation: &'static str,
        allowed: u32,
    ) -> aws_sdk_s3::Client {
        let conf = s3
            .config()
            .to_builder()
            .interceptor(Self::new(operation, allowed))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for FailAfter {
    fn name(&self) -> &'static str {
        "drpilot_testkit::FailAfter"
    }

    fn read_before_transmit(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map(|m| m.name().to_owned());
        if operation.as_deref() != Some(self.operation) {
            return Ok(());
        }
        let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if n > self.allowed {
            return Err(format!(
                "injected fault: {} number {n} refused (the first {} went through)",
                self.operation, self.allowed
            )
            .into());
        }
        Ok(())
    }
}

/// A health page on loopback for `http` components: answers 503 until it has been asked
/// `ready_after` times, then 200 with `{"status": "ok"}`. Returns its port and how often it
/// was asked.
pub async fn health_page(ready_after: u32) -> (u16, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let port = listener.local_addr().expect("its address").port();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await;
            let (status, body) = if n > ready_after {
                ("200 OK", "{\"status\": \"ok\"}")
            } else {
                ("503 Service Unavailable", "starting")
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    (port, asked)
}

/// When a case ends (unless it already failed), every execution it ran is held to AWS's
/// Step Functions and Lambda quotas ([`quotas`]): a breach fails the case, as it would
/// fail the execution on AWS.
impl Drop for LocalAws {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        match quotas::breaches(self.port, REGION) {
            Ok(found) if found.is_empty() => {}
            Ok(found) => panic!(
                "AWS quotas breached (each would fail the execution on AWS):\n  {}",
                found.join("\n  ")
            ),
            Err(e) => panic!("reading the case's executions back for the quota check: {e}"),
        }
    }
}

/// One test case's turn on the local AWS: freshly reset, with clients pointed at it.
pub struct LocalAws {
    pub clients: AwsClients,
    pub endpoint: String,
    pub port: u16,
    _turn: MutexGuard<'static, ()>,
}

impl LocalAws {
    /// Waits for this process's earlier cases to finish, resets the emulator, and hands
    /// out clients for it.
    pub async fn start() -> Self {
        let turn = TURN.lock().await;
        let port = server().port;
        let (status, body) = http(port, "POST", "/moto-api/reset", "").expect("reset local AWS");
        assert_eq!(status, 200, "moto reset failed: {body}");
        let endpoint = format!("http://127.0.0.1:{port}");
        let config = AwsClients::emulator_config(&endpoint, REGION).await;
        let clients = AwsClients::from_config(config);
        drpilot_tools::local::emulator_approval_key(&clients.kms())
            .await
            .unwrap_or_else(|e| panic!("the approval key: {e}"));
        Self {
            clients,
            endpoint,
            port,
            _turn: turn,
        }
    }

    /// Makes sure the phase functions answer Lambda Invoke (for state machine runs).
    pub fn with_functions(&self) {
        let started = FUNCTIONS.get_or_init(|| start_functions(server()));
        if let Err(e) = started {
            panic!("phase functions: {e}");
        }
    }

    /// Seals and verifies approvals with the emulator's approval key, as the approve
    /// function and promote do.
    pub fn sealer(&self) -> drpilot_shared::approval::Sealer {
        drpilot_shared::approval::Sealer::new(
            self.clients.kms(),
            drpilot_tools::local::APPROVAL_KEY_ALIAS,
        )
    }

    /// An approval of run `run_id` by `approver`, sealed as the approve function seals
    /// it for the approval wait of the execution [`run_context`] names (no principal).
    pub async fn sealed_approval(
        &self,
        run_id: &str,
        approver: &str,
        ticket: &str,
    ) -> drpilot_shared::approval::Approval {
        let mut approval = drpilot_shared::approval::Approval {
            approver: approver.into(),
            ticket: ticket.into(),
            approved_at: Some(chrono::Utc::now()),
            comment: None,
            principal: None,
            verified: false,
            seal: None,
        };
        let scope = drpilot_shared::approval::SealScope {
            execution_arn: execution_arn(run_id),
            state: drpilot_shared::approval::DRILL_APPROVAL_STATE.into(),
            task_token_sha256: "0".repeat(64),
        };
        approval.seal = Some(
            self.sealer()
                .seal(
                    run_id,
                    &scope,
                    drpilot_shared::approval::Decision::Approve,
                    &approval,
                )
                .await
                .expect("sealing an approval"),
        );
        approval
    }

    /// The receipts of runs of [`test_profile`].
    pub fn receipts(&self) -> drpilot_shared::store::ReceiptStore {
        drpilot_shared::store::ReceiptStore::new(
            self.s3().clone(),
            drpilot_shared::S3Uri {
                bucket: EVIDENCE_BUCKET.into(),
                key: "drpilot/receipts/".into(),
            },
        )
    }

    pub fn s3(&self) -> &aws_sdk_s3::Client {
        &self.clients.s3
    }

    pub async fn create_bucket(&self, bucket: &str) {
        self.s3()
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
    }

    pub async fn put_text(&self, bucket: &str, key: &str, body: &str) {
        self.s3()
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body.as_bytes().to_vec().into())
            .send()
            .await
            .unwrap_or_else(|e| panic!("put s3://{bucket}/{key}: {e:?}"));
    }

    /// Puts many small objects, 32 requests in flight.
    pub async fn put_many(&self, bucket: &str, objects: Vec<(String, String)>) {
        use futures::StreamExt;
        futures::stream::iter(objects)
            .map(|(key, body)| async move { self.put_text(bucket, &key, &body).await })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
    }

    /// The environment `rclone` needs to reach this emulator as remote `local:`.
    pub fn rclone_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RCLONE_CONFIG_LOCAL_TYPE", "s3".into()),
            ("RCLONE_CONFIG_LOCAL_PROVIDER", "Other".into()),
            ("RCLONE_CONFIG_LOCAL_ENDPOINT", self.endpoint.clone()),
            ("RCLONE_CONFIG_LOCAL_ACCESS_KEY_ID", "testing".into()),
            ("RCLONE_CONFIG_LOCAL_SECRET_ACCESS_KEY", "testing".into()),
            ("RCLONE_CONFIG_LOCAL_REGION", REGION.into()),
            ("RCLONE_CONFIG_LOCAL_FORCE_PATH_STYLE", "true".into()),
        ]
    }

    pub async fn get_text(&self, bucket: &str, key: &str) -> Option<String> {
        let out = self
            .s3()
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .ok()?;
        let bytes = out.body.collect().await.ok()?.into_bytes();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Uploads every file under `dir` to `s3://bucket/prefix/<relative path>`.
    pub async fn upload_dir(&self, bucket: &str, prefix: &str, dir: &Path) {
        let dest = drpilot_shared::S3Uri::new(bucket, prefix).expect("a valid location");
        drpilot_shared::objects::upload_tree(self.s3(), dir, &dest, 32)
            .await
            .unwrap_or_else(|e| panic!("upload {} to {dest}: {e}", dir.display()));
    }

    /// Stores a profile in SSM as `/drpilot/profiles/<name>`.
    pub async fn put_profile(&self, name: &str, profile: &serde_json::Value) {
        // As it is, valid or not: tests store broken profiles on purpose.
        drpilot_shared::profile::put_parameter(&self.clients.ssm, name, &profile.to_string())
            .await
            .unwrap_or_else(|e| panic!("put profile {name}: {e}"));
    }

    /// The SDK configuration of a person: the emulator's STS `AssumeRole` into `role` as
    /// session `session`, so the emulator's `GetCallerIdentity` answers with
    /// `arn:aws:sts::<account>:assumed-role/<role>/<session>` for requests they sign.
    pub async fn person(&self, role: &str, session: &str) -> aws_config::SdkConfig {
        let assumed = self
            .clients
            .sts
            .assume_role()
            .role_arn(format!("arn:aws:iam::{ACCOUNT_ID}:role/{role}"))
            .role_session_name(session)
            .send()
            .await
            .unwrap_or_else(|e| panic!("AssumeRole {role}/{session}: {e}"));
        let credentials = assumed.credentials().expect("AssumeRole's credentials");
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new(REGION))
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
                aws_sdk_s3::config::Credentials::new(
                    credentials.access_key_id(),
                    credentials.secret_access_key(),
                    Some(credentials.session_token().to_owned()),
                    None,
                    "assumed-role",
                ),
            ))
            .build()
    }

    /// Creates the buckets [`test_profile`] names and stores it as profile `test`.
    pub async fn standard_setup(&self) {
        self.create_bucket(TARGET_BUCKET).await;
        self.create_bucket(BACKUP_BUCKET).await;
        self.create_bucket(PRIMARY_BUCKET).await;
        drpilot_tools::local::emulator_evidence_bucket(
            self.s3(),
            EVIDENCE_BUCKET,
            EVIDENCE_RETENTION_DAYS,
        )
        .await
        .unwrap_or_else(|e| panic!("the evidence bucket: {e}"));
        self.put_profile(PROFILE, &test_profile()).await;
    }

    /// Makes the emulator's S3 answer the next `times` requests of `method` whose path
    /// contains `path_contains` with `503 SlowDown`, as S3 does under load (the local
    /// stack's fault hook, infra/local/motoserver.py). Every client sees it, the functions'
    /// included; the SDK's own retries count among the `times`.
    pub fn throttle_s3(&self, method: &str, path_contains: &str, times: u32) {
        let rule = serde_json::json!({
            "method": method,
            "path_contains": path_contains,
            "times": times,
            "status": 503,
            "code": "SlowDown",
        });
        let (status, body) = http(self.port, "POST", "/_drpilot/faults", &rule.to_string())
            .expect("arm an S3 fault");
        assert_eq!(status, 200, "arming an S3 fault: {body}");
    }

    /// Holds the emulator's S3 to request rates as S3 holds a bucket (the local stack's
    /// `S3Limits`, infra/local/motoserver.py): `limits` names `write_per_second`,
    /// `read_per_second`, `delete_per_second`, `grow_after_seconds`, `grow_factor`,
    /// `max_per_second` and `delete_key_errors` (keys of coming DeleteObjects answered
    /// with a per-key error in the 200). The case's reset lifts them.
    pub fn limit_s3(&self, limits: serde_json::Value) {
        let (status, body) = http(
            self.port,
            "POST",
            "/_drpilot/s3-limits",
            &limits.to_string(),
        )
        .expect("set the S3 limits");
        assert_eq!(status, 200, "setting the S3 limits: {body}");
    }

    /// Gives the emulator's Lambda account this concurrency (GetAccountSettings, which
    /// the local stack answers; AWS's default is 1,000, a new account often has 10).
    /// The case's reset restores 1,000.
    pub fn lambda_account(&self, concurrent_executions: u32, unreserved: u32) {
        let body = serde_json::json!({
            "concurrent_executions": concurrent_executions,
            "unreserved_concurrent_executions": unreserved,
        });
        let (status, body) = http(
            self.port,
            "POST",
            "/_drpilot/lambda-account",
            &body.to_string(),
        )
        .expect("set the Lambda account");
        assert_eq!(status, 200, "setting the Lambda account: {body}");
    }

    /// What the S3 limits did: per prefix and class, `rate`, `served` and `throttled`;
    /// and `delete_key_errors_answered`.
    pub fn s3_limit_stats(&self) -> serde_json::Value {
        let (status, body) =
            http(self.port, "GET", "/_drpilot/s3-limits", "").expect("read the S3 limits");
        assert_eq!(status, 200, "reading the S3 limits: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// How many requests of `class` (`read`, `write`, `delete`) the S3 limits throttled,
    /// over every prefix.
    pub fn s3_throttled(&self, class: &str) -> u64 {
        let stats = self.s3_limit_stats();
        stats["prefixes"]
            .as_array()
            .expect("per-prefix S3 limit stats")
            .iter()
            .filter(|p| p["class"] == class)
            .map(|p| p["throttled"].as_u64().expect("a throttled count"))
            .sum()
    }

    /// What a run left in the target and evidence buckets, comparable with what another
    /// run left: every object whose key or body names `run_id`, by key, with the run id
    /// written `{run}` and, in JSON bodies, the clock's readings (instants, and fields
    /// named `*_at`, `*_ms`, `*_time` or with `second` in them) taken out. Two runs that did the same work leave equal maps.
    pub async fn left_by(&self, run_id: &str) -> std::collections::BTreeMap<String, String> {
        let mut left = std::collections::BTreeMap::new();
        for bucket in [TARGET_BUCKET, EVIDENCE_BUCKET] {
            for key in self.keys(bucket, "").await {
                let Some(body) = self.get_text(bucket, &key).await else {
                    continue;
                };
                if !key.contains(run_id) && !body.contains(run_id) {
                    continue;
                }
                let body = match serde_json::from_str::<serde_json::Value>(&body) {
                    Ok(mut json) => {
                        without_clock(&mut json);
                        json.to_string()
                    }
                    Err(_) => body,
                };
                left.insert(
                    format!("{bucket}/{}", key.replace(run_id, "{run}")),
                    body.replace(run_id, "{run}"),
                );
            }
        }
        left
    }

    /// How many requests the armed S3 faults have answered.
    pub fn s3_faults_answered(&self) -> usize {
        let (status, body) =
            http(self.port, "GET", "/_drpilot/faults", "").expect("read the S3 faults");
        assert_eq!(status, 200, "reading the S3 faults: {body}");
        let answered: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        answered["answered"].as_array().map_or(0, Vec::len)
    }

    /// A source database in the emulator's RDS, and (with `snapshot`) one manual snapshot of
    /// it, as production would have them.
    pub async fn seed_database(&self, identifier: &str, snapshot: bool) {
        drpilot_tools::local::emulator_database(
            &self.clients.rds(),
            identifier,
            snapshot.then_some("manual-1"),
        )
        .await
        .unwrap_or_else(|e| panic!("seed database: {e}"));
    }

    /// The stack's drill schedule (the one failback's preflight checks), enabled or not.
    pub async fn drill_schedule(&self, enabled: bool) {
        let scheduler = aws_sdk_scheduler::Client::new(&self.clients.config);
        let machine = format!("arn:aws:states:{REGION}:{ACCOUNT_ID}:stateMachine:drpilot-drill");
        drpilot_tools::local::emulator_schedule(&scheduler, &machine, enabled)
            .await
            .unwrap_or_else(|e| panic!("drill schedule: {e}"));
    }

    /// The identifiers of every DB instance in the emulator, sorted.
    pub async fn db_instances(&self) -> Vec<String> {
        let out = self
            .clients
            .rds()
            .describe_db_instances()
            .send()
            .await
            .unwrap_or_else(|e| panic!("describe DB instances: {e:?}"));
        let mut ids: Vec<String> = out
            .db_instances()
            .iter()
            .filter_map(|i| i.db_instance_identifier().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    }

    /// Every object of `bucket` as (key, ETag, size), sorted: equal snapshots mean the
    /// bucket was left as it was.
    pub async fn snapshot(&self, bucket: &str) -> Vec<(String, String, i64)> {
        let mut objects = Vec::new();
        let mut pages = self
            .s3()
            .list_objects_v2()
            .bucket(bucket)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.unwrap_or_else(|e| panic!("list s3://{bucket}: {e:?}"));
            objects.extend(page.contents().iter().map(|o| {
                (
                    o.key().unwrap_or_default().to_owned(),
                    o.e_tag().unwrap_or_default().to_owned(),
                    o.size().unwrap_or_default(),
                )
            }));
        }
        objects.sort();
        objects
    }

    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut pages = self
            .s3()
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.unwrap_or_else(|e| panic!("list s3://{bucket}/{prefix}: {e:?}"));
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        keys.sort();
        keys
    }
}

/// Fails naming each entry where two [`LocalAws::left_by`] maps differ, and how.
pub fn assert_left_alike(
    left: &std::collections::BTreeMap<String, String>,
    expected: &std::collections::BTreeMap<String, String>,
    context: &str,
) {
    let keys: std::collections::BTreeSet<&String> = left.keys().chain(expected.keys()).collect();
    let differences: Vec<String> = keys
        .into_iter()
        .filter(|key| left.get(*key) != expected.get(*key))
        .map(|key| {
            format!(
                "{key}:\n  left:     {}\n  expected: {}",
                left.get(key).map_or("(absent)", String::as_str),
                expected.get(key).map_or("(absent)", String::as_str)
            )
        })
        .collect();
    assert!(
        differences.is_empty(),
        "{context}: what the run left differs\n{}",
        differences.join("\n")
    );
}

/// `json` without the fields that read the clock (see [`LocalAws::left_by`]).
pub fn without_clock(json: &mut serde_json::Value) {
    match json {
        serde_json::Value::Object(fields) => {
            fields.retain(|name, value| {
                let instant = value
                    .as_str()
                    .is_some_and(|text| chrono::DateTime::parse_from_rfc3339(text).is_ok());
                !(instant
                    || name.contains("second")
                    || ["_at", "_ms", "_time"]
                        .iter()
                        .any(|end| name.ends_with(end)))
            });
            fields.values_mut().for_each(without_clock);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(without_clock),
        _ => {}
    }
}
