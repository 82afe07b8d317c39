#!/usr/bin/env python3
"""Template and state machine checks (run by `make test` with .venv-infra's Python).

The state-machine checks run once for every AWS::Serverless::StateMachine of the template
(DrillStateMachine, FailbackStateMachine), each against the ASL file its DefinitionUri
names; their lines name the machine (`ok   [retry] ... (FailbackStateMachine)`):

  definition-uri   the machine's DefinitionUri is a local file that exists, and is the ASL
                   checked here (the one the local stack deploys; see --asl);
  placeholders     every ${...} in the ASL is supplied by the machine's DefinitionSubstitutions;
  substitutions    nothing the machine's substitutions supply goes unused;
  functions        every function the machine invokes (its *FunctionArn substitutions) is a
                   function of the template, built from a binary of the Cargo workspace;
  asl-validator    asl-validator accepts the definition (with the substitutions filled in);
  retry            every Retry retries exactly the transient Lambda errors and Retryable
                   (2 attempts, 15 s, backoff 2, full jitter), never States.ALL or Internal;
                   every Lambda task has one;
  approval         the drill (DrillStateMachine): the approval's Catch treats only
                   ApprovalDenied and the timeouts as "not approved"; any other error is a
                   failure recorded against promote. The failback (FailbackStateMachine):
                   exactly two .waitForTaskToken confirmations, one after the other, right
                   before copy-back; each one's Catch ends with States.ALL and sends every
                   error (a denial and a timeout too: the failback stops) to teardown with a
                   failure recorded against step 'confirm'. A machine with no
                   .waitForTaskToken state passes; one with such states but no rules here fails;
  subjects         every SNS Subject is truncated to at most 99 characters ($substring), and
                   stays under 100 ASCII characters for 80-character run ids;
  failed-run       a teardown (the Task invoking ${TeardownFunctionArn}, or the one whose
                   Payload action is 'teardown') that reports status 'failed' (or fails
                   itself) ends the execution in a Fail state.
  distributed-map  every Distributed Map (a Map with an ItemReader, or in DISTRIBUTED mode)
                   runs STANDARD children, reads its items with arn:aws:states:::s3:getObject
                   as JSON (the run's plan), tolerates no failure (ToleratedFailurePercentage
                   and ToleratedFailureCount 0 or absent), ends its Catch with States.ALL;
                   each child Lambda Task retries the Lambda service errors and Retryable and
                   has no Catch (the Map catches). The machine's role (its Policies) grants
                   states:StartExecution on the machine (by its Name), DescribeExecution and
                   StopExecution on its executions, s3:GetObject on
                   ${EvidenceBucket}/${ReceiptsPrefix}runs/*/plan.json, and no other states:
                   or s3: grant; every function a child invokes may s3:GetObject and
                   s3:PutObject its ranges' objects under ${ReceiptsPrefix}runs/ in the
                   evidence bucket (and s3:GetObject the plan). A machine without a
                   Distributed Map passes when its role holds no states: or s3: grant.

Template checks (one line each):

  binaries         every function of the template builds a binary of the Cargo workspace;
  arm64            every function runs on arm64 (its own Architectures, else Globals', else
                   Lambda's default x86_64);
  rule-inputs      the alarm rule and the schedule pass valid execution inputs (an alarm
                   reason holding quotes, a backslash and a newline included);
  evidence-lock    the evidence bucket (EvidenceBucket) is write-once: Object Lock enabled,
                   default retention in COMPLIANCE mode for EvidenceRetentionDays days
                   (a Number parameter, at least 1), versioning on, DeletionPolicy and
                   UpdateReplacePolicy Retain;
  approve-url      every function URL (FunctionUrlConfig, AWS::Lambda::Url) has AuthType
                   AWS_IAM, never NONE, and no permission opens a URL to the public; the
                   approve function has one;
  approval-key     approve, promote and failback (and any function, or Globals, that sets
                   it) name the approval key by its ARN, DRPILOT_APPROVAL_KEY: !GetAtt
                   ApprovalKey.Arn, never an alias (whoever holds kms:UpdateAlias could
                   repoint one) or another key;
  receipts-grants  every grant naming ${ReceiptsPrefix} names it in the evidence bucket
                   (none is left on the target bucket), and every function that reads there
                   holds s3:ListBucket on the evidence bucket with no condition (404, not 403);
  triggers         every schedule and rule (function and state machine events, Scheduler
                   schedules, EventBridge rules) is DISABLED unless TriggersEnabled
                   (EnableTriggers=true); the readiness function has its two schedules
                   (actions readiness and rto-watch);
  dashboard        every dashboard body renders (its !Sub filled with parameter defaults) to
                   valid JSON, its widgets fit the 24-column grid without overlapping, and
                   every alarm of the template is on an alarm widget;
  dependencies     the template, as SAM translates it (the function roles SAM generates
                   included), has no circular dependency between resources (Ref, GetAtt,
                   Sub, DependsOn): CloudFormation refuses one, and cfn-lint misses a circle
                   through a generated role (the approval key's policy names the approve,
                   promote and failback roles, so none of them may refer back to the key);
  cfn-lint         cfn-lint accepts the template;
  sam-validate     `sam validate` (the SAM translator) and `sam validate --lint` accept it
                   (offline, dummy credentials).

Options: --template PATH; --asl [MACHINE=]PATH (repeatable: check another copy of a
machine's ASL, DrillStateMachine's when MACHINE= is left out; definition-uri then checks
that the template deploys that copy); --only ID[,ID...] (run only those checks, for every
machine). Prints one line per check (per check and machine) and `infra: N passed, M failed`;
exits non-zero on a failure. Nothing here runs cargo: the workspace's binaries are read from
its Cargo.toml files.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator

INFRA = Path(__file__).resolve().parent
ROOT = INFRA.parent
if str(INFRA) not in sys.path:
    sys.path.insert(0, str(INFRA))  # for rule_input (imported where used: it loads cfn-lint)

TEMPLATE = INFRA / "template.yaml"
STATE_MACHINE = "AWS::Serverless::StateMachine"
DEFAULT_MACHINE = "DrillStateMachine"  # the machine a bare `--asl PATH` stands for
ALARM_FIXTURE = ROOT / "shared" / "tests" / "fixtures" / "alarm-state-change.json"

# Transient Lambda service errors (Step Functions best practice "Handle Lambda service
# exceptions") plus drpilot's own Retryable. Never Internal (a bug) or States.ALL.
RETRY_ERRORS = ["Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
                "Lambda.TooManyRequestsException", "Retryable"]
RETRY_SHAPE = {"IntervalSeconds": 15, "MaxAttempts": 2, "BackoffRate": 2, "JitterStrategy": "FULL"}
NEVER_RETRIED = {"States.ALL", "Internal"}
DENIAL_ERRORS = {"ApprovalDenied", "States.Timeout", "States.HeartbeatTimeout"}
SUBJECT_MAX = 99  # SNS: "less than 100 characters"
RUN_ID_MAX = 80   # run ids and execution names: 1-80 of [A-Za-z0-9_-]


@dataclass
class Machine:
    """One AWS::Serverless::StateMachine of the template and the ASL checked for it: the
    file its DefinitionUri names, or the --asl copy given for it."""
    logical: str
    properties: dict
    template_path: Path
    override: Path | None = None
    _text: str | None = None
    _asl: dict | None = None

    @property
    def definition_uri(self) -> object:
        return self.properties.get("DefinitionUri")

    @property
    def deployed_path(self) -> Path | None:
        """The local file the template deploys (None for an S3 or non-string DefinitionUri)."""
        uri = self.definition_uri
        if not isinstance(uri, str) or uri.startswith("s3://"):
            return None
        return (self.template_path.parent / uri).resolve()

    @property
    def asl_path(self) -> Path:
        path = self.override or self.deployed_path
        if path is None:
            raise CheckError(f"{self.logical}: DefinitionUri is not a local path: {self.definition_uri!r}")
        return path

    @property
    def asl_text(self) -> str:
        if self._text is None:
            try:
                self._text = self.asl_path.read_text()
            except OSError as e:
                raise CheckError(f"{self.logical}: cannot read {self.asl_path}: {e.strerror or e}") from None
        return self._text

    @property
    def asl(self) -> dict:
        if self._asl is None:
            try:
                self._asl = json.loads(self.asl_text)
            except json.JSONDecodeError as e:
                raise CheckError(f"{self.asl_path} is not JSON: {e}") from None
        return self._asl

    @property
    def placeholders(self) -> set[str]:
        return set(re.findall(r"\$\{([A-Za-z0-9]+)\}", self.asl_text))

    @property
    def substitutions(self) -> dict:
        return self.properties.get("DefinitionSubstitutions") or {}

    @property
    def supplied(self) -> set[str]:
        return set(self.substitutions)


@dataclass
class Context:
    template_path: Path
    asl_overrides: dict[str, Path] = field(default_factory=dict)  # machine logical id -> ASL copy
    _tpl: dict | None = None
    _machines: list[Machine] | None = None
    cache: dict = field(default_factory=dict)

    @property
    def tpl(self) -> dict:
        if self._tpl is None:
            from cfnlint.decode import decode  # slow to import

            tpl, matches = decode(str(self.template_path))
            if matches or tpl is None:
                raise CheckError(f"cannot parse {self.template_path}: {matches}")
            self._tpl = tpl
        return self._tpl

    @property
    def machines(self) -> list[Machine]:
        """Every AWS::Serverless::StateMachine of the template, in template order."""
        if self._machines is None:
            found = [Machine(logical, r.get("Properties") or {}, self.template_path, self.asl_overrides.get(logical))
                     for logical, r in self.tpl["Resources"].items() if r.get("Type") == STATE_MACHINE]
            if not found:
                raise CheckError(f"the template has no {STATE_MACHINE}")
            unknown = set(self.asl_overrides) - {m.logical for m in found}
            if unknown:
                raise CheckError(f"--asl names {sorted(unknown)}, not a state machine of the template "
                                 f"({[m.logical for m in found]})")
            self._machines = found
        return self._machines

    def functions(self) -> dict[str, dict]:
        return {k: r for k, r in self.tpl["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}


class CheckError(Exception):
    """A check could not even look (unparsable input): it fails with this message."""


# ------------------------------------------------------------------------- helpers


def workspace_binaries(root: Path = ROOT) -> set[str]:
    """The binary targets of the Cargo workspace at `root`, by Cargo's own rules (explicit
    [[bin]] targets; with autobins, src/main.rs named after the package and src/bin/*),
    read from the Cargo.toml files: no cargo process, no build lock."""
    workspace = tomllib.loads((root / "Cargo.toml").read_text()).get("workspace", {})
    excluded = {(root / e).resolve() for e in workspace.get("exclude", [])}
    members = [Path(p) for m in workspace.get("members", []) for p in sorted(glob.glob(str(root / m)))]
    binaries: set[str] = set()
    for member in members:
        manifest = member / "Cargo.toml"
        if member.resolve() in excluded or not manifest.is_file():
            continue
        cargo = tomllib.loads(manifest.read_text())
        package = cargo.get("package", {})
        explicit = cargo.get("bin", [])
        binaries |= {b["name"] for b in explicit if "name" in b}
        claimed = {os.path.normpath(b["path"]) for b in explicit if "path" in b}
        if not package.get("autobins", True):
            continue
        if (member / "src" / "main.rs").is_file() and os.path.normpath("src/main.rs") not in claimed:
            binaries.add(package["name"])
        for path in sorted((member / "src" / "bin").glob("*.rs")):
            if os.path.normpath(f"src/bin/{path.name}") not in claimed:
                binaries.add(path.stem)
        for path in sorted((member / "src" / "bin").glob("*/main.rs")):
            if os.path.normpath(f"src/bin/{path.parent.name}/main.rs") not in claimed:
                binaries.add(path.parent.name)
    return binaries


def walk_states(states: dict, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """Every state, nested Parallel branches and Map processors included."""
    for name, state in states.items():
        yield prefix + name, state
        for branch in state.get("Branches", []):
            yield from walk_states(branch.get("States", {}), f"{prefix}{name}/")
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if processor:
            yield from walk_states(processor.get("States", {}), f"{prefix}{name}/")


def payload_action(state: dict) -> object:
    """The `action` of a Lambda task's Payload (the failback function's step), if any."""
    payload = (state.get("Arguments") or state.get("Parameters") or {}).get("Payload")
    return payload.get("action") if isinstance(payload, dict) else None


def teardown_state(asl: dict) -> str:
    """The teardown: the Task invoking ${TeardownFunctionArn} (the drill) or the one whose
    Payload action is 'teardown' (the failback function's teardown step)."""
    names = [n for n, s in asl.get("States", {}).items()
             if s.get("Type") == "Task" and ("${TeardownFunctionArn}" in json.dumps(s.get("Arguments", {}))
                                             or payload_action(s) == "teardown")]
    if len(names) != 1:
        raise CheckError(f"expected one teardown Task (invoking ${{TeardownFunctionArn}} or with Payload action "
                         f"'teardown'), found {names}")
    return names[0]


def action_state(asl: dict, action: str) -> str:
    names = [n for n, s in asl.get("States", {}).items() if s.get("Type") == "Task" and payload_action(s) == action]
    if len(names) != 1:
        raise CheckError(f"expected one Task with Payload action {action!r}, found {names}")
    return names[0]


def transitions(state: dict) -> list[str]:
    """Every state `state` can go to (Next, Default, a Choice rule's or a catcher's Next)."""
    targets = [state.get("Next"), state.get("Default")]
    targets += [rule.get("Next") for rule in state.get("Choices", [])]
    targets += [catcher.get("Next") for catcher in state.get("Catch", [])]
    return [t for t in targets if t]


def wait_for_task_token(asl: dict) -> list[str]:
    return [n for n, s in walk_states(asl.get("States", {})) if str(s.get("Resource", "")).endswith(".waitForTaskToken")]


def fill_placeholders(text: str, names: set[str]) -> str:
    for name in names:
        if name.endswith("Seconds"):
            value = "60"
        elif name == "TopicArn":
            value = "arn:aws:sns:us-east-1:123456789012:drpilot"
        else:
            value = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
        text = text.replace("${" + name + "}", value)
    return text


def venv_tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


# -------------------------------------------------------------------------- checks


def check_definition_uri(ctx: Context, m: Machine) -> tuple[bool, str]:
    uri, deployed = m.definition_uri, m.deployed_path
    if deployed is None:
        return False, f"DefinitionUri is not a local path: {uri!r}"
    if m.override is not None and deployed != m.override.resolve():
        return False, f"{deployed} is not {m.override.resolve()}"
    if not deployed.is_file():
        return False, f"DefinitionUri {uri} names {deployed}, which does not exist"
    return True, ""


def check_placeholders(ctx: Context, m: Machine) -> tuple[bool, str]:
    missing = m.placeholders - m.supplied
    return not missing, f"missing: {sorted(missing)}"


def check_substitutions(ctx: Context, m: Machine) -> tuple[bool, str]:
    unused = m.supplied - m.placeholders
    return not unused, f"unused: {sorted(unused)}"


def function_binary(resource: dict) -> object:
    return (resource.get("Metadata") or {}).get("BuildProperties", {}).get("Binary")


def check_functions(ctx: Context, m: Machine) -> tuple[bool, str]:
    binaries = workspace_binaries()
    problems = []
    for key, value in m.substitutions.items():
        if not key.endswith("FunctionArn"):
            continue
        ref = value.get("Fn::GetAtt") if isinstance(value, dict) else None
        if not ref:
            problems.append(f"{key} is not a GetAtt of a function")
            continue
        logical = ref[0] if isinstance(ref, list) else ref.split(".")[0]
        resource = ctx.tpl["Resources"].get(logical)
        if not resource or resource["Type"] != "AWS::Serverless::Function":
            problems.append(f"{key}: {logical} is not a function of the template")
        elif function_binary(resource) not in binaries:
            problems.append(f"{key}: {logical} builds binary {function_binary(resource)!r}, "
                            f"not in the workspace {sorted(binaries)}")
    return not problems, "; ".join(problems)


def check_binaries(ctx: Context) -> tuple[bool, str]:
    binaries = workspace_binaries()
    problems = [f"{logical} builds binary {function_binary(resource)!r}, not in the workspace {sorted(binaries)}"
                for logical, resource in ctx.functions().items() if function_binary(resource) not in binaries]
    if not ctx.functions():
        problems.append("the template has no functions")
    return not problems, "; ".join(problems)


def check_arm64(ctx: Context) -> tuple[bool, str]:
    globals_arch = ((ctx.tpl.get("Globals") or {}).get("Function") or {}).get("Architectures")
    problems = []
    for logical, resource in ctx.functions().items():
        own = (resource.get("Properties") or {}).get("Architectures")
        effective = own if own is not None else globals_arch if globals_arch is not None else ["x86_64"]
        if effective != ["arm64"]:
            source = "its own" if own is not None else "Globals" if globals_arch is not None else "Lambda's default"
            problems.append(f"{logical} runs on {effective} ({source})")
    if not ctx.functions():
        problems.append("the template has no functions")
    return not problems, "; ".join(problems)


def check_asl_validator(ctx: Context, m: Machine) -> tuple[bool, str]:
    validator = INFRA / "node_modules" / ".bin" / "asl-validator"
    if not validator.exists():
        return False, f"{validator} is missing: run scripts/ensure-infra-tools.sh"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(fill_placeholders(m.asl_text, m.placeholders))
    try:
        out = subprocess.run([str(validator), "--json-path", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    return out.returncode == 0, (out.stdout + out.stderr)[-2000:]


def check_retry(ctx: Context, m: Machine) -> tuple[bool, str]:
    problems = []
    for name, state in walk_states(m.asl.get("States", {})):
        retries = state.get("Retry", [])
        if state.get("Type") == "Task" and str(state.get("Resource", "")).startswith("arn:aws:states:::lambda:invoke") and not retries:
            problems.append(f"{name} invokes Lambda without a Retry")
        for i, retry in enumerate(retries):
            errors = retry.get("ErrorEquals", [])
            if NEVER_RETRIED & set(errors):
                problems.append(f"{name}.Retry[{i}] retries {sorted(NEVER_RETRIED & set(errors))}")
            if errors != RETRY_ERRORS:
                problems.append(f"{name}.Retry[{i}].ErrorEquals is {errors}, expected {RETRY_ERRORS}")
            shape = {k: retry.get(k) for k in RETRY_SHAPE}
            if shape != RETRY_SHAPE:
                problems.append(f"{name}.Retry[{i}] is {shape}, expected {RETRY_SHAPE}")
    return not problems, "; ".join(problems)


def check_approval(ctx: Context, m: Machine) -> tuple[bool, str]:
    rules = APPROVAL_RULES.get(m.logical)
    if rules is not None:
        return rules(m.asl)
    waits = wait_for_task_token(m.asl)
    if waits:
        return False, (f"{m.logical} has .waitForTaskToken states {waits} but check.py has no approval rules for it "
                       f"(APPROVAL_RULES knows {sorted(APPROVAL_RULES)})")
    return True, ""


def drill_approval(asl: dict) -> tuple[bool, str]:
    """The drill: one approval; a denial or a timeout skips promote, any other error is a
    failure recorded against promote."""
    states = asl.get("States", {})
    approvals = wait_for_task_token(asl)
    if len(approvals) != 1 or approvals[0] not in states:
        return False, f"expected one top-level .waitForTaskToken approval state, found {approvals}"
    name = approvals[0]
    teardown = teardown_state(asl)
    catch = states[name].get("Catch", [])
    problems = []
    denial = [c for c in catch if DENIAL_ERRORS & set(c.get("ErrorEquals", []))]
    if len(catch) != 2:
        problems.append(f"{name} has {len(catch)} catchers, expected 2 (denial/timeout, then States.ALL)")
    if len(denial) != 1 or set(denial[0].get("ErrorEquals", [])) != DENIAL_ERRORS:
        problems.append(f"{name}: exactly one catcher must match exactly {sorted(DENIAL_ERRORS)}")
    else:
        assign = denial[0].get("Assign", {})
        if "failure" in assign:
            problems.append(f"{name}: the denial catcher must not record a failure")
        if (assign.get("approval") or {}).get("approved") is not False:
            problems.append(f"{name}: the denial catcher must assign approval.approved = false")
        if denial[0].get("Next") != teardown:
            problems.append(f"{name}: the denial catcher must go to {teardown}")
    if catch:
        last = catch[-1]
        if last.get("ErrorEquals") != ["States.ALL"]:
            problems.append(f"{name}: the last catcher must be States.ALL alone (any other error fails the run)")
        else:
            failure = (last.get("Assign") or {}).get("failure") or {}
            if failure.get("phase") != "promote":
                problems.append(f"{name}: the States.ALL catcher must record the failure against phase 'promote', got {failure.get('phase')!r}")
            if "$states.errorOutput.Error" not in str(failure.get("error")):
                problems.append(f"{name}: the failure's error must be $states.errorOutput.Error")
            if "approval request failed: " not in str(failure.get("cause")) or "$states.errorOutput.Cause" not in str(failure.get("cause")):
                problems.append(f"{name}: the failure's cause must be 'approval request failed: ' & the error's Cause")
            if "approval" in (last.get("Assign") or {}):
                problems.append(f"{name}: the States.ALL catcher must not record a denial")
            if last.get("Next") != teardown:
                problems.append(f"{name}: the States.ALL catcher must go to {teardown}")
    return not problems, "; ".join(problems)


def failback_confirmations(asl: dict) -> tuple[bool, str]:
    """The failback: two confirmations, the second right after the first and right before
    copy-back; a denial, a timeout or a failed request stops the failback, which is a
    failure: every error goes to teardown with a failure recorded against step 'confirm'."""
    states = asl.get("States", {})
    confirms = wait_for_task_token(asl)
    if len(confirms) != 2 or any(c not in states for c in confirms):
        return False, f"expected two top-level .waitForTaskToken confirmation states, found {confirms}"
    teardown = teardown_state(asl)
    copy_back = action_state(asl, "copy-back")
    problems = []
    firsts = [c for c in confirms if states[c].get("Next") in confirms and states[c].get("Next") != c]
    if len(firsts) != 1:
        problems.append(f"{confirms} are not in sequence: one must go (Next) to the other")
    else:
        first = firsts[0]
        second = states[first]["Next"]
        if states[second].get("Next") != copy_back:
            problems.append(f"{second} (the second confirmation) must go to {copy_back}, "
                            f"not {states[second].get('Next')!r}")
        skipping = sorted(n for n, s in states.items() if n != first and second in transitions(s))
        if skipping:
            problems.append(f"{skipping} reach {second} without the first confirmation {first}")
    for name in confirms:
        catch = states[name].get("Catch", [])
        if not catch or catch[-1].get("ErrorEquals") != ["States.ALL"]:
            problems.append(f"{name}: the last catcher must be States.ALL alone (a denial, a timeout and a failed "
                            "request all stop the failback)")
        for i, catcher in enumerate(catch):
            if catcher.get("Next") != teardown:
                problems.append(f"{name}.Catch[{i}] must go to {teardown}, not {catcher.get('Next')!r}")
            failure = (catcher.get("Assign") or {}).get("failure")
            if not isinstance(failure, dict) or failure.get("step") != "confirm":
                problems.append(f"{name}.Catch[{i}] must record a failure against step 'confirm' (a stopped failback "
                                f"is a failure), got {failure!r}")
            elif "$states.errorOutput.Error" not in str(failure.get("error")):
                problems.append(f"{name}.Catch[{i}]: the failure's error must be $states.errorOutput.Error")
    return not problems, "; ".join(problems)


# The approval rules of each machine (by logical id).
APPROVAL_RULES: dict[str, Callable[[dict], tuple[bool, str]]] = {
    "DrillStateMachine": drill_approval,
    "FailbackStateMachine": failback_confirmations,
}


SUBSTRING = re.compile(r"^\{%\s*\$substring\((?P<expr>.*),\s*0\s*,\s*(?P<length>\d+)\s*\)\s*%\}$", re.S)

# Worst-case bindings for the subjects: 80-character ids, the longer mode.
_LONG_ID = "R" * RUN_ID_MAX
SUBJECT_BINDINGS = {
    "run": {"run_id": _LONG_ID, "input": {"mode": "recovery", "profile": "p" * 64}},
    "execution": {"name": _LONG_ID, "arn": "arn:aws:states:us-east-1:123456789012:execution:x:" + _LONG_ID},
    "states": {"input": {"run_id": _LONG_ID, "status": "failed"}, "context": {"Execution": {"Name": _LONG_ID}}},
    "failure": None, "approval": None, "parity": None, "input": {},
    "divergence": None, "confirmations": None,
}

_EVALUATE_JS = r"""
const jsonata = require('jsonata');
const {expressions, bindings} = JSON.parse(require('fs').readFileSync(0, 'utf8'));
(async () => {
  const out = {};
  for (const [name, expr] of Object.entries(expressions)) {
    try { out[name] = {value: await jsonata(expr).evaluate({}, bindings)}; }
    catch (e) { out[name] = {error: String(e.message || e)}; }
  }
  process.stdout.write(JSON.stringify(out));
})();
"""


def evaluate_jsonata(expressions: dict[str, str], bindings: dict) -> dict[str, dict]:
    node = shutil.which("node")
    if not node:
        raise CheckError("node is not on PATH (needed to evaluate JSONata)")
    if not (INFRA / "node_modules" / "jsonata").is_dir():
        raise CheckError("infra/node_modules/jsonata is missing: run scripts/ensure-infra-tools.sh")
    out = subprocess.run([node, "-e", _EVALUATE_JS], input=json.dumps({"expressions": expressions, "bindings": bindings}),
                         capture_output=True, text=True, env=dict(os.environ, NODE_PATH=str(INFRA / "node_modules")))
    if out.returncode != 0:
        raise CheckError(f"evaluating JSONata failed: {out.stderr[-1000:]}")
    return json.loads(out.stdout)


def check_subjects(ctx: Context, m: Machine) -> tuple[bool, str]:
    problems, expressions = [], {}
    publishers = [(n, s) for n, s in walk_states(m.asl.get("States", {}))
                  if str(s.get("Resource", "")).startswith("arn:aws:states:::sns:publish")]
    if not publishers:
        problems.append("no sns:publish task found")
    for name, state in publishers:
        subject = (state.get("Arguments") or state.get("Parameters") or {}).get("Subject")
        if subject is None:
            continue
        if not isinstance(subject, str):
            problems.append(f"{name}: Subject is not a string")
        elif not subject.lstrip().startswith("{%"):
            if len(subject) > SUBJECT_MAX:
                problems.append(f"{name}: Subject is {len(subject)} characters, more than {SUBJECT_MAX}")
        else:
            match = SUBSTRING.match(subject.strip())
            if not match:
                problems.append(f"{name}: Subject is not truncated: expected {{% $substring(..., 0, N) %}} with N <= {SUBJECT_MAX}")
            elif int(match["length"]) > SUBJECT_MAX:
                problems.append(f"{name}: Subject is truncated to {match['length']}, more than {SUBJECT_MAX}")
            expressions[name] = subject.strip()[2:-2]
    if expressions:
        for name, result in evaluate_jsonata(expressions, SUBJECT_BINDINGS).items():
            value = result.get("value")
            if "error" in result:
                problems.append(f"{name}: Subject does not evaluate: {result['error']}")
            elif not isinstance(value, str):
                problems.append(f"{name}: Subject evaluates to {value!r}, not a string")
            elif len(value) > SUBJECT_MAX or not value.isascii() or any(ord(c) < 32 or ord(c) == 127 for c in value):
                problems.append(f"{name}: with 80-character ids the Subject is {len(value)} characters"
                                f" (ASCII, no control characters, at most {SUBJECT_MAX} wanted): {value!r}")
    return not problems, "; ".join(problems)


def check_failed_run(ctx: Context, m: Machine) -> tuple[bool, str]:
    states = m.asl.get("States", {})
    teardown = teardown_state(m.asl)
    problems = []

    def ends_failed(name: str, seen: frozenset = frozenset()) -> list[str]:
        """Where a path from `name` ends other than in a Fail state."""
        state = states.get(name)
        if state is None:
            return [f"{name} (no such state)"]
        if name in seen:
            return [f"{name} (loop)"]
        kind = state.get("Type")
        if kind == "Fail":
            return []
        if kind in ("Succeed", "Choice", "Wait", "Parallel", "Map") or state.get("End"):
            return [f"{name} ({kind})"]
        targets = [state.get("Next")] + [c.get("Next") for c in state.get("Catch", [])]
        return [bad for t in targets if t for bad in ends_failed(t, seen | {name})]

    outcome = states[teardown].get("Next")
    choice = states.get(outcome, {})
    rules = [r for r in choice.get("Choices", []) if re.search(r"status\s*=\s*'failed'", str(r.get("Condition", "")))]
    if choice.get("Type") != "Choice" or not rules:
        problems.append(f"{teardown} must be followed by a Choice with a rule on status = 'failed' (got {outcome})")
    for rule in rules:
        bad = ends_failed(rule.get("Next", ""))
        if bad:
            problems.append(f"status 'failed' can end in {bad}, not a Fail state")
    for catcher in states[teardown].get("Catch", []):
        bad = ends_failed(catcher.get("Next", ""))
        if bad:
            problems.append(f"a failed {teardown} can end in {bad}, not a Fail state")
    if not states[teardown].get("Catch"):
        problems.append(f"{teardown} has no Catch: a failing teardown would end the run without its Fail state")
    # Step Functions refuses a Fail state's error name beginning with "States." (the run
    # would end States.Runtime instead): one that re-raises a caught error must rename
    # the service's own errors (States.Timeout, States.TaskFailed, ...).
    for name, state in states.items():
        if state.get("Type") != "Fail":
            continue
        error = str(state.get("Error", ""))
        if error.startswith("States."):
            problems.append(f"{name}: Error {error!r} begins with 'States.', which a Fail state may not raise")
        elif error.startswith("{%") and "$failure" in error and "'States.'" not in error:
            problems.append(f"{name}: Error re-raises the caught error's name unchanged: a States.* error "
                            "(States.Timeout, States.TaskFailed) would end the run States.Runtime")
    return not problems, "; ".join(problems)


def check_rule_inputs(ctx: Context) -> tuple[bool, str]:
    import rule_input  # infra/rule_input.py

    problems = []
    try:
        tpl = ctx.tpl
        event = json.loads(ALARM_FIXTURE.read_text())
        reason = 'Threshold "crossed": a \\ backslash,\na newline and a tab\t'
        tricky = json.loads(json.dumps(event))
        tricky["detail"]["state"]["reason"] = reason
        for sample, want_reason in ((event, event["detail"]["state"]["reason"]), (tricky, reason)):
            value = rule_input.parse_execution_input(rule_input.alarm_input(tpl, sample, "demo"))
            trigger = value.get("trigger") or {}
            expected = {"kind": "alarm", "source": sample["resources"][0], "alarm_name": sample["detail"]["alarmName"],
                        "alarm_reason": want_reason, "fired_at": sample["time"]}
            if value.get("mode") != "recovery" or value.get("profile") != "demo" or trigger != expected:
                problems.append(f"alarm input is {value}, expected mode recovery, profile demo, trigger {expected}")
        arn = "arn:aws:scheduler:us-east-1:123456789012:schedule/default/drpilot-drill"
        value = rule_input.parse_execution_input(rule_input.schedule_input(tpl, "demo", "2026-03-02T09:00:00Z", arn))
        expected = {"kind": "schedule", "source": arn, "fired_at": "2026-03-02T09:00:00Z"}
        if value.get("mode") != "drill" or value.get("profile") != "demo" or value.get("trigger") != expected:
            problems.append(f"schedule input is {value}, expected mode drill, profile demo, trigger {expected}")
    except rule_input.RuleInputError as e:
        problems.append(str(e))
    return not problems, "; ".join(problems)


# ------------------------------------------------------------- evidence, approvals, triggers

EVIDENCE_BUCKET = "EvidenceBucket"
RETENTION_PARAMETER = "EvidenceRetentionDays"
TRIGGERS_CONDITION = "TriggersEnabled"
TRIGGER_STATE = {"Fn::If": [TRIGGERS_CONDITION, "ENABLED", "DISABLED"]}
TRIGGER_EVENTS = {"Schedule", "ScheduleV2", "EventBridgeRule", "CloudWatchEvent"}
READINESS_ACTIONS = {"readiness", "rto-watch"}


def sub_text(value: object) -> str:
    """A Resource (or any string-valued property) as the text it is built from: a string, an
    Fn::Sub's template, a Ref or GetAtt as ${Name} / ${Name.Attribute}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        (key, arg), = value.items()
        if key == "Fn::Sub":
            return str(arg[0] if isinstance(arg, list) else arg)
        if key == "Ref":
            return "${" + str(arg) + "}"
        if key == "Fn::GetAtt":
            return "${" + (".".join(arg) if isinstance(arg, list) else str(arg)) + "}"
    return json.dumps(value, default=str)


def statements_of(resource: dict) -> Iterator[dict]:
    """Every inline policy statement of a SAM function (both branches of an Fn::If)."""
    def unfold(stmt: object) -> Iterator[dict]:
        if isinstance(stmt, dict) and list(stmt) == ["Fn::If"]:
            for branch in stmt["Fn::If"][1:]:
                yield from unfold(branch)
        elif isinstance(stmt, dict) and "Effect" in stmt:
            yield stmt
    for policy in (resource.get("Properties") or {}).get("Policies") or []:
        if isinstance(policy, dict) and "Statement" in policy:
            for stmt in policy["Statement"] or []:
                yield from unfold(stmt)


def as_list(value: object) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


def check_evidence_lock(ctx: Context) -> tuple[bool, str]:
    resource = ctx.tpl["Resources"].get(EVIDENCE_BUCKET)
    if not resource or resource.get("Type") != "AWS::S3::Bucket":
        return False, f"the template has no AWS::S3::Bucket {EVIDENCE_BUCKET}"
    props = resource.get("Properties") or {}
    problems = []
    if props.get("ObjectLockEnabled") not in (True, "true"):
        problems.append("ObjectLockEnabled must be true")
    lock = props.get("ObjectLockConfiguration") or {}
    if lock.get("ObjectLockEnabled") != "Enabled":
        problems.append("ObjectLockConfiguration.ObjectLockEnabled must be Enabled")
    retention = (lock.get("Rule") or {}).get("DefaultRetention") or {}
    if retention.get("Mode") != "COMPLIANCE":
        problems.append(f"the default retention mode must be COMPLIANCE (GOVERNANCE can be bypassed), "
                        f"got {retention.get('Mode')!r}")
    if retention.get("Days") != {"Ref": RETENTION_PARAMETER} or "Years" in retention:
        problems.append(f"the default retention must be Days: !Ref {RETENTION_PARAMETER} (and no Years), "
                        f"got {dict(retention)}")
    parameter = ctx.tpl.get("Parameters", {}).get(RETENTION_PARAMETER)
    if not parameter:
        problems.append(f"no parameter {RETENTION_PARAMETER}")
    elif parameter.get("Type") != "Number" or float(parameter.get("MinValue", 0)) < 1:
        problems.append(f"{RETENTION_PARAMETER} must be a Number with MinValue of at least 1")
    if (props.get("VersioningConfiguration") or {}).get("Status") != "Enabled":
        problems.append("versioning must be Enabled (Object Lock works on versions)")
    # RetainExceptOnCreate: kept like Retain, except by the rollback of a failed first deploy
    # (the bucket is empty then; kept, it would block every later deploy by its name).
    if resource.get("DeletionPolicy") not in ("Retain", "RetainExceptOnCreate"):
        problems.append("DeletionPolicy must be Retain or RetainExceptOnCreate (evidence outlives the stack), "
                        f"got {resource.get('DeletionPolicy')!r}")
    if resource.get("UpdateReplacePolicy") != "Retain":
        problems.append("UpdateReplacePolicy must be Retain (evidence outlives the stack), "
                        f"got {resource.get('UpdateReplacePolicy')!r}")
    # A fixed name is invalid for some stack names, and a bucket kept from a failed deploy
    # would hold it: CloudFormation generates one valid for any stack.
    kept_name = {"Fn::If": ["HasEvidenceBucketName", {"Ref": "EvidenceBucketName"}, {"Ref": "AWS::NoValue"}]}
    if "BucketName" in props and props["BucketName"] != kept_name:
        problems.append("BucketName must be left to CloudFormation (a name from the stack is invalid for "
                        "upper-case or long stack names, and a kept bucket blocks the next deploy), or be "
                        "!If [HasEvidenceBucketName, !Ref EvidenceBucketName, !Ref AWS::NoValue] for a stack "
                        "keeping its bucket")
    return not problems, "; ".join(problems)


def check_approve_url(ctx: Context) -> tuple[bool, str]:
    problems = []
    approve = [logical for logical, r in ctx.functions().items() if function_binary(r) == "approve"]
    if len(approve) != 1:
        problems.append(f"expected one function building binary 'approve', found {approve}")
    for logical, resource in ctx.tpl["Resources"].items():
        props = resource.get("Properties") or {}
        kind = resource.get("Type")
        if kind == "AWS::Serverless::Function" and "FunctionUrlConfig" in props:
            auth = (props.get("FunctionUrlConfig") or {}).get("AuthType")
            if auth != "AWS_IAM":
                problems.append(f"{logical}: FunctionUrlConfig.AuthType is {auth!r}, must be AWS_IAM")
        elif kind == "AWS::Lambda::Url" and props.get("AuthType") != "AWS_IAM":
            problems.append(f"{logical}: AuthType is {props.get('AuthType')!r}, must be AWS_IAM")
        elif kind == "AWS::Lambda::Permission" and (props.get("FunctionUrlAuthType") == "NONE" or (
                props.get("Principal") == "*" and "InvokeFunctionUrl" in str(props.get("Action")))):
            problems.append(f"{logical}: opens a function URL to the public")
    for logical in approve:
        if "FunctionUrlConfig" not in (ctx.tpl["Resources"][logical].get("Properties") or {}):
            problems.append(f"{logical} (approve) has no FunctionUrlConfig")
    return not problems, "; ".join(problems)


def check_receipts_grants(ctx: Context) -> tuple[bool, str]:
    evidence_objects = "arn:${AWS::Partition}:s3:::${" + EVIDENCE_BUCKET + "}/${ReceiptsPrefix}"
    evidence_bucket = "arn:${AWS::Partition}:s3:::${" + EVIDENCE_BUCKET + "}"
    problems, receipts_grants = [], 0
    for logical, resource in ctx.functions().items():
        reads_evidence, lists_evidence = False, False
        for stmt in statements_of(resource):
            actions = [str(a) for a in as_list(stmt.get("Action"))]
            for value in as_list(stmt.get("Resource")):
                text = sub_text(value)
                if "${ReceiptsPrefix}" in text:
                    receipts_grants += 1
                    if not text.startswith(evidence_objects):
                        problems.append(f"{logical}: {', '.join(actions)} on {text}: receipts live in the evidence "
                                        f"bucket ({evidence_objects}...)")
                if text.startswith(evidence_bucket + "/") and "s3:GetObject" in actions:
                    reads_evidence = True
                if text == evidence_bucket and "s3:ListBucket" in actions and not stmt.get("Condition"):
                    lists_evidence = True
        if reads_evidence and not lists_evidence:
            problems.append(f"{logical} reads in the evidence bucket without s3:ListBucket on {evidence_bucket} "
                            "(unconditioned): a missing receipt would answer 403, not 404")
    if not receipts_grants:
        problems.append("no function holds a grant on ${ReceiptsPrefix}")
    return not problems, "; ".join(problems)


APPROVAL_KEY = "ApprovalKey"
APPROVAL_KEY_ENV = "DRPILOT_APPROVAL_KEY"
APPROVAL_KEY_USERS = ("approve", "promote", "failback")   # binaries that seal or verify


def get_att(value: object) -> tuple[str, str] | None:
    """(logical id, attribute) of an Fn::GetAtt, in either form; None for anything else."""
    if isinstance(value, dict) and list(value) == ["Fn::GetAtt"]:
        arg = value["Fn::GetAtt"]
        parts = arg.split(".", 1) if isinstance(arg, str) else list(arg)
        if len(parts) == 2:
            return str(parts[0]), str(parts[1])
    return None


def check_approval_key(ctx: Context) -> tuple[bool, str]:
    problems = []
    key = ctx.tpl["Resources"].get(APPROVAL_KEY)
    if not key or key.get("Type") != "AWS::KMS::Key":
        problems.append(f"the template has no AWS::KMS::Key {APPROVAL_KEY}")
    wanted = f"!GetAtt {APPROVAL_KEY}.Arn"

    def verify(where: str, value: object) -> None:
        if get_att(value) != (APPROVAL_KEY, "Arn"):
            problems.append(f"{where}: {APPROVAL_KEY_ENV} is {sub_text(value)}, must be the key ARN ({wanted}): "
                            "an alias can be repointed by whoever holds kms:UpdateAlias")

    global_variables = ((((ctx.tpl.get("Globals") or {}).get("Function") or {}).get("Environment") or {})
                        .get("Variables") or {})
    if APPROVAL_KEY_ENV in global_variables:
        verify("Globals", global_variables[APPROVAL_KEY_ENV])
    seen = set()
    for logical, resource in ctx.functions().items():
        binary = function_binary(resource)
        variables = (((resource.get("Properties") or {}).get("Environment") or {}).get("Variables") or {})
        if APPROVAL_KEY_ENV in variables:
            verify(logical, variables[APPROVAL_KEY_ENV])
        elif binary in APPROVAL_KEY_USERS and APPROVAL_KEY_ENV not in global_variables:
            problems.append(f"{logical} ({binary}) has no {APPROVAL_KEY_ENV}")
        seen.add(binary)
    for binary in APPROVAL_KEY_USERS:
        if binary not in seen:
            problems.append(f"no function builds binary {binary!r}")
    return not problems, "; ".join(problems)


# ------------------------------------------------------------------------ dependencies

_PERMISSIONS = None


def permissions_module():
    """infra/permissions.py (its SAM translation), loaded by path: infra/permissions/ is a
    directory of the same name."""
    global _PERMISSIONS
    if _PERMISSIONS is None:
        import importlib.util
        spec = importlib.util.spec_from_file_location("drpilot_permissions_for_check", INFRA / "permissions.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        _PERMISSIONS = module
    return _PERMISSIONS


def references(value: object, resources: dict, out: set[str]) -> None:
    """The resources `value` refers to: Ref, Fn::GetAtt, and Fn::Sub's ${Name} / ${Name.Attr}
    (not ${!Literal}, not the Sub's own variables)."""
    if isinstance(value, list):
        for item in value:
            references(item, resources, out)
        return
    if not isinstance(value, dict):
        return
    for key, arg in value.items():
        if key == "Ref" and isinstance(arg, str):
            if arg in resources:
                out.add(arg)
        elif key == "Fn::GetAtt":
            target = get_att({key: arg})
            if target and target[0] in resources:
                out.add(target[0])
        elif key == "Fn::Sub":
            text, variables = (arg[0], arg[1] or {}) if isinstance(arg, list) else (arg, {})
            for name in re.findall(r"\$\{([^}!][^}]*)\}", str(text)):
                logical = name.split(".", 1)[0]
                if name not in variables and logical in resources:
                    out.add(logical)
            references(variables, resources, out)
        else:
            references(arg, resources, out)


def dependency_cycles(resources: dict) -> list[list[str]]:
    """Every circle of the resources' dependencies (Ref, GetAtt, Sub in Properties;
    DependsOn), one shortest circle per strongly connected component, starting at its
    first logical id in sort order."""
    graph: dict[str, set[str]] = {}
    for logical, resource in resources.items():
        needs: set[str] = set()
        references(resource.get("Properties") or {}, resources, needs)
        depends = resource.get("DependsOn") or []
        needs |= {d for d in ([depends] if isinstance(depends, str) else depends) if d in resources}
        graph[logical] = needs
    # Tarjan's strongly connected components.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:
        members, start = set(component), min(component)
        # breadth first from start back to start, inside the component
        previous: dict[str, str] = {}
        queue, found = [start], None
        while queue and found is None:
            node = queue.pop(0)
            for other in sorted(graph[node] & members):
                if other == start:
                    found = node
                    break
                if other not in previous:
                    previous[other] = node
                    queue.append(other)
        path = [found]
        while path[-1] != start:
            path.append(previous[path[-1]])
        cycles.append(list(reversed(path)) + [start])
    return sorted(cycles)


def check_dependencies(ctx: Context) -> tuple[bool, str]:
    permissions = permissions_module()
    declared = ctx.tpl.get("Parameters") or {}
    # Values for the parameters without a default: dependencies do not depend on them.
    overrides = {name: "placeholder" for name, spec in declared.items() if "Default" not in (spec or {})}
    _, cfn, _ = permissions.translate(ctx.template_path, overrides)
    cycles = dependency_cycles(cfn.get("Resources") or {})
    return not cycles, "; ".join("circular dependency: " + " -> ".join(c) for c in cycles)


# --------------------------------------------------------------------- distributed maps

ITEM_READER = "arn:aws:states:::s3:getObject"
LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
# The run's plan, the Distributed Maps' items: bringup writes it to
# <receipts>runs/<run_id>/plan.json (shared/src/data/plan.rs, plan_uri).
PLAN_KEY = "${ReceiptsPrefix}runs/*/plan.json"
# What a range's child and its phase's reducer read and write under the receipts
# (shared/src/data/plan.rs: range_uri, range_file_uri, prepared_uri, and the plan), as sample
# keys the functions' grants must cover.
RANGE_OBJECTS = {
    "s3:GetObject": ["runs/RUN/plan.json", "runs/RUN/ranges/PHASE/00000.json",
                     "runs/RUN/ranges/PHASE/00000.differences.jsonl", "runs/RUN/ranges/PHASE/prepared.json"],
    "s3:PutObject": ["runs/RUN/ranges/PHASE/00000.json", "runs/RUN/ranges/PHASE/00000.differences.jsonl",
                     "runs/RUN/ranges/PHASE/prepared.json"],
}


def is_distributed_map(state: dict) -> bool:
    processor = state.get("ItemProcessor") or {}
    return state.get("Type") == "Map" and (
        "ItemReader" in state or (processor.get("ProcessorConfig") or {}).get("Mode") == "DISTRIBUTED")


def iam_matches(pattern: str, text: str) -> bool:
    """IAM's wildcard match of a Resource (`*` any run of characters, `?` one), on the
    texts the ARNs are built from (${...} references compare as written)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.S) is not None


def allowed_pairs(resource: dict) -> Iterator[tuple[str, str]]:
    """(action, resource text) of every Allow statement of a resource's inline Policies."""
    for stmt in statements_of(resource):
        if stmt.get("Effect") != "Allow":
            continue
        for action in as_list(stmt.get("Action")):
            for value in as_list(stmt.get("Resource")):
                yield str(action), sub_text(value)


def invoked_function(m: Machine, state: dict) -> str | None:
    """The template function a lambda:invoke Task names through ${XFunctionArn}."""
    name = str(((state.get("Arguments") or state.get("Parameters") or {}).get("FunctionName")) or "")
    match = re.fullmatch(r"\$\{([A-Za-z0-9]+)\}", name)
    value = m.substitutions.get(match[1]) if match else None
    ref = value.get("Fn::GetAtt") if isinstance(value, dict) else None
    if not ref:
        return None
    return ref[0] if isinstance(ref, list) else str(ref).split(".")[0]


# The functions whose range's child stops at its invocation's deadline and answers a
# continuation (shared/src/data/plan.rs, Continuation): restore's and promote's writers.
CONTINUING_FUNCTIONS = {"RestoreFunction", "PromoteFunction"}


def continuation_loop(where: str, name: str, task: dict, states: dict) -> list[str]:
    """A continuing child's Task passes its input's continuation to the function, keeps the
    answer's in its output, and goes to a Choice that invokes it again while there is one;
    the child execution ends on one number (the Map gathers every child's output)."""
    problems = []
    payload = (task.get("Arguments") or {}).get("Payload") or {}
    if "$states.input.continuation" not in str(payload.get("continuation")):
        problems.append(f"{where}: its Payload does not pass $states.input.continuation (a child that stopped at "
                        "its deadline would start over)")
    if "$states.result.Payload.continuation" not in str(task.get("Output")):
        problems.append(f"{where}: its Output drops the answer's continuation")
    choice = states.get(str(task.get("Next"))) or {}
    loops = [c for c in choice.get("Choices") or [] if c.get("Next") == name
             and "continuation != null" in str(c.get("Condition"))]
    if choice.get("Type") != "Choice" or not loops:
        problems.append(f"{where}: is not followed by a Choice that invokes it again while a continuation is answered")
        return problems
    done = states.get(str(choice.get("Default"))) or {}
    if not done.get("End") or "$states.input.item.index" != str(done.get("Output", "")).strip("{}% "):
        problems.append(f"{where}: the child execution must end on the item's index, not on its input (the Map "
                        "gathers every child's output into its own, under 256 KiB)")
    return problems


def check_distributed_map(ctx: Context, m: Machine) -> tuple[bool, str]:
    """Every Distributed Map (a Map with an ItemReader, or in DISTRIBUTED mode): STANDARD
    children, the plan read as JSON with s3:getObject, no failure tolerated, a States.ALL
    catcher; each child Lambda Task retried on the Lambda service errors and Retryable and
    catching nothing (the Map catches: a child that caught its error would count as a
    success); the state machine's role grants exactly what the Map Runs need, and the
    functions the children invoke may read and write the ranges' objects."""
    problems: list[str] = []
    maps = [(n, s) for n, s in walk_states(m.asl.get("States", {})) if is_distributed_map(s)]
    readers = False
    children: dict[str, list[str]] = {}  # function logical id -> the child states invoking it
    for name, state in maps:
        processor = state.get("ItemProcessor") or {}
        config = processor.get("ProcessorConfig") or {}
        if config.get("Mode") != "DISTRIBUTED":
            problems.append(f"{name}: reads an ItemReader but its ProcessorConfig.Mode is {config.get('Mode')!r}, "
                            "not DISTRIBUTED")
        if config.get("ExecutionType") != "STANDARD":
            problems.append(f"{name}: ProcessorConfig.ExecutionType is {config.get('ExecutionType')!r}, not STANDARD "
                            "(an EXPRESS child ends after 5 minutes, before a phase Lambda's 900 s, and runs at least once)")
        reader = state.get("ItemReader")
        if reader is not None:
            readers = True
            if reader.get("Resource") != ITEM_READER:
                problems.append(f"{name}: ItemReader.Resource is {reader.get('Resource')!r}, not {ITEM_READER}")
            input_type = (reader.get("ReaderConfig") or {}).get("InputType")
            if input_type != "JSON":
                problems.append(f"{name}: ItemReader.ReaderConfig.InputType is {input_type!r}, not JSON (the plan is a "
                                "JSON array)")
            arguments = reader.get("Arguments") or reader.get("Parameters") or {}
            missing = [k for k in ("Bucket", "Key") if k not in arguments and f"{k}.$" not in arguments]
            if missing:
                problems.append(f"{name}: ItemReader names no {' or '.join(missing)}")
        for key in ("ToleratedFailurePercentage", "ToleratedFailureCount"):
            if state.get(key, 0) != 0:
                problems.append(f"{name}: {key} is {state.get(key)!r}: a failed range must fail the Map (0, or absent)")
        for key in ("ToleratedFailurePercentagePath", "ToleratedFailureCountPath"):
            if key in state:
                problems.append(f"{name}: {key} is set: a failed range must fail the Map (no failure tolerated)")
        catch = state.get("Catch") or []
        if not catch or catch[-1].get("ErrorEquals") != ["States.ALL"]:
            problems.append(f"{name}: the last catcher must be States.ALL (the Map's failure goes to its reducer)")
        tasks = [(n, s) for n, s in walk_states(processor.get("States") or {}) if s.get("Type") == "Task"]
        if not tasks:
            problems.append(f"{name}: its ItemProcessor has no Task")
        for child, task in tasks:
            where = f"{name}/{child}"
            if not str(task.get("Resource", "")).startswith(LAMBDA_INVOKE):
                continue
            if not any(set(RETRY_ERRORS) <= set(r.get("ErrorEquals") or []) for r in task.get("Retry") or []):
                problems.append(f"{where}: no Retry on {RETRY_ERRORS}")
            if task.get("Catch"):
                problems.append(f"{where} has a Catch: a child that catches its error succeeds and the Map never "
                                "fails (the Map catches)")
            logical = invoked_function(m, task)
            if logical:
                children.setdefault(logical, []).append(where)
            if logical in CONTINUING_FUNCTIONS:
                problems += continuation_loop(where, child, task, processor.get("States") or {})

    # The state machine's role: exactly what the Map Runs need, on this machine only.
    resource = ctx.tpl["Resources"].get(m.logical) or {}
    if maps and "Role" in m.properties:
        problems.append(f"{m.logical} names its Role: check.py reads the grants of its Policies")
    needed: set[tuple[str, str]] = set()
    if maps:
        name = m.properties.get("Name")
        if name is None:
            problems.append(f"{m.logical} has no Name: its role names its ARN from the Name (a Ref to the machine "
                            "from its own role is a circular dependency)")
        else:
            name_text = sub_text(name)
            states_arn = "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}"
            needed |= {("states:StartExecution", f"{states_arn}:stateMachine:{name_text}"),
                       ("states:DescribeExecution", f"{states_arn}:execution:{name_text}:*"),
                       ("states:StopExecution", f"{states_arn}:execution:{name_text}:*"),
                       # A Map Run's children: <machine>/<map run label>:<id>.
                       ("states:DescribeExecution", f"{states_arn}:execution:{name_text}/*"),
                       ("states:StopExecution", f"{states_arn}:execution:{name_text}/*")}
        if readers:
            needed.add(("s3:GetObject", "arn:${AWS::Partition}:s3:::${" + EVIDENCE_BUCKET + "}/" + PLAN_KEY))
    granted = set(allowed_pairs(resource))
    for action, target in sorted(needed - granted):
        problems.append(f"{m.logical}'s role lacks {action} on {target}")
    for action, target in sorted(granted - needed):
        if action.split(":", 1)[0] in ("states", "s3", "*"):
            problems.append(f"{m.logical}'s role grants {action} on {target}, which no Distributed Map of it needs")

    # The functions the children invoke (and their reducers, the same functions): the
    # ranges' objects and the plan, under the receipts in the evidence bucket.
    evidence = "arn:${AWS::Partition}:s3:::${" + EVIDENCE_BUCKET + "}/${ReceiptsPrefix}"
    for logical, where in sorted(children.items()):
        function = ctx.tpl["Resources"].get(logical) or {}
        pairs = list(allowed_pairs(function))
        # Each phase writes only its own ranges' results (runs/<run>/ranges/<phase>/).
        phase = ((function.get("Metadata") or {}).get("BuildProperties") or {}).get("Binary", "PHASE")
        for action, keys in RANGE_OBJECTS.items():
            for key in keys:
                target = evidence + key.replace("PHASE", phase)
                if not any(iam_matches(a, action) and iam_matches(r, target) for a, r in pairs):
                    problems.append(f"{logical} (invoked by {', '.join(where)}) may not {action} {target}")
    return not problems, "; ".join(problems)


def check_triggers(ctx: Context) -> tuple[bool, str]:
    problems, found = [], 0
    if ctx.tpl.get("Conditions", {}).get(TRIGGERS_CONDITION) != {"Fn::Equals": [{"Ref": "EnableTriggers"}, "true"]}:
        problems.append(f"condition {TRIGGERS_CONDITION} must be !Equals [!Ref EnableTriggers, \"true\"]")
    for logical, resource in ctx.tpl["Resources"].items():
        kind = resource.get("Type")
        props = resource.get("Properties") or {}
        triggers = []
        if kind in ("AWS::Serverless::Function", "AWS::Serverless::StateMachine"):
            triggers = [(f"{logical}.Events.{name}", event.get("Properties") or {})
                        for name, event in (props.get("Events") or {}).items() if event.get("Type") in TRIGGER_EVENTS]
        elif kind in ("AWS::Scheduler::Schedule", "AWS::Events::Rule"):
            triggers = [(logical, props)]
        for where, trigger in triggers:
            found += 1
            if trigger.get("State") != TRIGGER_STATE:
                problems.append(f"{where}: State must be !If [{TRIGGERS_CONDITION}, ENABLED, DISABLED], "
                                f"got {trigger.get('State')!r}" + (" (Enabled is not State)" if "Enabled" in trigger else ""))
    readiness = [(logical, r) for logical, r in ctx.functions().items() if function_binary(r) == "readiness"]
    if len(readiness) != 1:
        problems.append(f"expected one function building binary 'readiness', found {[l for l, _ in readiness]}")
    for logical, resource in readiness:
        actions = []
        for name, event in ((resource.get("Properties") or {}).get("Events") or {}).items():
            if event.get("Type") != "ScheduleV2":
                continue
            try:
                actions.append(json.loads(str((event.get("Properties") or {}).get("Input"))).get("action"))
            except (json.JSONDecodeError, AttributeError):
                problems.append(f"{logical}.Events.{name}: Input is not a JSON object")
        if sorted(a for a in actions if a) != sorted(READINESS_ACTIONS):
            problems.append(f"{logical}: its ScheduleV2 events' actions are {actions}, expected one each of "
                            f"{sorted(READINESS_ACTIONS)}")
    if not found:
        problems.append("the template has no schedule or rule")
    return not problems, "; ".join(problems)


def render_dashboard(ctx: Context, body: object) -> str:
    """The dashboard body with its !Sub filled in: pseudo parameters, parameter defaults, and
    ${Logical.Arn} as a stand-in alarm ARN ending in the logical id."""
    text, variables = (body, {}) if isinstance(body, str) else (None, {})
    if isinstance(body, dict) and list(body) == ["Fn::Sub"]:
        arg = body["Fn::Sub"]
        text, variables = (arg[0], arg[1]) if isinstance(arg, list) else (arg, {})
    if not isinstance(text, str):
        raise CheckError(f"DashboardBody is neither a string nor an !Sub: {type(body).__name__}")
    pseudo = {"AWS::Region": "us-east-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws",
              "AWS::StackName": "drpilot", "AWS::URLSuffix": "amazonaws.com"}
    parameters = ctx.tpl.get("Parameters", {})

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        if name in variables:
            return str(variables[name])
        if name in pseudo:
            return pseudo[name]
        if name in parameters:
            if "Default" not in parameters[name]:
                raise CheckError(f"the dashboard uses parameter {name}, which has no Default")
            default = parameters[name]["Default"]
            return ",".join(map(str, default)) if isinstance(default, list) else str(default)
        logical = name.split(".", 1)[0]
        if logical in ctx.tpl["Resources"]:
            return f"arn:aws:cloudwatch:us-east-1:123456789012:alarm:{logical}" if name.endswith(".Arn") else logical
        raise CheckError(f"the dashboard's !Sub names ${{{name}}}, which is no parameter or resource of the template")

    return re.sub(r"\$\{([^}]+)\}", fill, text)


def check_dashboard(ctx: Context) -> tuple[bool, str]:
    problems = []
    dashboards = [(l, r) for l, r in ctx.tpl["Resources"].items() if r.get("Type") == "AWS::CloudWatch::Dashboard"]
    alarms = {l for l, r in ctx.tpl["Resources"].items() if r.get("Type") == "AWS::CloudWatch::Alarm"}
    on_tiles: set[str] = set()
    if not dashboards:
        problems.append("the template has no dashboard")
    for logical, resource in dashboards:
        text = render_dashboard(ctx, (resource.get("Properties") or {}).get("DashboardBody"))
        try:
            body = json.loads(text)
        except json.JSONDecodeError as e:
            problems.append(f"{logical}: the body is not JSON ({e}): {text[max(0, e.pos - 80):e.pos + 40]!r}")
            continue
        cells: dict[tuple[int, int], int] = {}
        for i, widget in enumerate(body.get("widgets") or []):
            try:
                x, y, w, h = (int(widget[k]) for k in ("x", "y", "width", "height"))
            except (KeyError, TypeError, ValueError):
                problems.append(f"{logical}: widget {i} has no x, y, width and height")
                continue
            if x < 0 or y < 0 or w < 1 or h < 1 or x + w > 24:
                problems.append(f"{logical}: widget {i} ({widget.get('properties', {}).get('title')!r}) "
                                f"leaves the 24-column grid")
            for cell in ((cx, cy) for cx in range(x, x + w) for cy in range(y, y + h)):
                if cell in cells:
                    problems.append(f"{logical}: widgets {cells[cell]} and {i} overlap at {cell}")
                    break
                cells[cell] = i
            if widget.get("type") == "alarm":
                # ${Alarm.Arn} renders as ...:alarm:<logical id>
                for arn in widget.get("properties", {}).get("alarms") or []:
                    on_tiles.add(str(arn).rsplit(":", 1)[-1])
    missing = sorted(alarms - on_tiles)
    if missing:
        problems.append(f"alarms not on any alarm widget: {missing}")
    return not problems, "; ".join(problems)


def check_cfn_lint(ctx: Context) -> tuple[bool, str]:
    out = subprocess.run([venv_tool("cfn-lint"), str(ctx.template_path)], capture_output=True, text=True)
    return out.returncode == 0, (out.stdout + out.stderr)[-3000:]


def check_sam_validate(ctx: Context) -> tuple[bool, str]:
    """`sam validate` (the SAM translator: event types, policy templates, ...) and
    `sam validate --lint` (which runs cfn-lint instead, and misses what only the translator
    sees, such as an unknown event type)."""
    env = dict(os.environ, AWS_ACCESS_KEY_ID="dummy", AWS_SECRET_ACCESS_KEY="dummy",
               AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1", SAM_CLI_TELEMETRY="0")
    env.pop("AWS_ENDPOINT_URL", None)
    details = []
    # An empty config file: a samconfig.toml beside the template (validate settings such as
    # lint = true) must not change what is checked.
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "samconfig.toml"
        config.write_text("version = 0.1\n")
        for extra in ([], ["--lint"]):
            out = subprocess.run([venv_tool("sam"), "validate", *extra, "--template", str(ctx.template_path),
                                  "--config-file", str(config)],
                                 capture_output=True, text=True, env=env, cwd=ctx.template_path.parent)
            if out.returncode != 0:
                details.append(f"sam validate {' '.join(extra)}: " + (out.stdout + out.stderr)[-3000:])
    return not details, "\n".join(details)


# (id, title, function, per machine?)
CHECKS: list[tuple[str, str, Callable[..., tuple[bool, str]], bool]] = [
    ("definition-uri", "DefinitionUri is the ASL that runs locally", check_definition_uri, True),
    ("placeholders", "every ${...} in the ASL is supplied by the template", check_placeholders, True),
    ("substitutions", "every substitution the template supplies is used", check_substitutions, True),
    ("functions", "every function the ASL invokes exists in the template and the workspace", check_functions, True),
    ("binaries", "every function of the template builds a binary of the workspace", check_binaries, False),
    ("arm64", "every function runs on arm64", check_arm64, False),
    ("asl-validator", "asl-validator accepts the definition", check_asl_validator, True),
    ("retry", "every Retry retries exactly the transient Lambda errors and Retryable", check_retry, True),
    ("approval", "approvals follow the machine's rules (drill: only a denial or a timeout skips promote; "
     "failback: two confirmations, any error stops it)", check_approval, True),
    ("subjects", "every SNS Subject is truncated below 100 characters", check_subjects, True),
    ("failed-run", "a failed teardown status ends the execution FAILED, under an error name a Fail state may raise",
     check_failed_run, True),
    ("distributed-map", "every Distributed Map runs STANDARD children over the plan, tolerates no failure and is "
     "granted what its Map Run needs", check_distributed_map, True),
    ("rule-inputs", "the alarm rule and the schedule pass valid execution inputs", check_rule_inputs, False),
    ("evidence-lock", "the evidence bucket is write-once (Object Lock COMPLIANCE, EvidenceRetentionDays, versioned, "
     "retained) and named by CloudFormation", check_evidence_lock, False),
    ("approve-url", "every function URL uses AuthType AWS_IAM, never NONE", check_approve_url, False),
    ("approval-key", "approve, promote and failback name the approval key by its ARN, never an alias",
     check_approval_key, False),
    ("receipts-grants", "every receipts grant names the evidence bucket, and its readers may list it",
     check_receipts_grants, False),
    ("triggers", "every schedule and rule is disabled unless EnableTriggers; readiness has its two schedules",
     check_triggers, False),
    ("dashboard", "the dashboard body is valid JSON on the grid and shows every alarm", check_dashboard, False),
    ("dependencies", "the translated template has no circular dependency", check_dependencies, False),
    ("cfn-lint", "cfn-lint accepts the template", check_cfn_lint, False),
    ("sam-validate", "sam validate and sam validate --lint accept the template", check_sam_validate, False),
]


def parse_asl_overrides(values: list[str], error: Callable[[str], None]) -> dict[str, Path]:
    """`--asl [MACHINE=]PATH` values: the machine's logical id (DrillStateMachine when left
    out) -> the ASL copy to check for it."""
    overrides: dict[str, Path] = {}
    for value in values:
        match = re.match(r"^([A-Za-z0-9]+)=(.+)$", value)
        machine, path = (match[1], match[2]) if match else (DEFAULT_MACHINE, value)
        if machine in overrides:
            error(f"--asl given twice for {machine}")
        overrides[machine] = Path(path).resolve()
    return overrides


def main(argv: list[str] | None = None, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(description="drpilot template and state machine checks")
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    parser.add_argument("--asl", action="append", default=[], metavar="[MACHINE=]PATH",
                        help=f"check this copy of a machine's ASL ({DEFAULT_MACHINE} without MACHINE=); "
                             "default: the file each machine's DefinitionUri names")
    parser.add_argument("--only", action="append", default=[], metavar="ID[,ID...]",
                        help=f"run only these checks: {', '.join(c[0] for c in CHECKS)}")
    args = parser.parse_args(argv)
    only = {i for value in args.only for i in value.split(",") if i}
    unknown = only - {c[0] for c in CHECKS}
    if unknown:
        parser.error(f"unknown check(s) {sorted(unknown)}; known: {[c[0] for c in CHECKS]}")

    ctx = Context(args.template.resolve(), parse_asl_overrides(args.asl, parser.error))
    failed = ran = 0

    def report(check_id: str, title: str, machine: str | None, run: Callable[[], tuple[bool, str]]) -> None:
        nonlocal failed, ran
        ran += 1
        try:
            ok, detail = run()
        except Exception as e:  # a check that cannot look fails, and the others still run
            ok, detail = False, f"{type(e).__name__}: {e}"
        where = f" ({machine})" if machine else ""
        print(f"{'ok  ' if ok else 'FAIL'} [{check_id}] {title}{where}" + ("" if ok or not detail else f"\n     {detail}"),
              file=out, flush=True)
        failed += not ok

    for check_id, title, check, per_machine in CHECKS:
        if only and check_id not in only:
            continue
        if not per_machine:
            report(check_id, title, None, lambda: check(ctx))
            continue
        try:
            machines = ctx.machines
        except Exception as e:  # no machine to run it for: the check fails once
            report(check_id, title, None, lambda: (False, f"{type(e).__name__}: {e}"))
            continue
        for machine in machines:
            report(check_id, title, machine.logical, lambda: check(ctx, machine))
    print(f"infra: {ran - failed} passed, {failed} failed", file=out, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
