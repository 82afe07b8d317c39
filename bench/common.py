"""Helpers the bench scripts share: building bench targets, a private local S3 server,
filling it, timing commands, peak RSS."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_binary(package: str, bench: str) -> str:
    """Builds a `harness = false` bench target and returns its executable."""
    out = subprocess.run(
        ["cargo", "bench", "-p", package, "--bench", bench, "--no-run", "--message-format=json"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if (msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == bench
                and msg.get("executable")):
            return msg["executable"]
    raise SystemExit(f"no executable for bench {bench}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3:
    """moto (infra/local/motoserver.py) on a free loopback port, for the duration of a bench."""

    name = "moto"

    def __enter__(self) -> "LocalS3":
        self.moto_port, self.proc, self.log = start_moto()
        self.endpoint = f"http://127.0.0.1:{self.moto_port}"
        self.env = emulator_env(self.endpoint)
        return self

    def __exit__(self, *exc) -> None:
        stop(self.proc, self.log)

    def client(self):
        import boto3  # from .venv (moto depends on it)
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            config=Config(max_pool_connections=32, s3={"addressing_style": "path"}))

    def restore_setup(self):
        """The buckets and the `bench` profile restore's bench binary runs with; returns an
        S3 client."""
        client = self.client()
        for bucket in ("bench-data", "bench-backups"):
            client.create_bucket(Bucket=bucket)
        profile = {"target": {"bucket": "bench-data"}, "backups": "s3://bench-backups/backups/",
                   "receipts": "s3://bench-data/receipts/", "account_id": "123456789012",
                   "region": "us-east-1", "rto_target_seconds": 3600, "rpo_target_seconds": 86400}
        import boto3
        boto3.client("ssm", endpoint_url=f"http://127.0.0.1:{self.moto_port}", region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").put_parameter(
            Name="/drpilot/profiles/bench", Value=json.dumps(profile), Type="String", Overwrite=True)
        return client

    def fill(self, bucket: str, objects: list[tuple[str, bytes]]) -> None:
        """Puts every (key, body) into `bucket`: one-line text bodies with testkit's `fill`
        (the SDK, 64 in flight), any other body (an archive) with boto3."""
        def one_line(body: bytes) -> bool:
            try:
                text = body.decode()
            except UnicodeDecodeError:
                return False
            return "\n" not in text and "\t" not in text
        lines = [(k, b) for k, b in objects if one_line(b)]
        client = self.client()
        for key, body in objects:
            if not one_line(body):
                client.put_object(Bucket=bucket, Key=key, Body=body)
        feed = "".join(f"{k}\t{b.decode()}\n" for k, b in lines)
        out = subprocess.run([bench_binary("drpilot-testkit", "fill"), bucket], input=feed, env=self.env,
                             capture_output=True, text=True)
        if out.returncode != 0 or int(out.stdout) != len(lines):
            raise SystemExit(f"fill of {bucket} failed: {out.stderr[-2000:]}")


def start_moto():
    subprocess.run([str(ROOT / "scripts" / "ensure-venv.sh")], check=True)
    port = free_port()
    log_file = open(tempfile.mktemp(prefix="drpilot-bench-moto-", suffix=".log"), "w")
    proc = subprocess.Popen(
        [str(VENV_PY), str(ROOT / "infra" / "local" / "motoserver.py"), "--port", str(port),
         "--parent-pid", str(os.getpid())],
        stdout=log_file, stderr=log_file,
    )
    wait_for_port(port, "moto")
    return port, proc, log_file


def wait_for_port(port: int, what: str) -> None:
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline:
                raise SystemExit(f"{what} did not start")
            time.sleep(0.2)


def stop(proc, log_file) -> None:
    proc.terminate()
    proc.wait(timeout=30)
    log_file.close()


def emulator_env(endpoint: str) -> dict:
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1")
    env.pop("AWS_CA_BUNDLE", None)
    env.pop("AWS_ENDPOINT_URL_S3", None)
    return env


def s3mem_binary() -> str:
    """bench/s3mem, built (release) into the shared target directory on first use."""
    subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                    str(ROOT / "bench" / "s3mem" / "Cargo.toml"), "--target-dir", str(ROOT / "target")],
                   check=True)
    return str(ROOT / "target" / "release" / "s3mem")


class FastS3(LocalS3):
    """The in-memory S3 server bench/s3mem for S3, and moto beside it for every other
    service (SSM's profiles): the SDK's AWS_ENDPOINT_URL_S3 sends S3 calls to s3mem."""

    name = "s3mem"

    def __enter__(self) -> "FastS3":
        super().__enter__()
        self.fast_log = open(tempfile.mktemp(prefix="drpilot-bench-s3mem-", suffix=".log"), "w")
        port = free_port()
        # s3mem ends when its standard input closes: with this process, however it ends.
        self.fast = subprocess.Popen([s3mem_binary(), "--port", str(port)], stdin=subprocess.PIPE,
                                     stdout=self.fast_log, stderr=self.fast_log)
        wait_for_port(port, "s3mem")
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env["AWS_ENDPOINT_URL_S3"] = self.endpoint
        return self

    def __exit__(self, *exc) -> None:
        stop(self.fast, self.fast_log)
        super().__exit__(*exc)


SERVERS = (LocalS3, FastS3)



def timed(cmd: list[str] | str, env: dict | None = None, shell: bool = False) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, shell=shell, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode not in (0, 1):
        raise SystemExit(f"{cmd} failed ({out.returncode}): {out.stderr[-2000:]}")
    return elapsed, out.stdout


def aws_cli_path() -> str:
    """A directory holding the `aws` CLI (awscli, pinned), installed on first use into its
    own venv so its botocore pin cannot clash with moto's."""
    venv = ROOT / "target" / "bench-venv"
    if not (venv / "bin" / "aws").exists():
        log("installing awscli into target/bench-venv ...")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        "awscli==1.46.3"], check=True)
    return str(venv / "bin")


def median(values) -> float:
    import statistics
    return statistics.median(values)


def table(rows: list[tuple[str, str, str, str]]) -> str:
    """The markdown table every bench prints: what, drpilot, peer, ratio."""
    lines = ["| what | drpilot | peer (same data, same run) | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)
