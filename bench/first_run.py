"""The README's main job, first run vs a rerun with nothing to do, timed in one run.

Each round gives `zpipe run` (the demo week, tiny model) a new empty local store, so the
first run makes all 14 images, then runs the same command again: the rerun finds the week
finished (frozen trends, plan, one store listing) and stops before Prefect or the model.
Both are whole processes timed from outside, imports included, as a user waits for them.
Rounds alternate first/rerun; medians and the ratio come from the same rounds.

    .venv/bin/python bench/first_run.py --rounds 3 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ZPIPE = Path(sys.executable).parent / "zpipe"


def _timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--week", default="2026-W48")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # the README's case
    first, rerun = [], []
    with tempfile.TemporaryDirectory(prefix="zpipe-first-run-") as tmp:
        env["ZPIPE_SPOOL"] = str(Path(tmp) / "spool")
        for round_ in range(args.rounds):
            store = f"file://{tmp}/out-{round_}"
            command = [str(ZPIPE), "run", "configs/campaigns/weekly-demo.yaml",
                       "--week", args.week, "--store", store]
            wall, _ = _timed(command, env)
            first.append(wall)
            wall, out = _timed(command, env)
            if "nothing to do" not in out:
                raise SystemExit(f"the rerun did work:\n{out}")
            rerun.append(wall)
            print(f"round {round_ + 1}: first run {first[-1]:.1f} s, rerun {rerun[-1]:.1f} s",
                  flush=True)
    ratios = [b / a for a, b in zip(first, rerun, strict=True)]
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "rounds": args.rounds,
        "first_run_s": [round(x, 2) for x in first],
        "rerun_s": [round(x, 2) for x in rerun],
        "first_run_median_s": round(statistics.median(first), 2),
        "rerun_median_s": round(statistics.median(rerun), 2),
        "rerun_over_first_median": round(statistics.median(ratios), 3),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
