#!/usr/bin/env python3
"""Making a backup: `drpilot backup make` (one pass: each file read once, hashed for its
manifest entry while it is written into the archive) against `scripts/make-backup.sh`
(tar | zstd, then sha256sum over every file, then sha256sum over the archives) on the same
tree, in one run. Also drpilot's peak RSS per size: streaming means it must not grow with
the tree.

For each size it makes (once, cached under target/bench-data) a tree of 5 MB random files
plus 2,000 small JSON files, then runs each side BENCH_REPS times (default 3) and reports
medians. drpilot is the release build of the CLI.

usage: bench/backup_make.py [SIZE_MB ...]      (default: 100 1000)
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, log, table  # noqa: E402

DATA = Path(os.environ.get("DRPILOT_BENCH_DIR", ROOT / "target" / "bench-data"))
REPS = int(os.environ.get("BENCH_REPS", "3"))


def cli() -> str:
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "drpilot-cli"], cwd=ROOT, check=True)
    return str(ROOT / "target" / "release" / "drpilot")


def make_tree(size_mb: int) -> tuple[Path, int]:
    """A tree of about size_mb MB; returns it and its bytes of file data."""
    tree = DATA / f"tree-{size_mb}mb"
    if not tree.exists():
        log(f"making a {size_mb} MB tree ...")
        tmp = tree.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for i in range(max(1, (size_mb - 8) // 5)):
            d = tmp / "blobs" / f"{i % 50:02d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"blob-{i:05d}.bin").write_bytes(os.urandom(5_000_000))
        for i in range(2000):
            d = tmp / "records" / f"{i % 40:02d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"record-{i:05d}.json").write_text(json.dumps({"id": i, "payload": "x" * (i % 3000)}))
        tmp.rename(tree)
    data = sum(f.stat().st_size for f in tree.rglob("*") if f.is_file())
    return tree, data


def run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed: {proc.stderr.read().decode()[-2000:]}")
    return elapsed, usage.ru_maxrss


def measure(binary: str, size_mb: int) -> dict:
    tree, data = make_tree(size_mb)
    ours, peer, rss = [], [], []
    for rep in range(REPS):
        log(f"backup make, {size_mb} MB: run {rep + 1}/{REPS}")
        with tempfile.TemporaryDirectory(prefix="drpilot-bench-make-", dir=DATA) as scratch:
            seconds, peak = run([binary, "backup", "make", str(tree), "--out", f"{scratch}/ours",
                                 "--id", "bench", "--git-sha", "bench"])
            ours.append(seconds)
            rss.append(peak)
            seconds, _ = run([str(ROOT / "scripts" / "make-backup.sh"), "--src", str(tree),
                              "--out", f"{scratch}/peer", "--id", "bench"])
            peer.append(seconds)
    ours_s, peer_s = statistics.median(ours), statistics.median(peer)
    return {"size_mb": size_mb, "data_bytes": data, "drpilot_seconds": ours_s, "peer_seconds": peer_s,
            "drpilot_mb_s": data / 1e6 / ours_s, "peer_mb_s": data / 1e6 / peer_s,
            "ratio": peer_s / ours_s, "drpilot_peak_rss_mib": max(rss) / 1024}


def rows(sizes: list[int] | None = None) -> list[tuple[str, str, str, str]]:
    binary = cli()
    results = [measure(binary, s) for s in (sizes or [100, 1000])]
    out = []
    for r in results:
        out.append((f"Backup make (tar + zstd + SHA-256 of every file and archive), {r['data_bytes'] / 1e6:,.0f} MB tree",
                    f"{r['drpilot_seconds']:.2f} s ({r['drpilot_mb_s']:.0f} MB/s)",
                    f"scripts/make-backup.sh (tar \\| zstd -T0; sha256sum): {r['peer_seconds']:.2f} s ({r['peer_mb_s']:.0f} MB/s)",
                    f"{r['ratio']:.2f}x"))
    out.append(("Peak RSS, backup make, " + " vs ".join(f"{r['data_bytes'] / 1e6:,.0f} MB" for r in results),
                " vs ".join(f"{r['drpilot_peak_rss_mib']:.1f} MiB" for r in results), "—", "—"))
    return out


def main() -> int:
    sizes = [int(a) for a in sys.argv[1:]] or None
    print(table(rows(sizes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
