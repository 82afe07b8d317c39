#!/usr/bin/env python3
"""The full local drill (`drpilot local drill --auto-approve` on the demo backup): wall
time per phase and in total, from the run summary. The phase functions run as debug
builds under `cargo lambda watch` against moto, so these are local figures, not Lambda's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, log, table  # noqa: E402


def rows() -> list[tuple[str, str, str, str]]:
    subprocess.run(["cargo", "build", "-q", "-p", "drpilot-cli"], cwd=ROOT, check=True)
    log("running the local drill ...")
    start = time.perf_counter()
    out = subprocess.run([str(ROOT / "target" / "debug" / "drpilot"), "--json", "local", "drill", "--auto-approve"],
                         cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    subprocess.run([str(ROOT / "scripts" / "local-stack.sh"), "down"], cwd=ROOT, check=False,
                   stdout=subprocess.DEVNULL)
    text = out.stdout
    result = json.loads(text[text.rindex("\n{\n") + 1:] if "\n{\n" in text else text[text.index("{"):])
    summary = result["summary"]
    rows = []
    for p in summary["phases"]:
        ms = p.get("duration_ms")
        rows.append((f"Local drill, phase {p['phase']}", f"{ms / 1000:.2f} s ({p['status']})" if ms is not None else p["status"], "—", "—"))
    for c in summary.get("components", []):
        rto_c = c.get("rto_seconds")
        measured = f"{rto_c:.1f} s of {c['rto_target_seconds']} s ({c['status']})" if rto_c is not None else c["status"]
        rows.append((f"Local drill, component {c['name']} ({c['kind']}): kickoff to verified", measured, "—", "—"))
    rto = summary.get("rto_seconds")
    rows.append(("Local drill, measured RTO (later of the promotion, incl. the approval, and the slowest required component)",
                 f"{rto:.1f} s; run {result['status']}" if rto is not None else f"not measured; run {result['status']}",
                 "—", "—"))
    rows.append(("Local drill, whole command (stack, seeding, run)", f"{wall:.1f} s", "—", "—"))
    return rows


if __name__ == "__main__":
    print(table(rows()))
