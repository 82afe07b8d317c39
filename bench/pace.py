#!/usr/bin/env python3
"""The adaptive write pace against a throttling S3 whose capacity grows under sustained
load, as S3 partitions a busy prefix. The local stack's rate model (infra/local/motoserver.py,
S3Limits) stands for S3 at 1/100 of its rates: a prefix serves 35 writes a second (S3's
3,500), answers SlowDown past that, and doubles what it serves after 5 s of sustained
pressure, up to 280 a second (eight partitions). AWS does not document what S3 scales
on, so each peer runs under both triggers the model has: 5 s of throttling every second,
and 5 s served at 90% of the rate or more. Each run writes OBJECTS small objects under a
fresh prefix, so each meets the floor first:

- drpilot's budget (shared/src/data/budget.rs): starts at 30/s (the run's 3,000, scaled) and
  climbs additively while S3 keeps up, halving on SlowDown;
- the same bucket held at 30/s (the fixed floor a pacer without the climb keeps to);
- `aws s3 cp --recursive` of the same objects (10 requests in flight, its own retries),
  what a user scripts.

Medians of BENCH_REPS runs: seconds, objects a second, the SlowDowns the budget saw.

usage: .venv/bin/python bench/pace.py [OBJECTS]   (default 2000)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LocalS3, aws_cli_path, bench_binary, log, median, table, timed  # noqa: E402

REPS = int(os.environ.get("BENCH_REPS", "3"))
LIMITS = {"write_per_second": 35, "grow_after_seconds": 5, "grow_factor": 2, "max_per_second": 280}
START_RATE = 30
# What makes the model partition a prefix: AWS documents neither (see the module's doc).
TRIGGERS = {"throttling": "after 5 s throttled", "load": "after 5 s at 90% load"}


def limit(s3: LocalS3, trigger: str) -> None:
    body = json.dumps({**LIMITS, "grow_on": trigger}).encode()
    request = urllib.request.Request(f"{s3.endpoint}/_drpilot/s3-limits", data=body, method="POST")
    with urllib.request.urlopen(request) as answer:
        assert answer.status == 200


def grown(s3: LocalS3, prefix: str) -> float:
    with urllib.request.urlopen(f"{s3.endpoint}/_drpilot/s3-limits") as answer:
        stats = json.load(answer)
    return max((p["rate"] for p in stats["prefixes"] if p["prefix"].endswith(prefix)), default=0.0)


def rows(n: int = 2000) -> list[tuple[str, str, str, str]]:
    binary = bench_binary("drpilot-shared", "pace")
    aws = f"{aws_cli_path()}/aws"
    out = []
    with LocalS3() as s3, tempfile.TemporaryDirectory(prefix="drpilot-bench-pace-") as tmp:
        s3.client().create_bucket(Bucket="bench")
        for i in range(n):
            (Path(tmp) / f"{i:08}.json").write_bytes(b"x" * 100)
        for trigger, growth in TRIGGERS.items():
            out += trigger_rows(s3, binary, aws, tmp, n, trigger, growth)
    return out


def trigger_rows(s3: LocalS3, binary: str, aws: str, tmp: str, n: int, trigger: str,
                 growth: str) -> list[tuple[str, str, str, str]]:
    runs: dict[str, list[dict]] = {"aimd": [], "fixed": [], "peer": []}
    for rep in range(REPS):
        for mode in ("aimd", "fixed"):
            log(f"pace ({trigger}) {mode}, {n:,} objects, run {rep + 1}/{REPS}")
            limit(s3, trigger)
            _, answer = timed([binary, f"s3://bench/{mode}-{rep}/", str(n), mode, str(START_RATE)], env=s3.env)
            result = json.loads(answer.strip().splitlines()[-1])
            result["capacity"] = grown(s3, f"{mode}-{rep}")
            runs[mode].append(result)
        log(f"pace ({trigger}): aws s3 cp, {n:,} objects, run {rep + 1}/{REPS}")
        limit(s3, trigger)
        started = time.perf_counter()
        done = subprocess.run([aws, "s3", "cp", "--recursive", "--only-show-errors", tmp, f"s3://bench/peer-{rep}/"],
                              env=s3.env, capture_output=True, text=True)
        failed = sum(1 for line in done.stderr.splitlines() if "upload failed" in line)
        runs["peer"].append({"seconds": time.perf_counter() - started, "failed": failed,
                             "capacity": grown(s3, f"peer-{rep}")})

    def summary(results: list[dict]) -> tuple[float, str]:
        seconds = median(r["seconds"] for r in results)
        capacity = median(r["capacity"] for r in results)
        return seconds, f"{seconds:.1f} s ({n / seconds:,.0f} obj/s; prefix grew to {capacity:,.0f}/s)"

    aimd_s, aimd = summary(runs["aimd"])
    fixed_s, fixed = summary(runs["fixed"])
    peer_s, peer = summary(runs["peer"])
    slow_downs = median(r["slow_downs"] for r in runs["aimd"])
    failed = median(r["failed"] for r in runs["peer"])
    what = (f"{n:,} writes, S3 at 1/100 (35/s a prefix, x2 {growth}, up to 280/s)")
    return [
        (f"{what}: climbing budget vs fixed floor", f"{aimd}; {slow_downs:.0f} SlowDowns",
         f"fixed 30/s: {fixed}", f"{fixed_s / aimd_s:.2f}x"),
        (f"{what}: climbing budget vs aws s3 cp", aimd,
         f"aws s3 cp --recursive: {peer}; {failed:.0f} uploads failed", f"{peer_s / aimd_s:.2f}x"),
    ]


if __name__ == "__main__":
    print(table(rows(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)))
