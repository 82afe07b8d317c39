#!/usr/bin/env python3
"""Lambda footprint per function: the stripped arm64 `bootstrap` and its zip (from
`make build`), and init time — process start until the first
`GET /2018-06-01/runtime/invocation/next` on a tiny local runtime-API stub — against a
hello-world Rust function (bench/hello) built the same way. Init is measured on x86_64
builds (this machine cannot run arm64 binaries natively); medians of 20 starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, free_port, log, median, table  # noqa: E402

FUNCTIONS = ["bringup", "restore", "validate", "parity-report", "promote", "teardown"]
STARTS = 20


def cargo_lambda(args: list[str], env_extra: dict | None = None) -> None:
    subprocess.run([str(ROOT / "scripts" / "ensure-venv.sh"), "--build"], check=True)
    env = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", **(env_extra or {}))
    subprocess.run(["cargo", "lambda", "build", "--release", *args], cwd=ROOT, check=True, env=env)


def build_all() -> None:
    log("building drpilot's functions (arm64 and x86_64) and the hello-world baseline ...")
    exclude = ["--workspace", "--exclude", "drpilot-cli", "--exclude", "drpilot-shared", "--exclude", "drpilot-testkit"]
    cargo_lambda(["--arm64", "--output-format", "zip", *exclude])
    cargo_lambda(["--x86-64", "--lambda-dir", "target/lambda-x86_64", *exclude])
    hello_env = {"CARGO_TARGET_DIR": str(ROOT / "target" / "bench-hello")}
    manifest = ["--manifest-path", "bench/hello/Cargo.toml"]
    cargo_lambda(["--arm64", "--output-format", "zip", "--lambda-dir", "target/lambda-hello", *manifest], hello_env)
    cargo_lambda(["--x86-64", "--lambda-dir", "target/lambda-hello-x86_64", *manifest], hello_env)


class Stub(BaseHTTPRequestHandler):
    first_poll: float | None = None
    arrived = threading.Event()

    def do_GET(self):  # noqa: N802
        if self.path.endswith("/runtime/invocation/next") and Stub.first_poll is None:
            Stub.first_poll = time.perf_counter()
            Stub.arrived.set()
        time.sleep(5)  # hold the long poll; the process is killed meanwhile

    def log_message(self, *args):
        pass


def init_ms(binary: Path) -> float:
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    times = []
    env = dict(os.environ, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{port}", AWS_LAMBDA_FUNCTION_NAME="bench",
               AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1024", AWS_LAMBDA_FUNCTION_VERSION="1",
               AWS_LAMBDA_LOG_STREAM_NAME="x", AWS_LAMBDA_LOG_GROUP_NAME="x", AWS_REGION="us-east-1",
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_LAMBDA_LOG_FORMAT="JSON")
    env.pop("AWS_ENDPOINT_URL", None)
    for _ in range(STARTS):
        Stub.first_poll = None
        Stub.arrived.clear()
        start = time.perf_counter()
        proc = subprocess.Popen([str(binary)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ok = Stub.arrived.wait(10)
        proc.kill()
        proc.wait()
        if ok and Stub.first_poll is not None:
            times.append((Stub.first_poll - start) * 1000)
    server.shutdown()
    return median(times)


def rows() -> list[tuple[str, str, str, str]]:
    build_all()

    def sizes(zip_path: Path) -> tuple[float, float]:
        with zipfile.ZipFile(zip_path) as z:
            return z.getinfo("bootstrap").file_size / 1e6, zip_path.stat().st_size / 1e6

    hello_bin, hello_zip = sizes(ROOT / "target" / "lambda-hello" / "hello" / "bootstrap.zip")
    hello_init = init_ms(ROOT / "target" / "lambda-hello-x86_64" / "hello" / "bootstrap")
    out = []
    for fn in FUNCTIONS:
        b, z = sizes(ROOT / "target" / "lambda" / fn / "bootstrap.zip")
        ms = init_ms(ROOT / "target" / "lambda-x86_64" / fn / "bootstrap")
        out.append((f"Lambda {fn}: arm64 bootstrap / zip; init to first /next poll (x86_64)",
                    f"{b:.1f} MB / {z:.1f} MB; {ms:.1f} ms",
                    f"hello-world: {hello_bin:.1f} MB / {hello_zip:.1f} MB; {hello_init:.1f} ms",
                    f"{b / hello_bin:.1f}x size, {ms / hello_init:.1f}x init"))
    return out


if __name__ == "__main__":
    print(table(rows()))
