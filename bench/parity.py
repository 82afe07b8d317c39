#!/usr/bin/env python3
"""Parity benchmarks.

1. The engine alone on synthetic sorted listings (no S3): keys/s and peak RSS at 10k,
   100k and 1M keys, each size in its own process (RSS must stay flat).
2. End to end on each local S3 server (moto, and the in-memory bench/s3mem), side by side in one run: parity-report's compare vs
   `rclone check` vs `aws s3 ls --recursive` + sort + diff, on the same two prefixes.

usage: .venv/bin/python bench/parity.py [--server moto|s3mem] [--no-peers] [N ...]   (default: 10000, both)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SERVERS, FastS3, aws_cli_path, bench_binary, log, timed  # noqa: E402

REPS = 3


def engine_rows() -> list[str]:
    binary = bench_binary("parity-report", "engine")
    rows = []
    for n in (10_000, 100_000, 1_000_000):
        runs = [json.loads(timed([binary, str(n)])[1]) for _ in range(REPS)]
        kps = statistics.median(r["keys_per_second"] for r in runs)
        rss = max(r["peak_rss_kib"] for r in runs) / 1024
        rows.append(f"| parity engine, {n:,} keys per side (no S3) | {kps:,.0f} keys/s | | | peak RSS {rss:.1f} MiB |")
    return rows


def e2e_rows(n: int, server, peers: bool = True) -> list[str]:
    """drpilot's compare and (with `peers`) rclone check and the aws CLI, on `server`."""
    compare = bench_binary("parity-report", "compare")
    with server() as s3:
        client = s3.client()
        client.create_bucket(Bucket="bench")
        log(f"filling two prefixes with {n:,} objects each ...")
        left = [(f"left/d{i % 50:02d}/o-{i:07d}.json", f"v1 {i}".encode()) for i in range(n)]
        right = [(k.replace("left/", "right/", 1), b if i % 1000 else f"v2 {i}".encode())
                 for i, (k, b) in enumerate(left) if i % 997]
        s3.fill("bench", left + right)
        env = s3.env
        rclone_env = dict(env, RCLONE_CONFIG_L_TYPE="s3", RCLONE_CONFIG_L_PROVIDER="Other",
                          RCLONE_CONFIG_L_ENDPOINT=s3.endpoint, RCLONE_CONFIG_L_ACCESS_KEY_ID="testing",
                          RCLONE_CONFIG_L_SECRET_ACCESS_KEY="testing", RCLONE_CONFIG_L_REGION="us-east-1",
                          RCLONE_CONFIG_L_FORCE_PATH_STYLE="true")
        ours, rclone, awsls, rss = [], [], [], []
        delta = None
        # The aws CLI peer is the slowest by far; past 50,000 objects it runs only when asked.
        with_awsls = peers and (n <= 50_000 or os.environ.get("BENCH_PARITY_AWSLS") == "1")
        for rep in range(REPS):
            log(f"{n:,} objects: run {rep + 1}/{REPS}")
            t, out = timed([compare, "s3://bench/left/", "s3://bench/right/", f"s3://bench/reports/{rep}/"], env=env)
            result = json.loads(out)
            delta = result["counts"]["delta"]
            rss.append(result["peak_rss_kib"] / 1024)
            ours.append(t)
            with tempfile.TemporaryDirectory() as d:
                if peers:
                    t, _ = timed(["rclone", "check", "-q", "--combined", f"{d}/c", "l:bench/left", "l:bench/right"],
                                 env=rclone_env)
                    rclone.append(t)
                script = (
                    f"aws s3 ls --recursive s3://bench/left/ | awk '{{print $3, substr($4, 6)}}' | sort > {d}/l && "
                    f"aws s3 ls --recursive s3://bench/right/ | awk '{{print $3, substr($4, 7)}}' | sort > {d}/r && "
                    f"diff {d}/l {d}/r > /dev/null; true"
                )
                if with_awsls:
                    t, _ = timed(script, env=dict(env, PATH=f"{aws_cli_path()}:" + env["PATH"]), shell=True)
                    awsls.append(t)
        o = statistics.median(ours)
        where = f"{n:,} objects per side ({s3.name})"
        out = [f"| peak RSS, parity end to end, {where} | | | | {max(rss):.1f} MiB |"]
        if rclone:
            r = statistics.median(rclone)
            out.insert(0, f"| parity end to end, {where} | {o:.2f} s | rclone check {r:.2f} s | {r / o:.2f}x | delta {delta} |")
        else:
            out.insert(0, f"| parity end to end, {where} | {o:.2f} s ({2 * n / o:,.0f} keys/s) | | | delta {delta} |")
        if awsls:
            a = statistics.median(awsls)
            out.insert(1, f"| parity end to end, {where} | {o:.2f} s | aws s3 ls + sort + diff {a:.2f} s | {a / o:.2f}x | sizes only |")
        return out


def rows(n: int = 100_000, big: int = 1_000_000) -> list[tuple[str, str, str, str]]:
    """The rows `bench/run.py` prints (its own table format: what, drpilot, peer, ratio):
    10,000 and `n` objects per side on each server with the peers, and `big` per side on
    the fast server alone (its peak RSS against the 10,000-object run's)."""
    lines = engine_rows()
    for server in SERVERS:
        lines += e2e_rows(10_000, server) + e2e_rows(n, server)
    if big:
        lines += e2e_rows(big, FastS3, peers=False)
    out = []
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        what, ours, peer, ratio, note = cells
        if not peer:
            out.append((what, f"{ours}; {note}", "—", "—"))
        else:
            out.append((what, ours, peer, ratio))
    return out


def main() -> int:
    args = sys.argv[1:]
    sizes = [int(a) for a in args if a.isdigit()] or [10_000]
    servers = [s for s in SERVERS if "--server" not in args or args[args.index("--server") + 1] == s.name]
    rows = [] if "--no-engine" in args else engine_rows()
    for n in sizes:
        for server in servers:
            rows += e2e_rows(n, server, peers="--no-peers" not in args)
    print(f"Parity, medians of {REPS} runs:\n")
    print("| what | drpilot | peer | ratio (peer/drpilot time) | note |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
