"""drpilot's local AWS: moto in server mode, wired the way drpilot needs it.

What this adds to a plain `moto_server` (see docs/local-stack.md):
  * Step Functions executes state machines, and Lambda uses moto's docker-free backend;
  * the JSONata hook moto leaves empty is filled with jsonata-python, so the same
    JSONata ASL that deploys runs here;
  * Lambda Invoke is forwarded to a `cargo lambda watch` server (its Invoke API), so a
    state machine's Task states run the real drpilot handlers. HTTP 500 from the watch
    server (a handler error) becomes `X-Amz-Function-Error: Unhandled`, which is how
    Step Functions learns the error name to match in Retry/Catch;
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
