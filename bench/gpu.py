"""Benchmark: 1024x1024 images/s, a plain ZImagePipeline vs zpipe's engine fast path, on a GPU.

Builds Z-Image-Turbo's full-size architecture with random weights (no download: the compute is
that of the real weights, see zengine/fullsize.py), saves it once as safetensors, then measures
(a) a plain `ZImagePipeline` call (bf16, SDPA, batch 1, Turbo's 8 steps) and (b) the engine's
fast path (zengine/fast.py: best attention backend, regional torch.compile in each mode asked
for, channels-last VAE, batches), plus the weight-load time from the local save, against the
0.59 s/image compute floor of DESIGN.md. Warm-up runs are excluded; medians are reported.
A time budget skips what would not fit (recorded), the JSON is rewritten after every phase, and
a short table is printed last.

    python bench/gpu.py --out gpu.json                  # CUDA: full size, ~5-7 min
    .venv/bin/python bench/gpu.py --tiny --out t.json   # no CUDA (the default there): tiny, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()  # the time budget counts torch's import (~15 s) too
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

import torch  # noqa: E402

from zengine import FastPath, GenerationRequest, ModelSource, TurboEngine  # noqa: E402
from zengine.fullsize import ensure_full_model  # noqa: E402
from zengine.tiny import default_cache_root, ensure_tiny_model  # noqa: E402

FLOOR_S_PER_IMAGE = 0.59  # DESIGN.md: 467 TFLOP per 1024² image at ~790 TFLOP/s (H100 bf16)
TFLOP_PER_IMAGE = 467.0
PROMPTS = (  # different lengths, so batches need the padding mask as real campaigns do
    "一张春季新品海报，标题「春日限定」，柔和的粉色，产品摄影，浅景深",
    "a spring product poster, pastel colours, soft window light, 35mm photo",
    "极简风格的咖啡杯海报，米色背景",
    "flat-lay of a skincare set on marble, morning light, brand colours teal and gold, no text",
)


# --------------------------------------------------------------------------- helpers


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _free() -> None:
    """Drop what the last phase left: Python garbage, compiled graphs, cached GPU blocks."""
    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _peak_memory(record: dict[str, Any]) -> Iterator[None]:
    """Put torch.cuda.max_memory_allocated over the block into record["peak_mem_gib"]."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        yield
    finally:
        record["peak_mem_gib"] = (round(torch.cuda.max_memory_allocated() / 2**30, 2)
                                  if torch.cuda.is_available() else None)


def _rate(batch: int, seconds: list[float]) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {"batch": batch, "runs_s": [round(s, 4) for s in seconds],
            "median_batch_s": round(median, 4), "s_per_image": round(median / batch, 4),
            "images_per_s": round(batch / median, 3)}


class Budget:
    """Wall-clock budget: phases that would not fit are skipped, and say so."""

    def __init__(self, seconds: float, start: float) -> None:
        self.start = start
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


# --------------------------------------------------------------------------- phases


def prepare_model(tiny: bool, root: Path, record: dict[str, Any]) -> Path:
    """Build and save the model once (reused on later runs); record time and size."""
    start = time.perf_counter()
    if tiny:
        path = ensure_tiny_model(root)
    else:
        existed = (root / "full-random-v1" / "model_index.json").is_file()
        path = ensure_full_model(root, device="cuda")
        record["reused"] = existed
    _free()
    record.update(path=str(path), build_and_save_s=round(time.perf_counter() - start, 2),
                  bytes_on_disk=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()))
    return path


def bench_plain(path: Path, args: argparse.Namespace, device: str, dtype: torch.dtype,
                record: dict[str, Any]) -> None:
    """A plain ZImagePipeline: loaded, moved to the device, called one prompt at a time."""
    from diffusers import ZImagePipeline

    with _peak_memory(record):
        start = time.perf_counter()
        pipe = ZImagePipeline.from_pretrained(str(path), dtype=dtype).to(device)
        _sync()
        record["load_s"] = round(time.perf_counter() - start, 2)
        pipe.set_progress_bar_config(disable=True)
        call = {"prompt": None, "width": args.size, "height": args.size,
                "num_inference_steps": args.steps,  # Turbo's 8, not the pipeline's 50
                "guidance_scale": 0.0,  # Turbo is guidance-distilled
                "max_sequence_length": 512}

        warm = time.perf_counter()
        for i in range(args.warmup):
            pipe(**{**call, "prompt": [PROMPTS[0]]},
                 generator=torch.Generator(device).manual_seed(i))
        record["warmup_s"] = round(time.perf_counter() - warm, 2)
        seconds, images = [], []
        for i in range(args.repeats):
            start = time.perf_counter()
            images = pipe(**{**call, "prompt": [PROMPTS[0]]},  # a fresh list: rewritten in place
                          generator=torch.Generator(device).manual_seed(100 + i)).images
            seconds.append(time.perf_counter() - start)  # PIL images: the call has synchronized
        record.update(_rate(1, seconds), attention="diffusers default (SDPA)", compile=None,
                      images=len(images) * args.repeats, image_size=list(images[0].size))
    del pipe
    _free()


def bench_fast(path: Path, mode: str, args: argparse.Namespace, device: str,
               record: dict[str, Any]) -> None:
    """The engine as production runs it, fast path on, at batch 1 and at --batch."""
    attention = tuple(a.strip() for a in args.attention.split(",")) if args.attention else None
    fast = FastPath(enabled="on", compile_mode=None if mode == "off" else mode,
                    compile_backend=args.compile_backend,
                    **({"attention": attention} if attention else {}))
    engine = TurboEngine(ModelSource.parse(str(path)), device=device, max_batch=args.batch,
                         fast_path=fast)
    with _peak_memory(record):
        engine.load()
        _sync()
        report = engine.fast_path_report
        record.update(load_s=round(engine.load_s or 0.0, 2),  # weights only; setup_s: probes, compile
                      fast_path=report.as_dict() if report else None)
        record["runs"] = []
        images = 0
        for batch in sorted({1, args.batch}):
            requests = [GenerationRequest(prompt=PROMPTS[i % len(PROMPTS)], width=args.size,
                                          height=args.size, seed=1000 + i, steps=args.steps)
                        for i in range(batch)]
            warm = time.perf_counter()
            for _ in range(args.warmup):
                engine.generate(requests)  # compiles for this shape when compiled
            warmup_s = time.perf_counter() - warm
            seconds, walls = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                results = engine.generate(requests)
                walls.append(time.perf_counter() - start)
                seconds.append(results[0].timings["batch_s"])  # the pipeline call alone
                images += len(results)
            run = _rate(batch, seconds)
            run.update(warmup_s=round(warmup_s, 2),
                       wall_s_per_image_with_png=round(statistics.median(walls) / batch, 4),
                       image_size=[results[0].width, results[0].height])
            record["runs"].append(run)
        record["images"] = images
    best = max(record["runs"], key=lambda r: r["images_per_s"])
    record.update(best_batch=best["batch"], images_per_s=best["images_per_s"],
                  s_per_image=best["s_per_image"])
    del engine
    _free()


def summarize(results: dict[str, Any], tiny: bool) -> None:
    plain = results.get("plain", {})
    fast = [v for v in results["fast"] if "images_per_s" in v]
    summary: dict[str, Any] = {}
    if fast:
        best = max(fast, key=lambda v: v["images_per_s"])
        summary.update(best_fast_mode=best["compile_mode"], best_fast_batch=best["best_batch"],
                       best_fast_images_per_s=best["images_per_s"],
                       best_fast_s_per_image=best["s_per_image"])
        if "images_per_s" in plain:
            summary["speedup_vs_plain"] = round(best["images_per_s"] / plain["images_per_s"], 2)
    if not tiny:  # the floor is the full model's; the tiny one has no meaningful floor
        summary["floor_s_per_image"] = FLOOR_S_PER_IMAGE
        for name, s in (("plain", plain.get("s_per_image")),
                        ("fast", summary.get("best_fast_s_per_image"))):
            if s:
                summary[f"{name}_x_floor"] = round(s / FLOOR_S_PER_IMAGE, 2)
                summary[f"{name}_tflops"] = round(TFLOP_PER_IMAGE / s, 1)
    results["summary"] = summary


def print_table(results: dict[str, Any]) -> None:
    rows = []
    plain = results.get("plain", {})
    if "images_per_s" in plain:
        rows.append(("plain pipeline", "SDPA", "-", "1", plain["s_per_image"],
                     plain["images_per_s"], plain.get("load_s"), plain.get("peak_mem_gib")))
    for v in results["fast"]:
        if "runs" not in v:
            rows.append((f"fast, compile {v['compile_mode']}", v.get("skipped") or "failed",
                         "", "", "", "", "", ""))
            continue
        report = v.get("fast_path") or {}
        compiled = report.get("compile_mode") or "eager"
        for run in v["runs"]:
            rows.append((f"fast, compile {v['compile_mode']}", str(report.get("attention")),
                         compiled, str(run["batch"]), run["s_per_image"], run["images_per_s"],
                         v.get("load_s"), v.get("peak_mem_gib")))
    header = ("path", "attention", "compiled", "batch", "s/image", "images/s", "load s", "peak GiB")
    title = (f"{results['model']['kind']} model, {results['settings']['size']}² x "
             f"{results['settings']['steps']} steps on {results['machine']['device_name']}; "
             f"summary {json.dumps(results.get('summary', {}))}")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(" | ".join(header))
        for row in rows:
            print(" | ".join("" if c is None else str(c) for c in row))
        return
    table = Table(*header, title=title)
    for row in rows:
        table.add_row(*("" if c is None else str(c) for c in row))
    Console(width=160).print(table)


# --------------------------------------------------------------------------- main


def _write(path: Path | None, results: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    temporary.replace(path)  # a reader (or a kill) never sees half a file


def _phase(results: dict[str, Any], name: str, out: Path | None, work: Callable[[], None]) -> bool:
    """Run one phase; a failure is recorded and the benchmark goes on to the next."""
    ok = True
    try:
        work()
    except Exception as exc:  # a benchmark reports every failure and carries on
        results["errors"].append(f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}")
        ok = False
    if not ok:
        _free()  # after the except block: the traceback no longer pins the phase's tensors
    _write(out, results)
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=None,
                        help="tiny model on CPU (default when CUDA is missing)")
    parser.add_argument("--out", type=Path, help="write the JSON results here")
    parser.add_argument("--model-dir", type=Path,
                        help="where the model is saved once (default: $ZPIPE_CACHE/models)")
    parser.add_argument("--size", type=int, help="image side (default 1024; tiny 64)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 8; tiny 2)")
    parser.add_argument("--batch", type=int, help="fast-path batch (default 4; tiny 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per shape")
    parser.add_argument("--repeats", type=int, help="timed runs per shape (default 3; tiny 2)")
    parser.add_argument("--compile-modes",
                        help="fast-path variants, in order: default, reduce-overhead, "
                        "max-autotune-no-cudagraphs, off (default 'off,default,reduce-overhead'; "
                        "tiny 'off': inductor needs minutes per shape on a CPU)")
    parser.add_argument("--compile-backend", default="inductor", help="'eager': trace only")
    parser.add_argument("--attention", help="attention backends to try, comma-separated "
                        "(default: zengine.fast.ATTENTION_ORDER)")
    parser.add_argument("--budget-s", type=float,
                        help="stop starting phases after this many seconds (default 390; tiny 300)")
    args = parser.parse_args(argv)
    if args.tiny is None:
        args.tiny = not torch.cuda.is_available()
    if not args.tiny and not torch.cuda.is_available():
        parser.error("the full-size model needs CUDA (20.5 GB of bf16 weights); use --tiny here")
    defaults = ({"size": 64, "steps": 2, "batch": 2, "repeats": 2, "compile_modes": "off",
                 "budget_s": 300.0} if args.tiny else
                {"size": 1024, "steps": 8, "batch": 4, "repeats": 3,
                 "compile_modes": "off,default,reduce-overhead", "budget_s": 390.0})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    budget = Budget(args.budget_s, STARTED if argv is None else time.perf_counter())
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    import diffusers
    import transformers

    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"device": device, "platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
                    "transformers": transformers.__version__,
                    "device_name": torch.cuda.get_device_name() if device == "cuda" else "CPU"},
        "settings": {"size": args.size, "steps": args.steps, "batch": args.batch,
                     "warmup": args.warmup, "repeats": args.repeats, "dtype": str(dtype),
                     "compile_modes": args.compile_modes, "budget_s": args.budget_s},
        "model": {"kind": "tiny" if args.tiny else "full-size random weights"},
        "plain": {}, "fast": [], "errors": [],
    }
    root = args.model_dir or default_cache_root() / "models"
    if args.tiny:
        root = args.model_dir or default_cache_root()  # ensure_tiny_model adds models/<rev>
    holder: dict[str, Path] = {}
    _phase(results, "model", args.out,
           lambda: holder.update(path=prepare_model(args.tiny, root, results["model"])))
    if "path" in holder:
        path = holder["path"]
        _phase(results, "plain", args.out,
               lambda: bench_plain(path, args, device, dtype, results["plain"]))
        estimate = {"compiled": 150.0, "off": 45.0}  # seconds; replaced by what the runs take
        for mode in [m.strip() for m in args.compile_modes.split(",") if m.strip()]:
            record: dict[str, Any] = {"compile_mode": mode}
            results["fast"].append(record)
            kind = "off" if mode == "off" else "compiled"
            if budget.left() < estimate[kind]:
                record["skipped"] = (f"time budget: {budget.left():.0f} s left, this variant "
                                     f"takes ~{estimate[kind]:.0f} s")
                _write(args.out, results)
                continue
            start = time.perf_counter()
            _phase(results, f"fast {mode}", args.out,
                   lambda mode=mode, record=record: bench_fast(path, mode, args, device, record))
            record["phase_s"] = round(time.perf_counter() - start, 1)
            if "runs" in record:  # a variant that finished tells how long the next one takes
                estimate[kind] = record["phase_s"] * 1.1
    results["elapsed_s"] = round(time.perf_counter() - budget.start, 1)
    summarize(results, args.tiny)
    _write(args.out, results)
    print_table(results)  # last: the lines a reader of the log sees first
    return results


if __name__ == "__main__":
    main()
