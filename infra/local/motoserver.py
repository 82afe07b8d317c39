"""drpilot's local AWS: moto in server mode, wired the way drpilot needs it.

What this adds to a plain `moto_server` (see docs/local-stack.md):
  * Step Functions executes state machines, and Lambda uses moto's docker-free backend;
  * the JSONata hook moto leaves empty is filled with jsonata-python, so the same
    JSONata ASL that deploys runs here;
  * Lambda Invoke is forwarded to a `cargo lambda watch` server (its Invoke API), so a
    state machine's Task states run the real drpilot handlers. HTTP 500 from the watch
    server (a handler error) becomes `X-Amz-Function-Error: Unhandled`, which is how
    Step Functions learns the error name to match in Retry/Catch;
  * S3 can be told to answer the next N requests of one method whose path contains a
    given string with an S3 error (`POST /_drpilot/faults` with {"method", "path_contains",
    "times", "status", "code"}; `GET /_drpilot/faults` says how many were answered so;
    `/moto-api/reset` clears them): the throttling (503 SlowDown) and 500s S3 really
    answers, which moto never does, so tests can show a retried step succeed and a step
    failing for good be named;
  * it binds to loopback only and exits when the process that started it goes away
    (`--parent-pid`), so a crashed test run leaves no stray server behind.

Usage: python motoserver.py [--port 0] [--lambda-endpoint URL] [--port-file F] [--parent-pid PID]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from moto.core.config import default_user_config

default_user_config["stepfunctions"] = {"execute_state_machine": True}
default_user_config["lambda"] = {"use_docker": False}

import jsonata  # noqa: E402  (jsonata-python)
from moto.awslambda_simple.models import LambdaSimpleBackend  # noqa: E402
from moto.moto_server.threaded_moto_server import ThreadedMotoServer  # noqa: E402
from moto.moto_server.werkzeug_app import DomainDispatcherApplication  # noqa: E402
from moto.stepfunctions.parser.asl.jsonata import jsonata as moto_jsonata  # noqa: E402


def _eval_jsonata(expression: str) -> Any:
    result = jsonata.Jsonata(expression).evaluate(None)
    # jsonata-python returns its own sequence types; moto wants plain JSON values.
    return json.loads(json.dumps(result)) if result is not None else None


moto_jsonata._eval_jsonata = _eval_jsonata

LAMBDA_ENDPOINT = os.environ.get("DRPILOT_LAMBDA_ENDPOINT", "http://127.0.0.1:9000")
# A Lambda invocation may legitimately run for minutes (a large restore).
LAMBDA_TIMEOUT_SECONDS = float(os.environ.get("DRPILOT_LAMBDA_TIMEOUT", "900"))


def _bare_function_name(function_name: str) -> str:
    # arn:aws:lambda:region:account:function:NAME[:qualifier] -> NAME
    if function_name.startswith("arn:"):
        parts = function_name.split(":")
        if len(parts) >= 7:
            return parts[6]
    return function_name


def _forward_invoke(
    self: LambdaSimpleBackend,
    function_name: str,
    qualifier: str | None,
    body: Any,
    headers: Any,
    response_headers: Any,
) -> bytes:
    name = _bare_function_name(function_name)
    url = f"{LAMBDA_ENDPOINT}/2015-03-31/functions/{name}/invocations"
    data = body.encode() if isinstance(body, str) else (body or b"{}")
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=LAMBDA_TIMEOUT_SECONDS) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        payload = error.read()
        response_headers["x-amz-function-error"] = "Unhandled"
        if not payload:
            payload = json.dumps(
                {"errorType": "Lambda.Unknown", "errorMessage": f"HTTP {error.code} from {url}"}
            ).encode()
        return payload
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        # The function host is down: to Step Functions this is a service fault, which
        # drpilot's Retry policy treats as transient.
        response_headers["x-amz-function-error"] = "Unhandled"
        return json.dumps(
            {
                "errorType": "Lambda.ServiceException",
                "errorMessage": f"lambda endpoint {LAMBDA_ENDPOINT} unreachable: {error}",
            }
        ).encode()


LambdaSimpleBackend.invoke = _forward_invoke


FAULTS_PATH = "/_drpilot/faults"
_faults_lock = threading.Lock()
_faults: list[dict[str, Any]] = []
_faults_answered: list[dict[str, Any]] = []


def _take_fault(method: str, path: str) -> dict[str, Any] | None:
    """The armed fault this request meets (used up by one), if any."""
    with _faults_lock:
        for fault in _faults:
            if fault["times"] > 0 and fault["method"] == method and fault["path_contains"] in path:
                fault["times"] -= 1
                _faults_answered.append({"method": method, "path": path, "code": fault["code"]})
                return fault
    return None


def _arm_fault(body: bytes) -> tuple[str, dict[str, Any]]:
    try:
        fault = json.loads(body or b"{}")
        armed = {
            "method": str(fault["method"]).upper(),
            "path_contains": str(fault["path_contains"]),
            "times": int(fault.get("times", 1)),
            "status": int(fault.get("status", 503)),
            "code": str(fault.get("code", "SlowDown")),
        }
    except (ValueError, KeyError, TypeError) as error:
        return "400 Bad Request", {"error": f"a fault needs method and path_contains: {error}"}
    with _faults_lock:
        _faults.append(armed)
    return "200 OK", armed


_dispatch = DomainDispatcherApplication.__call__


def _with_faults(self: DomainDispatcherApplication, environ: Any, start_response: Any) -> Any:
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    if path == FAULTS_PATH:
        if method == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            status, answer = _arm_fault(environ["wsgi.input"].read(length))
        else:
            with _faults_lock:
                status, answer = "200 OK", {"answered": list(_faults_answered)}
        body = json.dumps(answer).encode()
        start_response(
            status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]
    if path.startswith("/moto-api/reset"):
        with _faults_lock:
            _faults.clear()
            _faults_answered.clear()
    fault = _take_fault(method, path)
    if fault is not None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{fault['code']}</Code><Message>injected by the local stack</Message>"
            f"<Resource>{path}</Resource><RequestId>drpilot-fault</RequestId></Error>"
        ).encode()
        reason = {500: "Internal Server Error", 503: "Slow Down"}.get(fault["status"], "Error")
        start_response(
            f"{fault['status']} {reason}",
            [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
        )
        return [body]
    return _dispatch(self, environ, start_response)


DomainDispatcherApplication.__call__ = _with_faults


def _parent_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    args = parser.parse_args()

    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto's Step Functions engine calls other services (Lambda, SNS) through this port.
    os.environ["MOTO_PORT"] = str(port)
    if args.port_file:
        tmp = f"{args.port_file}.tmp"
        with open(tmp, "w") as handle:
            handle.write(str(port))
        os.replace(tmp, args.port_file)
    print(f"drpilot local AWS listening on http://{host}:{port}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        if args.parent_pid and not _parent_alive(args.parent_pid):
            break
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
