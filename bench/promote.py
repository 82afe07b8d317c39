#!/usr/bin/env python3
"""Promote on each local S3 server (moto, bench/s3mem): drpilot's server-side copy (one merge of both listings,
CopyObject for what differs, 16 in flight) vs `aws s3 sync` between the same prefixes.

usage: .venv/bin/python bench/promote.py [OBJECTS]   (default 10000)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SERVERS, aws_cli_path, bench_binary, log, median, table, timed  # noqa: E402

REPS = int(os.environ.get("BENCH_REPS", "3"))


def rows(n: int = 10_000) -> list[tuple[str, str, str, str]]:
    return [row for server in SERVERS for row in server_rows(n, server)]


def server_rows(n: int, server) -> list[tuple[str, str, str, str]]:
    binary = bench_binary("promote", "copy")
    with server() as s3:
        s3.client().create_bucket(Bucket="bench")
        log(f"filling stage/ with {n:,} objects ...")
        s3.fill("bench", [(f"stage/d{i % 50:02d}/o-{i:07d}.json", f"payload {i}".encode() * 20) for i in range(n)])
        aws = f"{aws_cli_path()}/aws"
        ours, peer = [], []
        for rep in range(REPS):
            log(f"promote {n:,} objects, run {rep + 1}/{REPS}")
            t, out = timed([binary, "s3://bench/stage/", f"s3://bench/root-{rep}/"], env=s3.env)
            assert json.loads(out)["copied"] == n
            ours.append(t)
            t, _ = timed([aws, "s3", "sync", "--only-show-errors", "s3://bench/stage/", f"s3://bench/peer-{rep}/"],
                         env=s3.env)
            peer.append(t)
        o, p = median(ours), median(peer)
        return [(f"Promote, {n:,} objects ({s3.name}, server-side copy)", f"{o:.2f} s ({n / o:,.0f} obj/s)",
                 f"aws s3 sync: {p:.2f} s ({n / p:,.0f} obj/s)", f"{p / o:.2f}x")]


if __name__ == "__main__":
    print(table(rows(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)))
