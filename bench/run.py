#!/usr/bin/env python3
"""`make bench`: every measurement, drpilot and its peer side by side in one run on the
same data, as one markdown table (what, drpilot, peer, ratio). Medians of BENCH_REPS runs.

Sizes: BENCH_PARITY_OBJECTS (default 100000), BENCH_PARITY_BIG (1000000, s3mem only; 0 skips it),
BENCH_PROMOTE_OBJECTS (10000),
BENCH_FAILBACK_OBJECTS (10000), BENCH_PACE_OBJECTS (2000),
BENCH_RESTORE_FILES (2000), BENCH_SHARDED_MB (1024), BENCH_PIPELINE_MB ("100 1100"), BENCH_MAKE_MB ("100 1000").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backup_make  # noqa: E402
import drill  # noqa: E402
import failback  # noqa: E402
import pace  # noqa: E402
import footprint  # noqa: E402
import parity  # noqa: E402
import promote  # noqa: E402
import restore_pipeline  # noqa: E402
import restore_s3  # noqa: E402
import restore_shards  # noqa: E402
import s3mem_check  # noqa: E402
from common import table  # noqa: E402


def main() -> int:
    # Figures measured on the fast server count only if it answers as S3 (moto) does.
    if s3mem_check.main() != 0:
        return 1
    rows = []
    rows += restore_pipeline.rows([int(x) for x in os.environ.get("BENCH_PIPELINE_MB", "100 1100").split()])
    rows += restore_s3.rows(int(os.environ.get("BENCH_RESTORE_FILES", "2000")))
    rows += restore_shards.rows(int(os.environ.get("BENCH_SHARDED_MB", "1024")))
    rows += parity.rows(int(os.environ.get("BENCH_PARITY_OBJECTS", "100000")),
                        int(os.environ.get("BENCH_PARITY_BIG", "1000000")))
    rows += promote.rows(int(os.environ.get("BENCH_PROMOTE_OBJECTS", "10000")))
    rows += failback.rows(int(os.environ.get("BENCH_FAILBACK_OBJECTS", "10000")))
    rows += pace.rows(int(os.environ.get("BENCH_PACE_OBJECTS", "2000")))
    rows += backup_make.rows([int(x) for x in os.environ.get("BENCH_MAKE_MB", "100 1000").split()])
    rows += footprint.rows()
    rows += drill.rows()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
