#!/usr/bin/env python3
"""Template checks (run by `make test` with .venv-infra's Python):

1. every ${...} in statemachine/drill.asl.json is supplied by the template's
   DefinitionSubstitutions, and nothing supplied goes unused;
2. every function the state machine invokes is a resource of the template, built from a
   binary that exists in the Cargo workspace;
3. asl-validator accepts the definition (with the substitutions filled in);
4. cfn-lint accepts the template;
5. `sam validate --lint` accepts it (offline, dummy credentials).

Prints one line per check and `infra: N passed, M failed`; exits non-zero on a failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "infra" / "template.yaml"
ASL = ROOT / "statemachine" / "drill.asl.json"

results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))


def template() -> dict:
    tpl, matches = decode(str(TEMPLATE))
    if matches:
        raise SystemExit(f"cannot parse {TEMPLATE}: {matches}")
    return tpl


def state_machine(tpl: dict) -> dict:
    machines = [r for r in tpl["Resources"].values() if r["Type"] == "AWS::Serverless::StateMachine"]
    assert len(machines) == 1, "expected one state machine"
    return machines[0]["Properties"]


def workspace_binaries() -> set[str]:
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    return {t["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]}


def main() -> int:
    tpl = template()
    sm = state_machine(tpl)
    definition_uri = (TEMPLATE.parent / sm["DefinitionUri"]).resolve()
    check("DefinitionUri is the ASL that runs locally", definition_uri == ASL.resolve(), str(definition_uri))

    asl_text = ASL.read_text()
    placeholders = set(re.findall(r"\$\{([A-Za-z0-9]+)\}", asl_text))
    supplied = set(sm["DefinitionSubstitutions"])
    check("every ${...} in the ASL is supplied by the template", placeholders <= supplied,
          f"missing: {sorted(placeholders - supplied)}")
    check("every substitution the template supplies is used", supplied <= placeholders,
          f"unused: {sorted(supplied - placeholders)}")

    binaries = workspace_binaries()
    problems = []
    for key, value in sm["DefinitionSubstitutions"].items():
        if not key.endswith("FunctionArn"):
            continue
        ref = value.get("Fn::GetAtt") if isinstance(value, dict) else None
        if not ref:
            problems.append(f"{key} is not a GetAtt of a function")
            continue
        logical = ref[0] if isinstance(ref, list) else ref.split(".")[0]
        resource = tpl["Resources"].get(logical)
        if not resource or resource["Type"] != "AWS::Serverless::Function":
            problems.append(f"{key}: {logical} is not a function of the template")
            continue
        binary = resource.get("Metadata", {}).get("BuildProperties", {}).get("Binary")
        if binary not in binaries:
            problems.append(f"{key}: {logical} builds binary {binary!r}, not in the workspace {sorted(binaries)}")
        if resource["Properties"].get("Architectures") not in (None, ["arm64"]):
            problems.append(f"{logical} is not arm64")
    check("every function the ASL invokes exists in the template and the workspace", not problems, "; ".join(problems))

    filled = asl_text
    for name in placeholders:
        value = "60" if name.endswith("Seconds") else f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
        if name == "TopicArn":
            value = "arn:aws:sns:us-east-1:123456789012:drpilot"
        filled = filled.replace("${" + name + "}", value)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(filled)
    validator = ROOT / "infra" / "node_modules" / ".bin" / "asl-validator"
    out = subprocess.run([str(validator), "--json-path", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    check("asl-validator accepts the definition", out.returncode == 0, (out.stdout + out.stderr)[-2000:])

    venv_bin = Path(sys.executable).parent
    out = subprocess.run([str(venv_bin / "cfn-lint"), str(TEMPLATE)], capture_output=True, text=True)
    check("cfn-lint accepts the template", out.returncode == 0, (out.stdout + out.stderr)[-3000:])

    env = dict(os.environ, AWS_ACCESS_KEY_ID="dummy", AWS_SECRET_ACCESS_KEY="dummy",
               AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1", SAM_CLI_TELEMETRY="0")
    env.pop("AWS_ENDPOINT_URL", None)
    out = subprocess.run([str(venv_bin / "sam"), "validate", "--lint", "--template", str(TEMPLATE)],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    check("sam validate --lint accepts the template", out.returncode == 0, (out.stdout + out.stderr)[-3000:])

    failed = 0
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok or not detail else f"\n     {detail}"))
        failed += not ok
    print(f"infra: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
