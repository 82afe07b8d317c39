#!/usr/bin/env python3
"""Restore into S3 on the local server: drpilot's restore (S3 GET, verify, unpack, several
uploads in flight) vs `zstd -dc | tar -x` then `aws s3 cp --recursive` of the same archive
into the same server. Objects/s and MB/s, medians of BENCH_REPS runs.

usage: .venv/bin/python bench/restore_s3.py [FILES]   (default 2000 files, ~100 MB)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SERVERS, aws_cli_path, bench_binary, log, median, table, timed  # noqa: E402

REPS = int(os.environ.get("BENCH_REPS", "3"))


def rows(files: int = 2000) -> list[tuple[str, str, str, str]]:
    work = Path(tempfile.mkdtemp(prefix="drpilot-bench-restore-"))
    try:
        src = work / "src"
        for i in range(files):
            d = src / f"d{i % 40:02d}" / f"e{i % 7}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f-{i:06d}.bin").write_bytes(os.urandom(50_000))
        subprocess.run([str(ROOT / "scripts" / "make-backup.sh"), "--src", str(src), "--out", str(work / "b1")],
                       check=True)
        return [row for server in SERVERS for row in server_rows(work, server)]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def server_rows(work: Path, server) -> list[tuple[str, str, str, str]]:
    binary = bench_binary("restore", "to_s3")
    with server() as s3:
        client = s3.restore_setup()
        for name in ("metadata.json", "state.tar.zst", "manifests.tar.zst"):
            client.upload_file(str(work / "b1" / name), "bench-backups", f"backups/b1/{name}")
        aws_path = aws_cli_path()
        ours, peer = [], []
        for rep in range(REPS):
            log(f"restore into S3, run {rep + 1}/{REPS}")
            t, out = timed([binary, "s3://bench-backups/backups/b1/", f"bench-{rep}"], env=s3.env)
            result = json.loads(out.strip().splitlines()[-1])
            ours.append(t)
            x = work / f"x{rep}"
            x.mkdir()
            start = time.perf_counter()
            subprocess.run(f"zstd -dc '{work}/b1/state.tar.zst' | tar -x -C '{x}'", shell=True, check=True)
            subprocess.run([f"{aws_path}/aws", "s3", "cp", "--recursive", "--only-show-errors", str(x),
                            f"s3://bench-data/peer-{rep}/"], env=s3.env, check=True)
            peer.append(time.perf_counter() - start)
            shutil.rmtree(x, ignore_errors=True)
        objects, mb = result["objects"], result["bytes"] / 1e6
        o, p = median(ours), median(peer)
        return [
            (f"Restore into S3 ({s3.name}), {objects:,} objects / {mb:.0f} MB",
             f"{objects / o:,.0f} obj/s, {mb / o:.1f} MB/s",
             f"zstd -dc \\| tar -x; aws s3 cp --recursive: {objects / p:,.0f} obj/s, {mb / p:.1f} MB/s",
             f"{p / o:.2f}x"),
        ]


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print(table(rows(n)))
