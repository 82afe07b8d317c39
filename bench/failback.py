#!/usr/bin/env python3
"""Failback on the local server: drpilot's copy-back (the three-way comparison of the
backup's manifests, the primary's root/ and the DR site's, then server-side copies of what
the DR site changed, then a recount) vs `aws s3 sync` from the DR root/ to the primary's,
what a team would script instead (it copies every object newer on the DR site and checks
nothing against the baseline).

The primary holds the backup's objects from before the backup was taken; the DR site got
them at the promotion; then a tenth of them change on the DR site.

usage: .venv/bin/python bench/failback.py [OBJECTS]   (default 10000)
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SERVERS, aws_cli_path, bench_binary, log, median, table, timed  # noqa: E402

REPS = int(os.environ.get("BENCH_REPS", "3"))


def body(i: int) -> bytes:
    return f"payload {i}".encode() * 20


def rows(n: int = 10_000) -> list[tuple[str, str, str, str]]:
    return [row for server in SERVERS for row in server_rows(n, server)]


def server_rows(n: int, server) -> list[tuple[str, str, str, str]]:
    binary = bench_binary("failback", "copy_back")
    changed = max(1, n // 10)
    keys = [f"d{i % 50:02d}/o-{i:07d}.json" for i in range(n)]
    with server() as s3, tempfile.TemporaryDirectory(prefix="drpilot-bench-failback-") as tmp:
        s3.client().create_bucket(Bucket="bench")
        log(f"filling the primary copies and the peer's with {n:,} objects ...")
        for rep in range(REPS):
            s3.fill("bench", [(f"primary-{rep}/root/{k}", body(i)) for i, k in enumerate(keys)])
            s3.fill("bench", [(f"peer-{rep}/root/{k}", body(i)) for i, k in enumerate(keys)])
        time.sleep(1.1)  # S3 keeps whole seconds: the backup is taken after the primary's writes
        src, out = Path(tmp) / "src", Path(tmp) / "backup"
        for i, k in enumerate(keys):
            (src / k).parent.mkdir(parents=True, exist_ok=True)
            (src / k).write_bytes(body(i))
        subprocess.run([str(ROOT / "scripts" / "make-backup.sh"), "--src", str(src), "--out", str(out)],
                       check=True, capture_output=True)
        s3.fill("bench", [(f"backups/b1/{p.name}", p.read_bytes()) for p in out.iterdir()])
        log("the promotion: the DR root/ gets the backup's objects ...")
        s3.fill("bench", [(f"dr/root/{k}", body(i)) for i, k in enumerate(keys)])
        time.sleep(1.1)
        promoted_at = datetime.datetime.now(datetime.timezone.utc).isoformat()
        time.sleep(1.1)
        log(f"{changed:,} objects change on the DR site ...")
        s3.fill("bench", [(f"dr/root/{k}", body(i) + b" changed on the DR site") for i, k in
                          enumerate(keys[:changed])])
        aws = f"{aws_cli_path()}/aws"
        ours, peer, parts, rss = [], [], [], []
        for rep in range(REPS):
            log(f"failback of {n:,} objects, run {rep + 1}/{REPS}")
            t, result = timed([binary, "s3://bench/backups/b1/", "s3://bench/dr/root/",
                               f"s3://bench/primary-{rep}/root/", promoted_at], env=s3.env)
            result = json.loads(result)
            assert result["copied"] == changed and result["remaining_dr_changed"] == 0, result
            ours.append(t)
            parts.append(result)
            rss.append(result["peak_rss_kib"])
            t, _ = timed([aws, "s3", "sync", "--only-show-errors", "s3://bench/dr/root/",
                          f"s3://bench/peer-{rep}/root/"], env=s3.env)
            peer.append(t)
        o, p = median(ours), median(peer)
        split = min(parts, key=lambda r: abs(r["seconds"] - median([x["seconds"] for x in parts])))
        return [(f"Failback, {n:,} objects, {changed:,} changed on the DR site ({s3.name})",
                 f"{o:.2f} s: divergence {split['divergence_seconds']:.2f} s, copy-back "
                 f"{split['copy_seconds']:.2f} s ({changed:,} copied), recount {split['recount_seconds']:.2f} s; "
                 f"peak RSS {median(rss) / 1024:.1f} MiB",
                 f"aws s3 sync: {p:.2f} s (copies every object newer on the DR site, no divergence check)",
                 f"{p / o:.2f}x")]


if __name__ == "__main__":
    print(table(rows(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)))
