"""bench/race.py's smoke run: zpipe and the plain loop make the same 10 images, in one run.

The full race (100 images, 5 rounds) is a benchmark and lives in bench/RESULTS.md; this runs
the same script end to end on a real `zpipe up` stack (Prefect server, SeaweedFS with auth),
so the benchmark keeps working. Timings are never asserted on: only that both sides made and
stored every image, and that the figures and table come out.
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
def test_race_smoke_makes_the_same_images_both_ways(zpipe_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "race.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))}
    env["ZPIPE_CACHE"] = str(zpipe_cache)
    proc = subprocess.run(
        [sys.executable, "bench/race.py", "--images", "10", "--repeat", "1", "--generation", "local",
         "--json", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["images"] == 10 and figures["generation"] == "local"
    assert figures["sizes"] == ["176x320", "256x256"] and figures["max_batch"] == 8
    assert len(figures["plain_runs_s"]) == len(figures["zpipe_runs_s"]) == 1
    assert figures["plain_median_s"] > 0 and figures["zpipe_median_s"] > 0
    table = proc.stdout.strip().splitlines()[-4:]  # the table comes last
    assert table[0].startswith("| pipeline |") and "plain loop" in table[2] and "zpipe" in table[3]
