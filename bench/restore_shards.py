#!/usr/bin/env python3
"""Restore of a sharded backup, fanned out, against the same data as one archive.

The same ~1 GiB tree (BENCH_SHARDED_MB) is made twice with scripts/make-backup.sh: as v1
(one state.tar.zst) and as v2 in 4 shards (`--shard-size`). restore's bench binary
restores the v1 backup inline and the v2 backup as the state machine's Distributed Map
runs it, in one process: the preparation (staging emptied, manifests verified), the
four shards' children at once, the reducer; each step timed. Both into the local S3
server (moto), medians of BENCH_REPS runs.

usage: .venv/bin/python bench/restore_shards.py [MB]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SERVERS, bench_binary, log, median, table, timed  # noqa: E402

REPS = int(os.environ.get("BENCH_REPS", "3"))
SHARDS = 4


def make_tree(src: Path, mb: int) -> None:
    # 4 MB files of random data (incompressible) under 16 directories, plus 400 small ones.
    for i in range(max(1, mb // 4)):
        d = src / f"d{i % 16:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"blob-{i:05d}.bin").write_bytes(os.urandom(4 << 20))
    for i in range(400):
        d = src / f"d{i % 16:02d}" / "small"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"r-{i:04d}.json").write_text(json.dumps({"record": i}))


def rows(mb: int = 1024) -> list[tuple[str, str, str, str]]:
    work = Path(tempfile.mkdtemp(prefix="drpilot-bench-shards-"))
    try:
        src = work / "src"
        make_tree(src, mb)
        total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        make = ROOT / "scripts" / "make-backup.sh"
        subprocess.run([str(make), "--src", str(src), "--out", str(work / "v1")], check=True)
        subprocess.run([str(make), "--src", str(src), "--out", str(work / "v2"),
                        "--shard-size", str(total // SHARDS)], check=True)
        meta = json.loads((work / "v2" / "metadata.json").read_text())
        log(f"{len(meta['shards'])} shards of {total / 1e6:.0f} MB")
        return [row for server in SERVERS for row in server_rows(work, meta, server)]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def server_rows(work: Path, meta: dict, server) -> list[tuple[str, str, str, str]]:
    binary = bench_binary("restore", "to_s3")
    with server() as s3:
        client = s3.restore_setup()
        for name in ("v1", "v2"):
            for f in sorted((work / name).iterdir()):
                client.upload_file(str(f), "bench-backups", f"backups/{name}/{f.name}")
        one, fanned = [], []
        for rep in range(REPS):
            log(f"restore, one archive, run {rep + 1}/{REPS}")
            t, out = timed([binary, "s3://bench-backups/backups/v1/", f"one-{rep}"], env=s3.env)
            one.append(json.loads(out.strip().splitlines()[-1]))
            log(f"restore, {SHARDS} shards fanned out, run {rep + 1}/{REPS}")
            t, out = timed([binary, "--fan-out", "s3://bench-backups/backups/v2/", f"fan-{rep}"], env=s3.env)
            fanned.append(json.loads(out.strip().splitlines()[-1]))
        o = median(r["seconds"] for r in one)
        f = median(r["seconds"] for r in fanned)
        prep = median(r["prepare_seconds"] for r in fanned)
        kids = median(r["children_seconds"] for r in fanned)
        red = median(r["reduce_seconds"] for r in fanned)
        slowest = median(max(r["child_seconds"]) for r in fanned)
        fastest = median(min(r["child_seconds"]) for r in fanned)
        mbs = fanned[0]["bytes"] / 1e6
        return [
            (f"Restore into S3 ({s3.name}), {mbs:,.0f} MB: {len(meta['shards'])} shards fanned out vs one archive",
             f"{f:.1f} s ({mbs / f:.1f} MB/s): prepare {prep:.1f} s, children {kids:.1f} s "
             f"(each {fastest:.1f}-{slowest:.1f} s), reduce {red:.2f} s",
             f"one archive inline: {o:.1f} s ({mbs / o:.1f} MB/s)", f"{o / f:.2f}x"),
        ]


if __name__ == "__main__":
    mb = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("BENCH_SHARDED_MB", "1024"))
    print(table(rows(mb)))
