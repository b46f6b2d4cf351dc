"""Benchmark: post-processing cost per 1024² image, and whether the GPU ever waits for it.

Part 1 — one CPU core (torch/numpy/BLAS threads = 1): the label step of a real job
(headline-free poster: logo + explicit label, invisible watermark, XMP + JPEG encode, C2PA
signing with a dev certificate) on 1024² images, N runs; medians per step.

Part 2 — the GPU never waits: the real `weekly-campaign` flow (Prefect, thread pool, local
store) with the engine replaced by a stand-in of fixed latency (0.6 s per image, the H100
floor in DESIGN.md) that returns ready 1024² PNGs. Over a 56-image campaign it records when
the stand-in "GPU" is busy; idle = span between the first start and the last end, minus busy.

    .venv/bin/python bench/postprocess.py
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import tempfile
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
GPU_LATENCY_S = 0.6  # per 1024² image on one H100 at the compute floor (DESIGN.md)


def _texture(seed: int, size: int = 1024) -> bytes:
    """A noise-like 1024² PNG, like the tiny model's output (worst case for JPEG size)."""
    rng = np.random.default_rng(seed)
    low = rng.random((size // 16, size // 16, 3))
    img = Image.fromarray((low * 255).astype("uint8")).resize((size, size), Image.BICUBIC)
    noise = rng.normal(0, 18, (size, size, 3))
    arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def part1(n: int) -> None:
    import torch

    from tasks.config.schema import EngineSettings, load_campaign
    from tasks.content.plan import brand_fingerprint, plan_week
    from tasks.labels.provenance import make_dev_cert
    from tasks.publish.batch import label_job
    from zengine import GenerationResult

    certs = Path(tempfile.mkdtemp()) / "certs"
    _, chain, key = make_dev_cert(certs)
    os.environ["ZPIPE_C2PA_CERT"], os.environ["ZPIPE_C2PA_KEY"] = str(chain), str(key)
    bundle = load_campaign(REPO / "configs/campaigns/weekly-demo.yaml")
    jobs = plan_week(bundle, "2026-W48", date(2026, 11, 23), [], EngineSettings(preview_scale=1.0),
                     brand_fingerprint(bundle))
    job = next(j for j in jobs if j.format == "1:1")
    pngs = [_texture(i) for i in range(4)]
    torch.set_num_threads(1)
    steps: dict[str, list[float]] = {}
    totals = []
    with threadpool_limits(limits=1):
        for i in range(n + 2):
            result = GenerationResult(png=pngs[i % 4], prompt="", seed=1, steps=8, guidance_scale=0,
                                      width=1024, height=1024, model_id="m", revision="r", timings={})
            started = time.perf_counter()
            labelled = label_job(job, result, bundle.brand)
            total = time.perf_counter() - started
            if i < 2:
                continue  # warm-up: fonts, c2pa signer self-check
            totals.append(total)
            other = total - sum(labelled.steps_s.values())  # sidecar bookkeeping
            for name, value in {**labelled.steps_s, "other_s": other}.items():
                steps.setdefault(name, []).append(value)
    assert labelled.c2pa_signed
    print(f"### Post-processing, one core, 1024² JPEG q90, n={n} (medians)\n")
    print("| step | median ms |\n|---|---|")
    for name, values in steps.items():
        print(f"| {name.removeprefix('post_').removesuffix('_s')} | {statistics.median(values) * 1000:.1f} |")
    print(f"| **total** | **{statistics.median(totals) * 1000:.1f}** |\n")


class StandInEngine:
    """Fixed-latency stand-in for a GPU engine: sleeps 0.6 s per image, returns ready PNGs."""

    def __init__(self) -> None:
        self.pngs = [_texture(i) for i in range(4)]
        self.busy: list[tuple[float, float]] = []
        self.load_count, self.load_s = 1, 0.0
        self.lock = threading.Lock()

    def generate(self, requests, on_step=None):
        from zengine import GenerationResult

        with self.lock:
            start = time.perf_counter()
            time.sleep(GPU_LATENCY_S * len(requests))
            end = time.perf_counter()
            self.busy.append((start, end))
        return [GenerationResult(png=self.pngs[i % 4], prompt=r.prompt, seed=r.seed, steps=r.steps,
                                 guidance_scale=0.0, width=r.width, height=r.height,
                                 model_id="stand-in", revision="0.6s",
                                 timings={"batch_s": end - start, "image_s": GPU_LATENCY_S,
                                          "encode_s": 0.0, "batch_size": float(len(requests))})
                for i, r in enumerate(requests)]


def part2() -> None:
    import shutil

    import tasks.generation.engine as generate
    from flows.campaign import weekly_campaign
    from tasks.config.schema import EngineSettings

    stand_in = StandInEngine()
    generate.get_engine = lambda settings: stand_in  # the one seam: the engine factory
    tree = Path(tempfile.mkdtemp()) / "configs"
    shutil.copytree(REPO / "configs", tree)
    campaign = tree / "campaigns/weekly-demo.yaml"
    text = campaign.read_text(encoding="utf-8").replace("variants: 1", "variants: 4")
    campaign.write_text(text, encoding="utf-8")  # 7 days x 2 formats x 4 = 56 images
    with tempfile.TemporaryDirectory() as out:
        summary = weekly_campaign(str(campaign), week="2026-W48", store=f"file://{out}",
                                  engine=EngineSettings(preview_scale=1.0, max_batch=4))
    busy = sum(end - start for start, end in stand_in.busy)
    span = stand_in.busy[-1][1] - stand_in.busy[0][0]
    idle = span - busy
    print(f"### GPU idle with post-processing overlapped ({len(summary.created)} images, "
          f"stand-in {GPU_LATENCY_S} s/image, batches of 4)\n")
    print("| GPU busy | span first start -> last end | idle | idle share |\n|---|---|---|---|")
    print(f"| {busy:.2f} s | {span:.2f} s | {idle:.2f} s | {idle / span * 100:.1f} % |\n")


def main() -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores (part 1 pinned to 1 thread); "
          f"date {datetime.now(UTC):%Y-%m-%d}\n")
    part1(30)
    part2()


if __name__ == "__main__":
    main()
