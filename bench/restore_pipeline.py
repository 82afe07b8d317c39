#!/usr/bin/env python3
"""Restore pipeline benchmark: drpilot's streaming sha256 + zstd + tar (into a null sink)
against `sha256sum` followed by `zstd -dc | tar -x` on the same archive, in one run.

For each size it makes (once, cached under target/bench-data) a zstd-compressed tar of
mostly incompressible files, so the archive itself is about the given size, then runs
each side BENCH_REPS times (default 3) and reports medians. It also reports drpilot's
peak RSS per size: streaming means it must not grow with the archive.

usage: bench/restore_pipeline.py [SIZE_MB ...]      (default: 100 1100)
Prints a markdown table; with --json, one JSON object per size instead.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("DRPILOT_BENCH_DIR", ROOT / "target" / "bench-data"))
REPS = int(os.environ.get("BENCH_REPS", "3"))
SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_binary() -> str:
    """Builds the `pipeline` bench target and returns its path."""
    out = subprocess.run(
        ["cargo", "bench", "-p", "restore", "--bench", "pipeline", "--no-run",
         "--message-format=json"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "pipeline" \
                and msg.get("executable"):
            return msg["executable"]
    raise SystemExit("could not find the pipeline bench executable")


def make_archive(size_mb: int) -> tuple[Path, str, int, int]:
    """A .tar.zst of about size_mb MB: 5 MB random files plus 2000 small JSON files."""
    DATA.mkdir(parents=True, exist_ok=True)
    archive = DATA / f"state-{size_mb}mb.tar.zst"
    if not archive.exists():
        log(f"making a {size_mb} MB archive ...")
        src = Path(tempfile.mkdtemp(prefix="drpilot-bench-src-", dir=SCRATCH))
        try:
            big = max(1, (size_mb - 8) // 5)
            for i in range(big):
                d = src / "blobs" / f"{i % 50:02d}"
                d.mkdir(parents=True, exist_ok=True)
                with open(d / f"blob-{i:05d}.bin", "wb") as f:
                    f.write(os.urandom(5_000_000))
            for i in range(2000):
                d = src / "records" / f"{i % 40:02d}"
                d.mkdir(parents=True, exist_ok=True)
                (d / f"record-{i:05d}.json").write_text(json.dumps({"id": i, "payload": "x" * (i % 3000)}))
            tmp = archive.with_suffix(".tmp")
            subprocess.run(
                f"tar -C '{src}' --format=pax -cf - . | zstd -q -1 -T0 -o '{tmp}' -f",
                shell=True, check=True,
            )
            tmp.rename(archive)
        finally:
            shutil.rmtree(src, ignore_errors=True)
    sha = subprocess.run(["sha256sum", str(archive)], check=True, capture_output=True,
                         text=True).stdout.split()[0]
    data_bytes = int(subprocess.run(
        f"zstd -dc '{archive}' | tar -t -v --quoting-style=escape | awk '{{s+=$3}} END {{print s}}'",
        shell=True, check=True, capture_output=True, text=True).stdout.strip() or 0)
    return archive, sha, archive.stat().st_size, data_bytes


def run_drpilot(binary: str, archive: Path, sha: str, size: int) -> dict:
    out = subprocess.run([binary, str(archive), sha, str(size)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_peer(archive: Path) -> float:
    target = Path(tempfile.mkdtemp(prefix="drpilot-bench-x-", dir=SCRATCH))
    try:
        start = time.perf_counter()
        subprocess.run(["sha256sum", str(archive)], check=True, capture_output=True)
        subprocess.run(f"zstd -dc '{archive}' | tar -x -C '{target}'", shell=True, check=True)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(target, ignore_errors=True)


def measure(binary: str, size_mb: int) -> dict:
    archive, sha, size, data_bytes = make_archive(size_mb)
    ours, peer = [], []
    for rep in range(REPS):
        log(f"{size_mb} MB: run {rep + 1}/{REPS}")
        ours.append(run_drpilot(binary, archive, sha, size))
        peer.append(run_peer(archive))
    ours_s = statistics.median(r["seconds"] for r in ours)
    peer_s = statistics.median(peer)
    return {
        "size_mb": size_mb,
        "archive_bytes": size,
        "data_bytes": data_bytes,
        "drpilot_seconds": ours_s,
        "peer_seconds": peer_s,
        "drpilot_mb_s": size / 1e6 / ours_s,
        "peer_mb_s": size / 1e6 / peer_s,
        "ratio": peer_s / ours_s,
        "drpilot_peak_rss_mib": max(r["peak_rss_kib"] for r in ours) / 1024,
    }


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--json"]
    sizes = [int(a) for a in args] or [100, 1100]
    binary = bench_binary()
    results = [measure(binary, s) for s in sizes]
    if "--json" in sys.argv:
        for r in results:
            print(json.dumps(r))
        return 0
    print(f"Restore pipeline, medians of {REPS} runs, archive read from a local file "
          f"(peer extracts to {SCRATCH}):\n")
    print("| archive | drpilot sha256+zstd+tar (MB/s) | sha256sum + zstd -dc \\| tar -x (MB/s) | ratio | drpilot peak RSS |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['archive_bytes'] / 1e6:.0f} MB ({r['data_bytes'] / 1e6:.0f} MB data) "
              f"| {r['drpilot_mb_s']:.0f} | {r['peer_mb_s']:.0f} | {r['ratio']:.2f}x "
              f"| {r['drpilot_peak_rss_mib']:.1f} MiB |")
    if len(results) > 1:
        rss = [r["drpilot_peak_rss_mib"] for r in results]
        print(f"\nPeak RSS across sizes: {min(rss):.1f}-{max(rss):.1f} MiB "
              f"(archive sizes {results[0]['archive_bytes'] / 1e6:.0f}-{results[-1]['archive_bytes'] / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def rows(sizes: list[int] | None = None) -> list[tuple[str, str, str, str]]:
    """The rows `bench/run.py` prints: throughput at the largest size, RSS across sizes."""
    binary = bench_binary()
    results = [measure(binary, s) for s in (sizes or [100, 1100])]
    big = results[-1]
    out = [(f"Restore pipeline (sha256 + zstd + tar, local file), {big['archive_bytes'] / 1e6:,.0f} MB archive",
            f"{big['drpilot_mb_s']:.0f} MB/s", f"sha256sum + zstd -dc \\| tar -x: {big['peer_mb_s']:.0f} MB/s",
            f"{big['ratio']:.2f}x")]
    out.append(("Peak RSS, restore pipeline, " + " vs ".join(f"{r['archive_bytes'] / 1e6:,.0f} MB" for r in results),
                " vs ".join(f"{r['drpilot_peak_rss_mib']:.1f} MiB" for r in results), "—", "—"))
    return out
