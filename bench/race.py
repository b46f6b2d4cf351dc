"""Benchmark: the same 100-image campaign through zpipe and through a plain loop, in one run.

The plain loop is what a developer writes first: one diffusers `ZImagePipeline` call per image,
a Pillow label (plate + text + logo), JPEG encode, one boto3 `put_object`; no Prefect, no
threads. zpipe runs the `weekly-campaign` flow on a real Prefect server with the same model,
prompts, sizes and seeds (taken from zpipe's own plan, so both make the same 100 pictures), and
does more per image: invisible watermark, XMP/IPTC labels, a sidecar per image, trends and
progress artifacts. Both write to the same SeaweedFS (with auth) that `zpipe up` starts.

The two alternate (plain, zpipe, plain, zpipe, ...) after one warm-up each, so drift on the
machine hits both; the medians and their ratio come from the same run.

    .venv/bin/python bench/race.py --repeat 5 --generation local

zpipe batches (`engine.max_batch`, 8 here); the plain loop, by definition, calls the pipeline
once per image. Everything else is the same work on the same machine.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ZPIPE = str(Path(sys.executable).parent / "zpipe")
WEEK = "2026-W48"
RACE_CAMPAIGN = """\
kind: campaign
name: race
brand: ../brands/demo.yaml
prompts: ../prompts/library.yaml
template: daily-poster
language: bilingual
timezone: Asia/Shanghai
approval: none
formats: ["1:1", "9:16"]
variants: {variants}
output: {{format: jpeg, quality: 90}}
trends: {{sources: []}}
days:
{days}
"""
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_campaign(root: Path, images: int) -> Path:
    """A campaign of `images` images: days x 2 formats x variants (images must be even)."""
    shutil.copytree(REPO / "configs", root / "configs")
    for days in range(5, 8):
        if images % (2 * days) == 0:
            break
    else:
        days = 5
    variants = images // (2 * days)
    lines = "\n".join(f"  {d}: {{zh: 第{i + 1}天的海报, en: poster of day {i + 1}}}"
                      for i, d in enumerate(DAYS[:days]))
    path = root / "configs/campaigns/race.yaml"
    path.write_text(RACE_CAMPAIGN.format(variants=variants, days=lines), encoding="utf-8")
    return path


class PlainLoop:
    """diffusers -> Pillow label -> boto3 put, one image at a time."""

    def __init__(self, bucket: str, font_path: Path, logo_path: Path) -> None:
        import boto3
        import torch
        from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline
        from PIL import Image, ImageFont

        from zengine.engine import TURBO_SHIFT
        from zengine.tiny import ensure_tiny_model

        started = time.perf_counter()
        self.pipe = ZImagePipeline.from_pretrained(str(ensure_tiny_model()), dtype=torch.float32)
        self.pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            self.pipe.scheduler.config, shift=TURBO_SHIFT)
        self.pipe.set_progress_bar_config(disable=True)
        self.load_s = time.perf_counter() - started
        self.torch = torch
        self.s3 = boto3.client("s3")
        self.bucket = bucket
        # one font object per size, loaded once, as anyone would write it
        self.font = functools.lru_cache(maxsize=8)(lambda size: ImageFont.truetype(str(font_path), size))
        self.logo = Image.open(logo_path).convert("RGBA")

    def _label(self, image):
        from PIL import ImageDraw

        image = image.convert("RGB")
        draw = ImageDraw.Draw(image)
        w, h = image.size
        font = self.font(max(12, w // 30))
        text = "AI生成 · AI-generated"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(4, w // 100)
        x, y = w - (right - left) - 3 * pad, h - (bottom - top) - 3 * pad
        draw.rectangle((x - pad, y - pad, w - pad, h - pad), fill=(0, 0, 0))
        draw.text((x, y - top), text, font=font, fill=(255, 255, 255))
        logo = self.logo.copy()
        logo.thumbnail((w // 6, h // 6))
        image.paste(logo, (pad * 2, pad * 2), logo)
        return image

    def run(self, requests: list, prefix: str) -> int:
        for i, request in enumerate(requests):
            image = self.pipe(
                prompt=request.prompt, width=request.width, height=request.height,
                num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
                generator=self.torch.Generator("cpu").manual_seed(request.seed)).images[0]
            buffer = io.BytesIO()
            self._label(image).save(buffer, "JPEG", quality=90)
            self.s3.put_object(Bucket=self.bucket, Key=f"{prefix}/{i:03d}.jpg",
                               Body=buffer.getvalue(), ContentType="image/jpeg")
        return len(requests)


def _count(bucket: str, prefix: str, suffix: str) -> int:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sum(1 for page in pages for o in page.get("Contents", []) if o["Key"].endswith(suffix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=0.25,
                        help="preset side scale (0.25: 1:1 is 256x256 on the tiny model)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="zpipe's engine.max_batch (8: the tiny model's fastest at 256x256; "
                             "generation alone, 100 images: batch 1 33 s, 4 25 s, 8 21 s)")
    parser.add_argument("--generation", choices=("workers", "local"), default="workers",
                        help="workers: the stack's resident `zpipe worker` generates (as deployed); "
                             "local: in the flow's process")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="zpipe-race-"))
    env = {k: v for k, v in os.environ.items()  # the stack's own, except the model cache
           if k == "ZPIPE_CACHE" or not k.startswith(("AWS_", "PREFECT_", "ZPIPE_"))}
    run = lambda *a: subprocess.run([ZPIPE, *a, "--home", str(home)], cwd=REPO, env=env,  # noqa: E731
                                    capture_output=True, text=True, check=True)
    run("up", "--prefect-port", str(_port()), "--s3-port", str(_port()), "--intake-port", str(_port()))
    try:
        from flows.services.stack import stack_env

        os.environ.update(stack_env(home))
        os.environ["ZPIPE_GENERATION"] = args.generation
        os.environ.pop("ZPIPE_STORE", None)
        info = json.loads(run("status", "--json").stdout)
        bucket = info["bucket"]
        figures = _race(home, bucket, args)
    finally:
        subprocess.run([ZPIPE, "down", "--home", str(home)], cwd=REPO, env=env, capture_output=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def _race(home: Path, bucket: str, args: argparse.Namespace) -> dict:
    from flows.campaign import weekly_campaign
    from tasks.config.schema import EngineSettings, load_campaign, parse_week
    from tasks.content.plan import brand_fingerprint, plan_week
    from tasks.generation.engine import to_request
    from tasks.labels.watermark import find_cjk_font

    campaign = _write_campaign(home, args.images)
    engine = EngineSettings(model="tiny", preview_scale=args.scale, max_batch=args.max_batch)
    bundle = load_campaign(campaign)
    week, monday = parse_week(WEEK, datetime.now(UTC).date())
    jobs = plan_week(bundle, week, monday, [], engine, brand_fingerprint(bundle))
    requests = [to_request(job) for job in jobs]
    assert len(requests) == args.images, f"planned {len(requests)} images, not {args.images}"
    plain = PlainLoop(bucket, find_cjk_font(), campaign.parent.parent / "brands/demo-logo.png")

    def zpipe_once(prefix: str) -> float:
        started = time.perf_counter()
        summary = weekly_campaign(str(campaign), week=WEEK, store=f"s3://{bucket}/{prefix}",
                                  engine=engine)
        wall = time.perf_counter() - started
        if len(summary.created) != args.images:
            raise SystemExit(f"zpipe made {len(summary.created)} images, not {args.images}")
        return wall

    def plain_once(prefix: str) -> float:
        started = time.perf_counter()
        plain.run(requests, prefix)
        return time.perf_counter() - started

    # warm-up: model loads and first-call costs on both sides (zpipe: 2 batches)
    plain.run(requests[:2], f"warm-plain-{uuid.uuid4().hex[:6]}")
    warm = _write_campaign(home / "warm", 2 * 5)  # 10 images, its own campaign file
    weekly_campaign(str(warm), week=WEEK, store=f"s3://{bucket}/warm-zpipe", engine=engine)

    walls: dict[str, list[float]] = {"plain": [], "zpipe": []}
    for i in range(args.repeat):
        walls["plain"].append(plain_once(f"plain-{i}"))
        walls["zpipe"].append(zpipe_once(f"zpipe-{i}"))
        print(f"round {i + 1}: plain {walls['plain'][-1]:.2f} s, zpipe {walls['zpipe'][-1]:.2f} s",
              flush=True)
    for i in range(args.repeat):
        assert _count(bucket, f"plain-{i}/", ".jpg") == args.images
        assert _count(bucket, f"zpipe-{i}/", ".jpg") == args.images
        assert _count(bucket, f"zpipe-{i}/", ".jpg.json") == args.images
    plain_s, zpipe_s = statistics.median(walls["plain"]), statistics.median(walls["zpipe"])
    extra = zpipe_s / plain_s - 1
    sizes = sorted({f"{r.width}x{r.height}" for r in requests})
    figures = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "date": f"{datetime.now(UTC):%Y-%m-%d}",
        "images": args.images, "sizes": sizes, "steps": requests[0].steps, "repeat": args.repeat,
        "max_batch": args.max_batch, "generation": args.generation,
        "plain_runs_s": walls["plain"], "zpipe_runs_s": walls["zpipe"],
        "plain_median_s": plain_s, "zpipe_median_s": zpipe_s, "zpipe_extra_wall": extra,
        "plain_load_s": plain.load_s,
    }
    print(f"\nmachine: {figures['machine']}, date {figures['date']}; tiny model, sizes {', '.join(sizes)}, "
          f"{figures['steps']} steps; {args.repeat} alternating rounds after a warm-up")
    print(f"| pipeline | {args.images}-image wall, median | images/s | vs plain |")
    print("|---|---|---|---|")
    print(f"| plain loop (diffusers -> Pillow -> boto3) | {plain_s:.2f} s | {args.images / plain_s:.2f} "
          "| 1.00 |")
    print(f"| zpipe `weekly-campaign` (Prefect server, S3) | {zpipe_s:.2f} s | {args.images / zpipe_s:.2f} "
          f"| {zpipe_s / plain_s:.3f} ({extra:+.1%}) |")
    return figures


if __name__ == "__main__":
    main()
