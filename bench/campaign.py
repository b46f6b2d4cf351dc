"""Benchmark: the demo weekly campaign through zpipe on the tiny model.

Runs the whole `weekly-campaign` flow (trends -> prompts -> generation -> labels -> local
store) REPEAT times into fresh stores and prints the median wall time, images per second,
and per-stage medians read back from the sidecars. Start a Prefect server and set
PREFECT_API_URL first to keep Prefect's temporary-server start-up out of the numbers.

    .venv/bin/python bench/campaign.py --repeat 3 --scale 0.5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from flows.campaign import weekly_campaign
from tasks.config.schema import EngineSettings
from tasks.store.objects import LocalStore

CAMPAIGN = Path(__file__).resolve().parents[1] / "configs/campaigns/weekly-demo.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--week", default="2026-W48")
    args = parser.parse_args()
    engine = EngineSettings(preview_scale=args.scale)

    walls, stages = [], {"image_s": [], "encode_s": [], "label_s": []}
    for i in range(args.repeat + 1):  # run 0 warms the engine (model load, first-call costs)
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            summary = weekly_campaign(str(CAMPAIGN), week=args.week, store=f"file://{out}",
                                      engine=engine)
            wall = time.perf_counter() - started
            if i == 0:
                continue
            walls.append(wall)
            store = LocalStore(Path(out))
            for key in summary.created:
                timings = json.loads(store.get(f"{key}.json"))["timings"]
                for name in stages:
                    stages[name].append(timings[name])
    n = len(summary.created)
    median = statistics.median(walls)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, "
          f"date {datetime.now(UTC):%Y-%m-%d}")
    print(f"demo campaign, {n} images, scale {args.scale}, {args.repeat} runs after a warm-up")
    print(f"| wall median | images/s | {' | '.join(f'{k} median' for k in stages)} |")
    print("|---|---|" + "---|" * len(stages))
    print(f"| {median:.2f} s | {n / median:.2f} | "
          + " | ".join(f"{statistics.median(v):.3f} s" for v in stages.values()) + " |")


if __name__ == "__main__":
    main()
