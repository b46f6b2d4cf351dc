"""Benchmark: the QA gate (tasks.qa) — cost per image on one core, GPU idle with it on,
OCR read-back accuracy on typeset posters, NSFW false positives on clean images.

Part 1 — one core (ONNX Runtime intra-op threads = 1, BLAS threads = 1): `inspect` on 1024²
labelled posters with a drawn headline (text on: band search + read), label read-back at full
size and in the repost copy, NudeNet, palette. Medians per check.
Part 2 — GPU idle share: the real `weekly-campaign` flow with the 0.6 s/image stand-in engine
of bench/postprocess.py, QA on (default settings, min_side_px lowered so 1024² and 576x1024 are
read), 56 images.
Part 3 — OCR read-back: typeset zh and en headlines in every font on the machine, at 4 sizes,
on 4 kinds of background; share read within the CER thresholds, and the CER distribution.
Part 4 — NSFW false positives: NudeNet on unmarked posters and photo-like images.

    .venv/bin/python bench/qa.py            # --quick for a short run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.labels.overlay import HeadlineStyle, draw_headline  # noqa: E402
from tasks.labels.watermark import LabelSpec, apply_label, find_cjk_font  # noqa: E402
from tasks.qa import NudeNetDetector, QASettings, Subject, inspect  # noqa: E402
from tasks.qa.nsfw import check_nsfw  # noqa: E402
from tasks.qa.settings import TextCheckSettings  # noqa: E402
from tasks.qa.text import cer, read_box, read_lines  # noqa: E402

HEADLINES = [("春日限定桂花拿铁", "Osmanthus Latte"),
             ("周一早晨的第一杯手冲咖啡", "First pour-over of Monday"),
             ("雨天窗边的热可可", "Hot cocoa by a rainy window"), ("慢下来，喝一杯", "Slow down and sip"),
             ("今天也要好好喝咖啡", "Good coffee, good day"),
             ("冬日燕麦拿铁买一送一", "Oat latte: buy one get one")]
BRAND = {"primary": "#C8102E", "cream": "#F5E6C8", "ink": "#2B2118"}


def background(kind: str, seed: int, size=(1024, 1024)) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    if kind == "noise":  # the tiny model's texture
        low = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        return Image.fromarray(low).resize(size, Image.BICUBIC)
    if kind == "gradient":
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, h)[:, None, None]
        return Image.fromarray(np.broadcast_to(a + (b - a) * t, (h, w, 3)).astype(np.uint8))
    if kind == "photo":  # blurred blobs: a shallow-depth-of-field photo
        img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(40):
            x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(20, 250)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        return img.filter(ImageFilter.GaussianBlur(18))
    flat = tuple(int(v) for v in rng.integers(0, 256, 3))  # "flat": one brand-ish colour
    return Image.new("RGB", size, flat)


def fonts() -> list[str]:
    out = subprocess.run(["fc-list", ":", "file"], capture_output=True, text=True, check=False).stdout
    return sorted({line.strip().rstrip(":") for line in out.splitlines()
                   if line.strip().endswith((".ttf:", ".ttc:", ".otf:"))})


def draws_cjk(path: str) -> bool:
    font = ImageFont.truetype(path, 40)
    return font.getmask("生").getbbox() != font.getmask("\U0010fffd").getbbox()


def poster(seed: int, text_on: bool = True) -> Subject:
    """A 1024² poster: headline drawn straight on the picture (as the model would), labelled."""
    zh, en = HEADLINES[seed % len(HEADLINES)]
    picture = background(("noise", "photo", "gradient")[seed % 3], seed)
    drawn, _ = draw_headline(picture, [zh, en], HeadlineStyle(plate_color="#00000000"), str(find_cjk_font()))
    final, placement = apply_label(drawn, LabelSpec())
    return Subject(generated=drawn, final=final, seed=seed, label_text=placement.text,
                   label_box=placement.text_bbox, draw_text={"zh": zh, "en": en} if text_on else {},
                   brand_colours=BRAND)


def part1(n: int) -> None:
    settings = QASettings(threads=1, text=TextCheckSettings(enabled="on"))
    subjects = [poster(i) for i in range(6)]
    totals, per = [], {}
    with threadpool_limits(limits=1):
        for i in range(n + 2):
            started = time.perf_counter()
            report = inspect(subjects[i % len(subjects)], settings)
            total = time.perf_counter() - started
            if i < 2:
                continue  # warm-up: model load
            totals.append(total)
            for name, value in report.timings_s.items():
                per.setdefault(name, []).append(value)
    print(f"### QA gate per 1024² poster, one core (ONNX Runtime 1 thread), n={n} (medians)\n")
    print("| check | median ms |\n|---|---|")
    for name, values in per.items():
        print(f"| {name} | {statistics.median(values) * 1000:.1f} |")
    print(f"| **total** (incl. decision) | **{statistics.median(totals) * 1000:.1f}** |\n")


def part2() -> None:
    import shutil

    sys.path.insert(0, str(REPO / "bench"))
    from postprocess import GPU_LATENCY_S, StandInEngine

    import tasks.generation.engine as generate
    import tasks.steps.publish as publish
    from flows.campaign import weekly_campaign
    from tasks.config.schema import EngineSettings

    stand_in = StandInEngine()
    stand_in.loaded = True  # already resident: the generate stage checks this before a batch
    generate.get_engine = lambda settings: stand_in
    original = publish.publish_batch
    publish.publish_batch = lambda *a, **k: original(*a, **{**k, "qa": QASettings(min_side_px=512)})
    tree = Path(tempfile.mkdtemp()) / "configs"
    shutil.copytree(REPO / "configs", tree)
    campaign = tree / "campaigns/weekly-demo.yaml"
    campaign.write_text(campaign.read_text(encoding="utf-8").replace("variants: 1", "variants: 4"),
                        encoding="utf-8")
    with tempfile.TemporaryDirectory() as out:
        summary = weekly_campaign(str(campaign), week="2026-W48", store=f"file://{out}",
                                  engine=EngineSettings(preview_scale=1.0, max_batch=4))
        import json

        decisions = [json.loads(p.read_text())["qa"]["decision"] for p in Path(out).rglob("*.json")
                     if "qa" in json.loads(p.read_text())]
    busy = sum(end - start for start, end in stand_in.busy)
    span = stand_in.busy[-1][1] - stand_in.busy[0][0]
    idle = span - busy
    print(f"### GPU idle with the QA gate on ({len(summary.created)} images, stand-in "
          f"{GPU_LATENCY_S} s/image, batches of 4; decisions: "
          f"{ {d: decisions.count(d) for d in set(decisions)} })\n")
    print("| GPU busy | span first start -> last end | idle | idle share |\n|---|---|---|---|")
    print(f"| {busy:.2f} s | {span:.2f} s | {idle:.2f} s | {idle / span * 100:.1f} % |\n")


def part3(quick: bool) -> None:
    all_fonts = fonts()
    sizes = (0.04, 0.06, 0.08) if quick else (0.035, 0.05, 0.07, 0.09)
    kinds = ("noise", "photo", "gradient", "flat")
    rows: dict[str, list[float]] = {}
    limits = QASettings().max_cer
    n_zh = n_en = 0
    for font in all_fonts:
        cjk = draws_cjk(font)
        n_zh += cjk
        n_en += 1
        for s, ratio in enumerate(sizes):
            for k, kind in enumerate(kinds):
                seed = hash((font, s, k)) % 10_000
                zh, en = HEADLINES[seed % len(HEADLINES)]
                lines = [zh, en] if cjk else [en]
                picture = background(kind, seed, (1024, 1024))
                plate = "#00000099" if k % 2 else "#00000000"  # typeset on a plate, or bare
                style = HeadlineStyle(height_ratio=ratio, plate_color=plate,
                                      text_color="#FFFFFF" if np.asarray(picture).mean() < 140 else "#1A1A1A")
                image, placement = draw_headline(picture, lines, style, font)
                for text, box in zip(placement.lines, placement.line_boxes, strict=True):
                    script = "zh" if text == zh else "en"
                    rows.setdefault(f"{script} known box", []).append(cer(text, [read_box(image, box).text]))
                found = [ln.text for ln in read_lines(image, (0, 0, 1024, 460), 384)]
                for text in placement.lines:
                    script = "zh" if text == zh else "en"
                    rows.setdefault(f"{script} band search", []).append(cer(text, found))
    print(f"### OCR read-back on typeset headlines ({n_en} fonts, {n_zh} with CJK glyphs; "
          f"{len(sizes)} sizes {sizes} of the short side; backgrounds {', '.join(kinds)}; 1024²)\n")
    print("| text, reading | n | exact | within threshold | median CER | p90 CER |")
    print("|---|---|---|---|---|---|")
    for name, values in sorted(rows.items()):
        limit = limits.zh if name.startswith("zh") else limits.en
        v = np.array(values)
        print(f"| {name} | {len(v)} | {(v == 0).mean() * 100:.1f} % | {(v <= limit).mean() * 100:.1f} % "
              f"| {np.median(v):.3f} | {np.percentile(v, 90):.3f} |")
    print()


def part4(n: int) -> None:
    detector, settings = NudeNetDetector(), QASettings().nsfw
    sets = {"posters (headline + label)": [poster(i).final for i in range(n)],
            "photo-like (blurred blobs)": [background("photo", 1000 + i) for i in range(n)],
            "noise textures (tiny model)": [background("noise", 2000 + i) for i in range(n)],
            "gradients / flat": [background(("gradient", "flat")[i % 2], 3000 + i) for i in range(n)]}
    print(f"### NSFW false positives (NudeNet 320n, threshold {settings.threshold}, unsafe classes only)\n")
    print("| images | n | flagged | FP rate | highest unsafe score |\n|---|---|---|---|---|")
    for name, images in sets.items():
        results = [check_nsfw(image, settings, detector) for image in images]
        flagged = sum(r.verdict == "fail" for r in results)
        print(f"| {name} | {len(images)} | {flagged} | {flagged / len(images) * 100:.1f} % "
              f"| {max(r.value or 0 for r in results):.3f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default="1234")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores (shared), {platform.python_version()}; "
          f"date {datetime.now(UTC):%Y-%m-%d}\n")
    if "1" in args.parts:
        part1(10 if args.quick else 30)
    if "2" in args.parts:
        part2()
    if "3" in args.parts:
        part3(args.quick)
    if "4" in args.parts:
        part4(20 if args.quick else 100)


if __name__ == "__main__":
    main()
