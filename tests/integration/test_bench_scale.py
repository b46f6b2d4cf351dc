"""bench/scale.py's smoke run: 2 stand-in `zpipe worker`s, 16 images, a real server and S3.

The measurement (1-8 workers, SQLite and PostgreSQL) is a benchmark and lives in
bench/RESULTS.md; this runs the same script end to end at a tiny size so it keeps working.
Timings are never asserted on: only that every planned image is in S3 exactly once, made by
the stand-in engine in one of the worker processes (not in the flow's process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.s3
def test_scale_smoke_every_image_once_from_the_standin_workers(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_", "ZPIPE_"))}
    proc = subprocess.run(
        [sys.executable, "bench/scale.py", "--workers", "2", "--images", "16", "--latency", "0.05",
         "--databases", "sqlite", "--warmup", "0", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["images"] == 16 and figures["plain"]["images"] == 16
    [run] = figures["runs"]
    assert (run["database"], run["workers"]) == ("sqlite", 2)
    assert run["keys_in_s3"] == run["unique_keys"] == run["standin_images"] == 16
    assert len(run["worker_pids"]) == 2
    assert set(run["made_by_pids"]) <= set(run["worker_pids"])
    assert figures["bench_pid"] not in run["made_by_pids"]
    assert run["batches"] == 4  # 16 images in batches of 4, none made twice
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| sqlite | 2 |")]
    assert len(rows) == 2  # the throughput table's row and the CPU table's row
    assert rows[0].count("|") == 13 and rows[1].count("|") == 8
    assert set(run["cores"]) == {"flow", "server", "s3", "workers", "machine"}
    assert run["cores"]["workers"] > 0  # the workers generated and published: they used CPU
