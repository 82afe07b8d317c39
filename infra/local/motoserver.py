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
  * S3 can be held to request rates the way S3 holds a bucket (`POST /_drpilot/s3-limits`,
    see `S3Limits`): write and read requests a second per prefix, answered `503 SlowDown`
    past them, with capacity that grows under sustained load as S3 partitions a busy
    prefix; and a DeleteObjects can answer some keys with a per-key error inside its 200,
    as S3 does under load. Rates are scaled down (a test sets 35 writes a second where S3
    guarantees 3,500) so a small run meets what a large one meets on AWS;
  * Lambda's GetAccountSettings, which moto lacks, answers the account's concurrency
    (1,000 by default, as AWS gives an account; `POST /_drpilot/lambda-account` with
    {"concurrent_executions", "unreserved_concurrent_executions"} sets it, as a new
    account's 10 would be), so readiness's concurrency check runs against the API;
  * it binds to loopback only and exits when the process that started it goes away
    (`--parent-pid`), so a crashed test run leaves no stray server behind.

Usage: python motoserver.py [--port 0] [--lambda-endpoint URL] [--port-file F] [--parent-pid PID]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import os
import signal
import sys
import threading
import time
import xml.etree.ElementTree as ET
from io import BytesIO
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
            payload = _function_error("Lambda.Unknown", f"HTTP {error.code} from {url}")
        return payload
    except TimeoutError:
        # No answer within the function's time (urlopen raises a read timeout as is):
        # Lambda ends the invocation, and Step Functions sees Sandbox.Timedout, which
        # drpilot's Retry policy does not retry.
        response_headers["x-amz-function-error"] = "Unhandled"
        return _function_error(
            "Sandbox.Timedout", f"Task timed out after {LAMBDA_TIMEOUT_SECONDS:.2f} seconds"
        )
    except (urllib.error.URLError, ConnectionError) as error:
        # The function host is down (or did not accept the connection): to Step Functions
        # this is a service fault, which drpilot's Retry policy treats as transient.
        response_headers["x-amz-function-error"] = "Unhandled"
        return _function_error(
            "Lambda.ServiceException", f"lambda endpoint {LAMBDA_ENDPOINT} unreachable: {error}"
        )


def _function_error(error_type: str, message: str) -> bytes:
    """A function error's payload, as Lambda answers it (errorType is the name Step
    Functions matches)."""
    return json.dumps({"errorType": error_type, "errorMessage": message}).encode()


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


class S3Limits:
    """S3's request-rate limits, scaled: a token bucket per (prefix, class) of request.

    S3 serves at least 3,500 PUT/COPY/POST/DELETE and 5,500 GET/HEAD requests a second
    per partitioned prefix and answers `503 SlowDown` past what a partition serves; under
    sustained load it splits the prefix and serves more ("Best practices design patterns:
    optimizing Amazon S3 performance"). The model is one bucket of tokens per prefix (the
    S3 bucket and the key's first path segment: `_staging/`, `root/`, `locks/` apart) and
    class (write, read), refilled at `rate` a second with a burst of one second's worth.
    Once a class has been throttling for `grow_after_seconds` (at least once every second)
    its rate is multiplied by `grow_factor`, up to `max_per_second` (a split). With
    `grow_on: "load"` the trigger is the load instead: every second of `grow_after_seconds`
    served at 90% of the rate or more, throttled or not. AWS documents neither trigger
    (503s "while S3 scales to the new request rate"); a bench can measure under both. A DeleteObjects counts one write a key, as S3 counts it.
    `delete_per_second`, when set, rates deletes (DeleteObject, DeleteObjects) apart from
    the other writes, so a test can throttle teardown and not the restore before it.

    `delete_key_errors` keys of coming DeleteObjects requests are answered with a per-key
    `<Error>` (code `delete_key_error_code`) inside the 200, and are not deleted.
    """

    WRITE_METHODS = ("PUT", "POST", "DELETE")

    def __init__(self, config: dict[str, Any], clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.write_rate = float(config.get("write_per_second", 0) or 0)
        self.read_rate = float(config.get("read_per_second", 0) or 0)
        self.delete_rate = float(config.get("delete_per_second", 0) or 0)
        self.grow_after = float(config.get("grow_after_seconds", 0) or 0)
        self.grow_factor = float(config.get("grow_factor", 2) or 2)
        self.max_rate = float(config.get("max_per_second", 0) or 0)
        self.grow_on = str(config.get("grow_on", "throttling"))
        if self.grow_on not in ("throttling", "load"):
            raise ValueError(f"grow_on must be throttling or load, got {self.grow_on!r}")
        self.delete_key_errors = int(config.get("delete_key_errors", 0) or 0)
        self.delete_key_error_code = str(config.get("delete_key_error_code", "SlowDown"))
        for name, value in (
            ("write_per_second", self.write_rate),
            ("read_per_second", self.read_rate),
            ("delete_per_second", self.delete_rate),
            ("grow_after_seconds", self.grow_after),
            ("max_per_second", self.max_rate),
        ):
            if value < 0 or math.isnan(value):
                raise ValueError(f"{name} must be 0 or more, got {value}")
        if self.grow_factor < 1:
            raise ValueError(f"grow_factor must be 1 or more, got {self.grow_factor}")
        if self.delete_key_errors < 0:
            raise ValueError("delete_key_errors must be 0 or more")
        self.lock = threading.Lock()
        # (prefix, class) -> its token bucket and counts
        self.partitions: dict[tuple[str, str], dict[str, float]] = {}
        self.delete_key_errors_answered = 0

    def _kind(self, method: str, delete: bool) -> str:
        if delete and self.delete_rate > 0:
            return "delete"
        return "write" if method in self.WRITE_METHODS else "read"

    def admit(self, prefix: str, method: str, requests: int = 1, delete: bool = False) -> bool:
        """Whether S3 serves `requests` requests of `method` under `prefix` now (`delete`:
        a DeleteObject or DeleteObjects)."""
        kind = self._kind(method, delete or method == "DELETE")
        base = {"write": self.write_rate, "read": self.read_rate, "delete": self.delete_rate}[kind]
        if base <= 0:
            return True
        with self.lock:
            now = self.clock()
            state = self.partitions.setdefault(
                (prefix, kind),
                {
                    "rate": base,
                    "tokens": base,
                    "last": now,
                    "since": -1.0,
                    "last_throttled": -1.0,
                    "throttled": 0,
                    "served": 0,
                    "second": now,
                    "served_in_second": 0.0,
                    "busy_since": -1.0,
                },
            )
            self._count_load(state, now)
            state["tokens"] = min(
                state["rate"], state["tokens"] + (now - state["last"]) * state["rate"]
            )
            state["last"] = now
            # A DeleteObjects of more keys than a second's burst is served once the bucket
            # is full: S3 takes a 1,000-key request at any rate it serves at all.
            needed = min(float(requests), state["rate"])
            if state["tokens"] >= needed:
                # The whole request is paid: a large batch leaves a debt.
                state["tokens"] -= float(requests)
                state["served"] += requests
                state["served_in_second"] += requests
                return True
            state["throttled"] += 1
            # Sustained: throttled at least once a second since `since`.
            if state["since"] < 0 or now - state["last_throttled"] > 1.0:
                state["since"] = now
            state["last_throttled"] = now
            if self.grow_on == "throttling" and self.grow_after > 0 and now - state["since"] >= self.grow_after:
                ceiling = self.max_rate if self.max_rate > 0 else state["rate"]
                state["rate"] = min(ceiling, state["rate"] * self.grow_factor)
                state["since"] = now
            return False

    def _count_load(self, state: dict[str, float], now: float) -> None:
        """`grow_on: load`: at each whole second, whether the one before was busy (served
        at 90% of the rate or more); after `grow_after_seconds` busy seconds in a row the
        rate grows."""
        if self.grow_on != "load" or self.grow_after <= 0 or now - state["second"] < 1.0:
            return
        elapsed = now - state["second"]
        busy = state["served_in_second"] >= 0.9 * state["rate"] * min(elapsed, 1.0) and elapsed < 2.0
        state["second"], state["served_in_second"] = now, 0.0
        if not busy:
            state["busy_since"] = -1.0
            return
        if state["busy_since"] < 0:
            state["busy_since"] = now - 1.0
        if now - state["busy_since"] >= self.grow_after:
            ceiling = self.max_rate if self.max_rate > 0 else state["rate"]
            state["rate"] = min(ceiling, state["rate"] * self.grow_factor)
            state["busy_since"] = now

    def take_delete_key_errors(self, count: int) -> int:
        """How many of a DeleteObjects' `count` keys answer an error."""
        with self.lock:
            taken = min(count, self.delete_key_errors)
            self.delete_key_errors -= taken
            self.delete_key_errors_answered += taken
            return taken

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "prefixes": [
                    {
                        "prefix": prefix,
                        "class": kind,
                        "rate": state["rate"],
                        "served": state["served"],
                        "throttled": state["throttled"],
                    }
                    for (prefix, kind), state in sorted(self.partitions.items())
                ],
                "delete_key_errors_answered": self.delete_key_errors_answered,
            }


LAMBDA_ACCOUNT_PATH = "/_drpilot/lambda-account"
ACCOUNT_SETTINGS_PATH = re.compile(r"^/2016-08-19/account-settings/?$")
DEFAULT_LAMBDA_ACCOUNT = {"concurrent_executions": 1000, "unreserved_concurrent_executions": 1000}
_lambda_account: dict[str, int] = dict(DEFAULT_LAMBDA_ACCOUNT)


def _configure_lambda_account(body: bytes) -> tuple[str, dict[str, Any]]:
    try:
        config = json.loads(body or b"{}")
        total = int(config.get("concurrent_executions", 1000))
        unreserved = int(config.get("unreserved_concurrent_executions", total))
        if total < 0 or unreserved < 0 or unreserved > total:
            raise ValueError("0 <= unreserved_concurrent_executions <= concurrent_executions")
    except (ValueError, TypeError, AttributeError) as error:
        return "400 Bad Request", {"error": f"Lambda account: {error}"}
    _lambda_account.update(concurrent_executions=total, unreserved_concurrent_executions=unreserved)
    return "200 OK", dict(_lambda_account)


def _account_settings() -> dict[str, Any]:
    """GetAccountSettings' answer (Lambda API Reference) for the configured account."""
    return {
            "AccountLimit": {
                "TotalCodeSize": 80530636800,
                "CodeSizeUnzipped": 262144000,
                "CodeSizeZipped": 52428800,
                "ConcurrentExecutions": _lambda_account["concurrent_executions"],
                "UnreservedConcurrentExecutions": _lambda_account["unreserved_concurrent_executions"],
            },
            "AccountUsage": {"TotalCodeSize": 0, "FunctionCount": 0},
        }


LIMITS_PATH = "/_drpilot/s3-limits"
_limits: S3Limits | None = None


def _is_s3(environ: dict[str, Any]) -> bool:
    """Whether a request is signed for S3 (every service shares this server's port)."""
    authorization = environ.get("HTTP_AUTHORIZATION", "")
    query = environ.get("QUERY_STRING", "")
    return "/s3/aws4_request" in authorization or "%2Fs3%2Faws4_request" in query


def _prefix_of(path: str) -> str:
    """The prefix a request's key falls under: `<bucket>/<first segment>` (drpilot's
    clients address S3 path-style: /<bucket>/<key>)."""
    parts = path.lstrip("/").split("/", 2)
    return "/".join(parts[:2]) if len(parts) > 1 and parts[1] else parts[0]


def _s3_error(start_response: Any, status: str, code: str, message: str, path: str) -> list[bytes]:
    """An S3 error answer, as S3 writes one."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{path}</Resource><RequestId>drpilot-local</RequestId></Error>"
    ).encode()
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]


def _slow_down(start_response: Any, path: str) -> list[bytes]:
    return _s3_error(start_response, "503 Slow Down", "SlowDown", "Please reduce your request rate.", path)


S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
# Written back without a prefix (`<Delete xmlns=...>`), as moto reads it by its bare name.
ET.register_namespace("", S3_NAMESPACE)


def _delete_keys(body: bytes) -> tuple[Any, list[Any]]:
    root = ET.fromstring(body)
    objects = [child for child in root if child.tag.rsplit("}", 1)[-1] == "Object"]
    return root, objects


def _key_of(element: Any) -> str:
    for child in element:
        if child.tag.rsplit("}", 1)[-1] == "Key":
            return child.text or ""
    return ""


def _with_limits(
    self: DomainDispatcherApplication, environ: dict[str, Any], start_response: Any, limits: S3Limits
) -> Any:
    """The request through `limits`: throttled, or served (a DeleteObjects perhaps with
    some keys answered by a per-key error)."""
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    prefix = _prefix_of(path)
    is_delete_objects = method == "POST" and "delete" in environ.get("QUERY_STRING", "").split("&")
    if not is_delete_objects:
        if not limits.admit(prefix, method):
            return _slow_down(start_response, path)
        return _dispatch(self, environ, start_response)
    body = _request_body(environ)
    root, objects = _delete_keys(body)
    if objects:
        # The keys name the prefix, not the path (/<bucket>?delete).
        prefix = _prefix_of(f"{path.rstrip('/')}/{_key_of(objects[0])}")
    if not limits.admit(prefix, method, max(1, len(objects)), delete=True):
        return _slow_down(start_response, path)
    failing = objects[: limits.take_delete_key_errors(len(objects))]
    for element in failing:
        root.remove(element)
    if failing:
        body = ET.tostring(root, encoding="utf-8")
        # The request's checksum covered the keys removed: moto may check it.
        for header in [h for h in environ if h.startswith("HTTP_X_AMZ_CHECKSUM") or h == "HTTP_CONTENT_MD5"]:
            del environ[header]
    environ["wsgi.input"] = BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    if not failing:
        return _dispatch(self, environ, start_response)
    captured: dict[str, Any] = {}

    def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = status, headers
        return lambda _data: None

    if len(failing) == len(objects):
        # Every key fails: moto would refuse an empty <Delete>; S3 answers a 200 of errors.
        captured["status"] = "200 OK"
        captured["headers"] = [("Content-Type", "application/xml")]
        answer = f'<DeleteResult xmlns="{S3_NAMESPACE}"></DeleteResult>'.encode()
    else:
        answer = b"".join(_dispatch(self, environ, capture))
    if not captured["status"].startswith("200"):
        start_response(captured["status"], captured["headers"])
        return [answer]
    result = ET.fromstring(answer)
    namespace = result.tag[: result.tag.index("}") + 1] if result.tag.startswith("{") else ""
    for element in failing:
        error = ET.SubElement(result, f"{namespace}Error")
        ET.SubElement(error, f"{namespace}Key").text = _key_of(element)
        ET.SubElement(error, f"{namespace}Code").text = limits.delete_key_error_code
        ET.SubElement(error, f"{namespace}Message").text = "Please reduce your request rate."
    answer = ET.tostring(result, encoding="utf-8", xml_declaration=True)
    headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
    start_response(captured["status"], headers + [("Content-Length", str(len(answer)))])
    return [answer]


def _configure_limits(body: bytes) -> tuple[str, dict[str, Any]]:
    global _limits
    try:
        config = json.loads(body or b"{}")
        if not isinstance(config, dict):
            raise ValueError("the limits are a JSON object")
        limits = S3Limits(config)
    except (ValueError, TypeError) as error:
        return "400 Bad Request", {"error": f"S3 limits: {error}"}
    _limits = limits
    return "200 OK", limits.stats()


_dispatch = DomainDispatcherApplication.__call__


def _with_faults(self: DomainDispatcherApplication, environ: Any, start_response: Any) -> Any:
    global _limits
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    if path == FAULTS_PATH:
        if method == "POST":
            return _json_answer(start_response, *_arm_fault(_request_body(environ)))
        with _faults_lock:
            answered = {"answered": list(_faults_answered)}
        return _json_answer(start_response, "200 OK", answered)
    if path == LIMITS_PATH:
        if method == "POST":
            return _json_answer(start_response, *_configure_limits(_request_body(environ)))
        return _json_answer(start_response, "200 OK", _limits.stats() if _limits else {"prefixes": []})
    if path == LAMBDA_ACCOUNT_PATH and method == "POST":
        return _json_answer(start_response, *_configure_lambda_account(_request_body(environ)))
    if method == "GET" and ACCOUNT_SETTINGS_PATH.match(path):
        return _json_answer(start_response, "200 OK", _account_settings())
    if path.startswith("/moto-api/reset"):
        _lambda_account.update(DEFAULT_LAMBDA_ACCOUNT)
        _limits = None
        with _faults_lock:
            _faults.clear()
            _faults_answered.clear()
    fault = _take_fault(method, path)
    if fault is not None:
        reason = {500: "Internal Server Error", 503: "Slow Down"}.get(fault["status"], "Error")
        return _s3_error(
            start_response, f"{fault['status']} {reason}", fault["code"], "injected by the local stack", path
        )
    limits = _limits
    if limits is not None and _is_s3(environ):
        return _with_limits(self, environ, start_response, limits)
    return _dispatch(self, environ, start_response)


def _request_body(environ: dict[str, Any]) -> bytes:
    return environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))


def _json_answer(start_response: Any, status: str, answer: Any) -> list[bytes]:
    body = json.dumps(answer).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


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
