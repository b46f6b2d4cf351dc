"""GPU proof: Z-Image-Turbo at full size (random weights), plain pipeline vs zpipe's fast path vs fp8.

One process, one budget. The full-size architecture (zengine/fullsize.py: real FLOPs, memory
and kernel shapes, no download) is built and saved once, evicted from the page cache, loaded
once, and every stage after that reuses the loaded pipeline:

  versions     library versions, the GPU, and which SDPA kernel torch picks (mask and no mask)
  build        build + save_pretrained once (kept in memory instead if the disk is too slow)
  cold_start   import, from_pretrained + .to(device) with the page cache evicted, first image
  plain_b1     ZImagePipeline as a user calls it, 1024², batch 1: 1 warm-up + 5 timed
  plain_b4     batch 4, four prompts of different lengths (the padding mask)
  memory       weights and peak GPU memory
  fast_eager   the engine's fast path without compile: attention choice, each image of a
               mixed-length batch vs the same prompt alone, VAE channels-last A/B, timings
  compile      regional torch.compile, recompile limit raised, recompiles logged; compile
               seconds at load and at the first request of each shape; latents vs eager
  fp8          torchao float8 dynamic per-row on the transformer, eager and compiled, vs bf16
  table        a short table, printed last: s/image, images/s, TFLOP/s against the floor

Every stage has its own time budget and its own try/except; the results JSON is rewritten
atomically after every single measurement, so a kill loses at most the measurement in flight.
A watchdog thread interrupts a stage that overruns its budget and, past the hard limit, writes
what it has and exits. `--tiny` runs the same stages with the tiny model on the CPU (small
sizes, compile with the "eager" backend, CUDA-only stages skipped with the reason).

    bash bench/gpu_device.sh                          # on the lent GPU (installs carried wheels)
    python bench/gpu.py --out out/gpu.json            # CUDA: full size, ~500 s budget
    .venv/bin/python bench/gpu.py --tiny --out t.json # CPU, tiny model, ~20 s
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # the budget counts torch's import too

import _thread  # noqa: E402
import argparse  # noqa: E402
import contextlib  # noqa: E402
import faulthandler  # noqa: E402
import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere, no install

FLOOR_S_PER_IMAGE = 0.59  # DESIGN.md: 467 TFLOP per 1024² image at ~790 TFLOP/s (H100/H200 bf16)
TFLOP_PER_IMAGE = 467.0  # 8 DiT forwards x 56.6 + text 3.9 + VAE 10.5, at 1024²
PROMPTS = (  # four different lengths, so a batch needs the padding mask as real campaigns do
    "一张春季新品海报，标题「春日限定」，柔和的粉色，产品摄影，浅景深",
    "a spring product poster, pastel colours, soft window light, 35mm photo",
    "极简风格的咖啡杯海报，米色背景",
    "flat-lay of a skincare set on marble, morning light, brand colours teal and gold, no text, "
    "top-down, soft shadows, a sprig of eucalyptus, generous negative space for a headline",
)
PACKAGES = ("diffusers", "transformers", "huggingface-hub", "safetensors", "tokenizers",
            "accelerate", "peft", "torchao", "numpy", "triton", "pillow")
STAGES = ("versions", "build", "cold_start", "plain_b1", "plain_b4", "memory", "fast_eager",
          "compile", "fp8", "table")


# --------------------------------------------------------------------------- the run record


class StageOverBudget(Exception):
    """A stage's next measurement would not fit its budget: it stops with what it has."""


class Run:
    """The results, their atomic file, the budget, and the watchdog.

    Every change goes through `put` / `add` (under one lock) and rewrites the JSON file, so the
    watchdog thread can write a consistent file at any moment.
    """

    def __init__(self, out: Path | None, budget_s: float, hard_s: float, started: float) -> None:
        self.out = out
        self.budget_s = budget_s
        self.hard_s = hard_s
        self.started = started
        self.lock = threading.RLock()
        self.results: dict[str, Any] = {"stages": {}, "errors": []}
        self.stage: str | None = None
        self.deadline: float | None = None
        self.interrupted_by_watchdog = False
        self._done = threading.Event()

    # -- time
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def fits(self, seconds: float) -> bool:
        """Whether `seconds` more work fits before the running stage's deadline."""
        return self.deadline is None or time.perf_counter() + seconds <= self.deadline

    def check(self, seconds: float, what: str) -> None:
        if not self.fits(seconds):
            raise StageOverBudget(f"stopped before {what} (~{seconds:.0f} s): stage budget spent")

    # -- records
    def rec(self, stage: str) -> dict[str, Any]:
        with self.lock:
            return self.results["stages"].setdefault(stage, {})

    def put(self, stage: str, **values: Any) -> None:
        with self.lock:
            self.rec(stage).update(values)
            self.write()

    def add(self, stage: str, key: str, value: Any) -> None:
        with self.lock:
            self.rec(stage).setdefault(key, []).append(value)
            self.write()

    def write(self) -> None:
        if self.out is None:
            return
        with self.lock:
            self.results["elapsed_s"] = round(self.elapsed(), 1)
            text = json.dumps(self.results, indent=2, ensure_ascii=False, default=str)
            self.out.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.out.with_name(self.out.name + ".tmp")
            temporary.write_text(text)
            temporary.replace(self.out)  # a reader (or a kill) never sees half a file

    # -- stages
    def run_stage(self, name: str, budget_s: float, work: Callable[[], None], *,
                  need_s: float | None = None, skip: str | None = None) -> bool:
        """Run one stage in its own try/except and budget; record its outcome. True if it finished."""
        if skip:
            self.put(name, status="skipped", reason=skip)
            return False
        left = self.left()
        need = min(budget_s, 20.0) if need_s is None else need_s
        if left < need:
            self.put(name, status="skipped",
                     reason=f"time budget: {left:.0f} s left, the stage needs at least {need:.0f} s")
            return False
        allowed = min(budget_s, left)
        start = time.perf_counter()
        self.put(name, status="running", budget_s=round(allowed, 1))
        self.stage, self.deadline = name, start + allowed
        status, failed = "ok", False
        try:
            work()
        except StageOverBudget as exc:
            status = f"stopped: {exc}"
        except KeyboardInterrupt:
            if not self.interrupted_by_watchdog:
                raise
            self.interrupted_by_watchdog = False
            status, failed = "interrupted by the watchdog (stage over its budget)", True
        except Exception as exc:  # a benchmark records every failure and goes on to the next stage
            status, failed = "failed", True
            self.put(name, error=_why(exc))
            with self.lock:
                self.results["errors"].append(f"{name}: {_why(exc)}")
        finally:
            self.stage, self.deadline = None, None
            self.put(name, status=status, elapsed_s=round(time.perf_counter() - start, 2))
        if failed:
            _free()  # after the except block: the traceback no longer pins the stage's tensors
        return not failed

    # -- watchdog
    def start_watchdog(self, grace_s: float) -> None:
        threading.Thread(target=self._watch, args=(grace_s,), name="bench-watchdog",
                         daemon=True).start()

    def stop_watchdog(self) -> None:
        self._done.set()

    def _watch(self, grace_s: float) -> None:
        interrupted_stage = None
        while not self._done.wait(1.0):
            now = time.perf_counter()
            if now - self.started > self.hard_s:
                with self.lock:
                    self.results["watchdog"] = (f"hard limit {self.hard_s:.0f} s reached in stage "
                                                f"{self.stage!r}: exiting with what was measured")
                    if self.stage:
                        self.rec(self.stage)["status"] = "killed by the watchdog (hard limit)"
                    self.write()
                print(f"\n[watchdog] {self.results['watchdog']}", file=sys.stderr, flush=True)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                with contextlib.suppress(Exception):
                    print_table(self.results)
                sys.stdout.flush()
                os._exit(3)
            stage, deadline = self.stage, self.deadline
            if (stage and deadline and now > deadline + grace_s and interrupted_stage != stage):
                interrupted_stage = stage
                self.interrupted_by_watchdog = True
                print(f"\n[watchdog] stage {stage!r} is {now - deadline:.0f} s over its budget: "
                      "interrupting it", file=sys.stderr, flush=True)
                _thread.interrupt_main()  # raised once the main thread runs Python again


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"


# --------------------------------------------------------------------------- helpers


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _gib(n: float) -> float:
    return round(n / 2**30, 2)


def _rate(batch: int, seconds: list[float]) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {"batch": batch, "median_batch_s": round(median, 4), "s_per_image": round(median / batch, 4),
            "images_per_s": round(batch / median, 3)}


def evict_page_cache(paths: list[Path], drop_all: bool) -> dict[str, Any]:
    """Drop `paths`' files from the page cache (fadvise DONTNEED per file).

    `drop_all` (the lent GPU machine, which runs nothing else): also write /proc/sys/vm/drop_caches
    when root. Never on a shared build machine: it slows everyone's next reads.
    """
    os.sync()  # dirty pages are not dropped
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    evicted = 0
    for file in files:
        try:
            fd = os.open(file, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            evicted += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    drop = "not tried" + ("" if drop_all else " (shared machine)")
    if drop_all and hasattr(os, "geteuid") and os.geteuid() == 0:
        try:
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
            drop = "ok"
        except OSError as exc:
            drop = _why(exc)
    return {"files": len(files), "fadvise_dontneed": evicted, "drop_caches": drop}


def _package_dirs(names: tuple[str, ...]) -> list[Path]:
    dirs = []
    for name in names:
        spec = importlib.util.find_spec(name)  # locates the package without importing it
        if spec and spec.submodule_search_locations:
            dirs.extend(Path(p) for p in spec.submodule_search_locations)
    return dirs


def _call(pipe: Any, prompts: list[str], size: int, steps: int, seed: int,
          output_type: str = "pil") -> Any:
    """One pipeline call as zpipe makes it: Turbo's settings, a fresh prompt list, seeded."""
    import torch

    device = pipe.transformer.device
    with torch.inference_mode():  # as the engine calls it (a no_grad call would recompile)
        return pipe(prompt=list(prompts),  # a fresh list: the pipeline rewrites it in place
                    width=size, height=size,
                    num_inference_steps=steps,  # Turbo's 8, not the pipeline's 50
                    guidance_scale=0.0,  # Turbo is guidance-distilled
                    max_sequence_length=512,
                    generator=[torch.Generator(device).manual_seed(seed + i)
                               for i in range(len(prompts))],
                    output_type=output_type).images


def _latents(pipe: Any, prompts: list[str], size: int, steps: int, seed: int) -> Any:
    out = _call(pipe, prompts, size, steps, seed, output_type="latent")
    _sync()
    return out.float().cpu()


def _compare(out: Any, reference: Any) -> dict[str, Any]:
    import torch

    from zengine.fast import relative_error

    error = relative_error(out, reference)
    return {"relative_l2": None if error is None else float(f"{error:.3g}"),
            "nan": bool(torch.isnan(out).any()), "inf": bool(torch.isinf(out).any())}


@contextlib.contextmanager
def _peak(run: Run, stage: str) -> Iterator[None]:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        yield
    finally:
        if torch.cuda.is_available():
            run.put(stage, peak_allocated_gib=_gib(torch.cuda.max_memory_allocated()),
                    peak_reserved_gib=_gib(torch.cuda.max_memory_reserved()))


# --------------------------------------------------------------------------- the benchmark


class Bench:
    """The stages. State shared between them: the saved model, the loaded pipeline, eager latents."""

    def __init__(self, args: argparse.Namespace, run: Run) -> None:
        import torch

        self.args = args
        self.run = run
        self.tiny = args.tiny
        self.device = "cpu" if args.tiny else "cuda"
        self.dtype = torch.float32 if args.tiny else torch.bfloat16
        self.path: Path | None = None
        self.built: Any = None  # the pipeline built in memory, when the disk was too slow
        self.pipe: Any = None
        self.eager: dict[str, Any] = {}  # latents of the fast path eager, the reference
        self.chosen_attention: str | None = None

    def timed(self, stage: str, label: str, call: Callable[[], Any], batch: int, warmup: int,
              repeats: int) -> dict[str, Any] | None:
        """Warm-up + timed calls, each recorded as it ends; stops early at the stage's budget.

        A call that returns a float reports its own seconds (the engine's `batch_s`: the
        pipeline call without PNG encoding); otherwise the wall time is used.
        """
        run = self.run
        first = None
        for i in range(warmup):
            start = time.perf_counter()
            call()
            _sync()
            seconds = time.perf_counter() - start
            first = seconds if first is None else first
            run.put(stage, **{f"{label}_warmup_s" if i == 0 else f"{label}_warmup{i}_s": round(seconds, 3)})
        seconds_list: list[float] = []
        estimate = first or 0.0
        for _ in range(repeats):
            if seconds_list:
                estimate = statistics.median(seconds_list)
            if not run.fits(estimate):
                run.put(stage, **{f"{label}_note": f"stopped after {len(seconds_list)} timed runs: "
                                                    "stage budget"})
                break
            start = time.perf_counter()
            value = call()
            _sync()
            seconds = value if isinstance(value, float) else time.perf_counter() - start
            seconds_list.append(seconds)
            run.add(stage, f"{label}_runs_s", round(seconds, 4))
        if not seconds_list:
            return None
        rate = _rate(batch, seconds_list)
        run.put(stage, **{label: rate})
        return rate

    # -- 1
    def versions(self) -> None:
        import torch

        stage = "versions"
        start = time.perf_counter()
        import diffusers  # noqa: F401
        import transformers  # noqa: F401

        self.run.put(stage, import_diffusers_transformers_s=round(time.perf_counter() - start, 2))
        versions = {}
        for name in PACKAGES:
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                versions[name] = None
        machine: dict[str, Any] = {
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        }
        if self.device == "cuda":
            props = torch.cuda.get_device_properties(0)
            machine.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                           memory_gib=_gib(props.total_memory),
                           multiprocessors=props.multi_processor_count)
        else:
            machine.update(device_name="CPU")
        self.run.put(stage, packages=versions, machine=machine)
        self.run.put(stage, sdpa=sdpa_kernels(self.device, self.dtype, self.tiny))

    # -- 2
    def build(self) -> None:
        import torch

        from zengine.fullsize import FULL_REVISION, build_full_pipeline
        from zengine.tiny import default_cache_root, ensure_tiny_model

        stage, run, args = "build", self.run, self.args
        # Default: the tiny model in zpipe's cache (reused), the 20.5 GB one under /tmp.
        root = Path(args.model_dir or (default_cache_root() if self.tiny else "/tmp/zpipe-models"))
        if self.tiny:
            start = time.perf_counter()
            self.path = ensure_tiny_model(root)
            run.put(stage, kind="tiny", path=str(self.path),
                    build_and_save_s=round(time.perf_counter() - start, 2))
            # The full-size recipe against the installed libraries, on the meta device (no
            # memory): the configs the GPU run builds are accepted, the sizes are the real ones.
            with _quiet_diffusers():
                full = build_full_pipeline("meta")
            run.put(stage, full_size_on_meta={k: sum(p.numel() for p in getattr(full, k).parameters())
                                              for k in ("transformer", "text_encoder", "vae")})
            del full
        else:
            target = root / FULL_REVISION
            if (target / "model_index.json").is_file():
                self.path = target
                run.put(stage, kind="full-size random weights", path=str(target), reused=True)
            else:
                root.mkdir(parents=True, exist_ok=True)
                start = time.perf_counter()
                # Kept until the save is done: if the save fails or is interrupted, the later
                # stages run on this in-memory copy (only the cold start is lost).
                with _quiet_diffusers():
                    self.built = build_full_pipeline(self.device)
                _sync()
                run.put(stage, build_s=round(time.perf_counter() - start, 2),
                        parameters={k: sum(p.numel() for p in getattr(self.built, k).parameters())
                                    for k in ("transformer", "text_encoder", "vae")})
                saved_bytes = sum(p.numel() * p.element_size() for p in self.built.transformer.parameters())
                saved_bytes += sum(p.numel() * p.element_size()
                                   for name in ("text_encoder", "vae")
                                   for p in getattr(self.built, name).parameters())
                disk = disk_check(root, args.min_disk_mb_s, saved_bytes,
                                  seconds_left=(run.deadline or 0) - time.perf_counter())
                run.put(stage, disk=disk)
                if disk["use_disk"]:
                    start = time.perf_counter()
                    staging = Path(tempfile.mkdtemp(prefix=".full-", dir=root))
                    try:
                        self.built.save_pretrained(staging)
                        staging.rename(target)
                    finally:
                        shutil.rmtree(staging, ignore_errors=True)
                    run.put(stage, save_s=round(time.perf_counter() - start, 2), path=str(target))
                    self.path = target
                    self.built = None
                    _free()
                else:  # cold start is then skipped: nothing to load from disk
                    run.put(stage, kept_in_memory=disk["reason"])
        if self.path is not None:
            run.put(stage, bytes_on_disk=sum(f.stat().st_size for f in self.path.rglob("*")
                                             if f.is_file()))
        if self.device == "cuda":
            run.put(stage, gpu_allocated_after_gib=_gib(torch.cuda.memory_allocated()))

    # -- 3
    def cold_start(self) -> None:
        import torch
        from diffusers import ZImagePipeline

        stage, run, args = "cold_start", self.run, self.args
        if self.path is None:
            self.pipe = self.built
            self.built = None
            self.pipe.set_progress_bar_config(disable=True)
            run.put(stage, note="model kept in memory at build (slow disk): no load measured")
            return
        run.put(stage, page_cache=evict_page_cache([self.path], drop_all=not self.tiny))
        start = time.perf_counter()
        pipe = ZImagePipeline.from_pretrained(str(self.path), dtype=self.dtype)
        loaded = time.perf_counter()
        pipe.to(self.device)
        _sync()
        moved = time.perf_counter()
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        run.put(stage, from_pretrained_s=round(loaded - start, 2), to_device_s=round(moved - loaded, 2))
        if self.device == "cuda":
            run.put(stage, weights_gib=_gib(torch.cuda.memory_allocated()))
        _call(pipe, [PROMPTS[0]], args.size, args.steps, seed=0)
        _sync()
        first = time.perf_counter() - moved
        imports = run.rec("process").get("import_torch_s", 0.0) + \
            run.rec("versions").get("import_diffusers_transformers_s", 0.0)
        run.put(stage, first_image_s=round(first, 2),
                load_to_first_image_s=round(time.perf_counter() - start, 2),
                import_s=round(imports, 2),
                total_s=round(imports + time.perf_counter() - start, 2))

    # -- 4, 5
    def plain(self, batch: int, stage: str) -> None:
        args = self.args
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        repeats = args.repeats if batch == 1 else args.repeats_batch
        with _peak(self.run, stage):
            self.timed(stage, "pipeline", lambda: _call(self.pipe, prompts, args.size, args.steps, 100),
                       batch, warmup=1, repeats=repeats)
        self.run.put(stage, attention="diffusers default (SDPA)", compiled=False, output="PIL")

    # -- 6
    def memory(self) -> None:
        import torch

        stage = "memory"
        self.run.put(stage, max_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
        if self.device != "cuda":
            self.run.put(stage, gpu="skipped: no CUDA (tiny run on the CPU)")
            return
        free, total = torch.cuda.mem_get_info()
        stages = self.run.results["stages"]
        self.run.put(stage, allocated_gib=_gib(torch.cuda.memory_allocated()),
                     reserved_gib=_gib(torch.cuda.memory_reserved()),
                     free_gib=_gib(free), total_gib=_gib(total),
                     peak_b1_gib=stages.get("plain_b1", {}).get("peak_allocated_gib"),
                     peak_b4_gib=stages.get("plain_b4", {}).get("peak_allocated_gib"))

    # -- 7
    def fast_eager(self) -> None:
        import torch

        from zengine import FastPath, GenerationRequest, ModelSource, TurboEngine

        stage, run, args = "fast_eager", self.run, self.args
        attention = tuple(a.strip() for a in args.attention.split(",")) if args.attention else None
        fast = FastPath(enabled="on", compile_mode=None, **({"attention": attention} if attention else {}))
        engine = TurboEngine(ModelSource(model=str(self.path or REPO)), device=self.device,
                             dtype=self.dtype, max_batch=4, fast_path=fast, pipeline=self.pipe)
        engine.load()
        report = engine.fast_path_report
        self.chosen_attention = report.attention if report else None
        run.put(stage, fast_path=report.as_dict() if report else None)

        # Each image of a mixed-length batch vs the same prompt alone (the batch needs the mask).
        run.check(6 * run.rec("plain_b1").get("pipeline", {}).get("median_batch_s", 1.0), "batched vs solo")
        batch = _latents(self.pipe, list(PROMPTS), args.size, args.steps, seed=200)
        self.eager["b4"] = batch
        solo = []
        for i, prompt in enumerate(PROMPTS):
            solo.append(_latents(self.pipe, [prompt], args.size, args.steps, seed=200 + i))
            run.add(stage, "batched_vs_solo", {"prompt_chars": len(prompt),
                                               **_compare(batch[i : i + 1], solo[-1])})
        self.eager["b1"] = solo[0]

        # VAE channels-last A/B on one image's latents.
        run.put(stage, vae_channels_last_ab=vae_ab(self.pipe, solo[0], self.device, self.dtype, run))

        # The engine as production runs it (PIL out; batch_s is the pipeline call alone).
        for n, label in ((1, "engine_b1"), (4, "engine_b4")):
            requests = [GenerationRequest(prompt=PROMPTS[i], width=args.size, height=args.size,
                                          seed=300 + i, steps=args.steps) for i in range(n)]
            with _peak(run, stage):
                self.timed(stage, label, lambda r=requests, e=engine: e.generate(r)[0].timings["batch_s"],
                           n, warmup=1,
                           repeats=args.repeats if n == 1 else args.repeats_batch)
        del engine
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    # -- 8
    def compile(self) -> None:
        import torch
        import torch._dynamo.utils as dynamo_utils

        from zengine import FastPath, GenerationRequest, ModelSource, TurboEngine

        stage, run, args = "compile", self.run, self.args
        torch._logging.set_logs(recompiles=True)  # each recompile's reason goes to the log
        attention = (self.chosen_attention,) if self.chosen_attention else ("native",)
        fast = FastPath(enabled="on", compile_mode=args.compile_mode,
                        compile_backend=args.compile_backend, attention=attention,
                        channels_last_vae=True)
        engine = TurboEngine(ModelSource(model=str(self.path or REPO)), device=self.device,
                             dtype=self.dtype, max_batch=4, fast_path=fast, pipeline=self.pipe)
        start = time.perf_counter()
        engine.load()
        report = engine.fast_path_report
        run.put(stage, load_compile_s=round(time.perf_counter() - start, 2),
                fast_path=report.as_dict() if report else None, graphs_after_load=_graphs(dynamo_utils))
        if not report or report.compile_mode is None:
            raise RuntimeError(f"compile failed at load: {report.compile_error if report else '?'}")

        # First request of each shape pays its compile; latents vs eager with the same seeds.
        for n, key in ((1, "b1"), (4, "b4")):
            prompts = list(PROMPTS[:n])
            run.check(60.0, f"the first compiled batch-{n} request")
            t0 = time.perf_counter()
            latents = _latents(self.pipe, prompts, args.size, args.steps, seed=200)
            run.put(stage, **{f"first_request_{key}_s": round(time.perf_counter() - t0, 2),
                              f"graphs_after_{key}": _graphs(dynamo_utils)})
            if key in self.eager:
                run.put(stage, **{f"vs_eager_{key}": _compare(latents, self.eager[key])})
            requests = [GenerationRequest(prompt=PROMPTS[i], width=args.size, height=args.size,
                                          seed=300 + i, steps=args.steps) for i in range(n)]
            with _peak(run, stage):
                self.timed(stage, f"engine_{key}",
                           lambda r=requests, e=engine: e.generate(r)[0].timings["batch_s"], n,
                           warmup=1, repeats=args.repeats if n == 1 else args.repeats_batch)
        run.put(stage, recompile_limit=_recompile_limit(), dynamo_counters=_counters(dynamo_utils))
        del engine

    # -- 9
    def fp8(self) -> None:
        import torch
        import torch._dynamo.utils as dynamo_utils

        from zengine.fast import _uncompile, apply_fp8, raise_recompile_limit

        stage, run, args = "fp8", self.run, self.args
        transformer = self.pipe.transformer
        _uncompile(transformer)  # quantize the eager modules, then compile those
        start = time.perf_counter()
        apply_fp8(transformer)
        _sync()
        run.put(stage, quantize_s=round(time.perf_counter() - start, 2),
                transformer_gib_after=_gib(torch.cuda.memory_allocated()))
        for compiled in (False, True):
            tag = "compiled" if compiled else "eager"
            if compiled:
                raise_recompile_limit()
                run.check(90.0, "compiling the fp8 transformer")
                t0 = time.perf_counter()
                transformer.compile_repeated_blocks(fullgraph=True, backend=args.compile_backend)
                run.put(stage, compile_call_s=round(time.perf_counter() - t0, 2))
            for n, key in ((1, "b1"), (4, "b4")):
                if n == 4 and not compiled:
                    continue  # fp8 eager is the quantization's accuracy check, not a contender
                prompts = list(PROMPTS[:n])
                t0 = time.perf_counter()
                latents = _latents(self.pipe, prompts, args.size, args.steps, seed=200)
                run.put(stage, **{f"{tag}_first_request_{key}_s": round(time.perf_counter() - t0, 2)})
                if key in self.eager:
                    run.put(stage, **{f"{tag}_vs_bf16_eager_{key}": _compare(latents, self.eager[key])})
                with _peak(run, stage):
                    self.timed(stage, f"{tag}_{key}",
                               lambda p=prompts: _call(self.pipe, p, args.size, args.steps, 100),
                               n, warmup=0 if compiled else 1,
                               repeats=args.repeats if n == 1 else args.repeats_batch)
        run.put(stage, graphs=_graphs(dynamo_utils))


def disk_check(root: Path, min_mb_s: float, size: int, seconds_left: float) -> dict[str, Any]:
    """Free space and write speed (256 MiB, fsync'd): can `size` bytes be saved in time?"""
    free = shutil.disk_usage(root).free
    if free < size * 1.2:
        return {"free_gib": _gib(free), "use_disk": False,
                "reason": f"{_gib(free)} GiB free < {_gib(size * 1.2)} GiB needed"}
    probe = root / ".write-probe"
    block = os.urandom(2**20)
    start = time.perf_counter()
    with open(probe, "wb") as f:
        for _ in range(256):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    probe.unlink()
    speed = 256 / seconds  # MiB/s
    estimate = size / 2**20 / speed * 1.5  # + serialization and the copy off the GPU
    reason = None
    if speed < min_mb_s:
        reason = f"disk writes {speed:.0f} MB/s < {min_mb_s:.0f} MB/s"
    elif estimate > seconds_left:
        reason = f"saving would take ~{estimate:.0f} s, {seconds_left:.0f} s left in the stage"
    return {"free_gib": _gib(free), "write_mb_s": round(speed), "save_estimate_s": round(estimate),
            "use_disk": reason is None, "reason": reason}


def sdpa_kernels(device: str, dtype: Any, tiny: bool) -> dict[str, Any]:
    """Which kernel F.scaled_dot_product_attention runs for Z-Image's shapes, with and without the
    boolean padding mask, and which of SDPA's backends accept each case."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, head_dim, seq = (2, 32, 96) if tiny else (30, 128, 4096 + 128)  # 1024²: 4096 image tokens
    generator = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(2, heads, seq, head_dim, device=device, dtype=dtype, generator=generator)
               for _ in range(3))
    mask = torch.ones(2, 1, 1, seq, dtype=torch.bool, device=device)
    mask[1, ..., seq // 2 :] = False
    out: dict[str, Any] = {}
    for case, attn_mask in (("no_mask", None), ("padding_mask", mask)):
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        _sync()
        with torch.profiler.profile(activities=activities) as prof:
            F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            _sync()
        names = sorted({e.key for e in prof.key_averages()
                        if any(w in e.key.lower() for w in ("attention", "flash", "cudnn", "fmha",
                                                              "efficient", "sdpa"))})
        accepted = {}
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                        SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
            try:
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
                    _sync()
                accepted[backend.name] = "ok"
            except RuntimeError as exc:
                accepted[backend.name] = _why(exc)[:160]
        out[case] = {"ops_and_kernels": names[:12], "backends": accepted}
    return out


def vae_ab(pipe: Any, latents: Any, device: str, dtype: Any, run: Run) -> dict[str, Any]:
    """VAE decode time and output, contiguous vs channels-last, one image."""
    import torch

    from zengine.fast import relative_error

    vae = pipe.vae
    z = (latents.to(device, dtype) / vae.config.scaling_factor) + vae.config.shift_factor
    result: dict[str, Any] = {}
    outputs = {}
    for layout in (torch.contiguous_format, torch.channels_last):
        name = "channels_last" if layout is torch.channels_last else "contiguous"
        vae.to(memory_format=layout)
        zz = z.contiguous(memory_format=layout)
        seconds = []
        with torch.inference_mode():
            for i in range(4):  # 1 warm-up + 3 timed
                start = time.perf_counter()
                image = vae.decode(zz, return_dict=False)[0]
                _sync()
                if i:
                    seconds.append(time.perf_counter() - start)
                run.check(0.0, "the VAE A/B")
        outputs[name] = image.float().cpu()
        result[f"{name}_s"] = round(statistics.median(seconds), 4)
    vae.to(memory_format=torch.channels_last)  # the engine's setting, restored
    error = relative_error(outputs["channels_last"], outputs["contiguous"])
    result["relative_l2"] = None if error is None else float(f"{error:.3g}")
    result["faster"] = min(("contiguous", "channels_last"), key=lambda n: result[f"{n}_s"])
    return result


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """diffusers warns about casting with `.to(dtype)` once per model built: not news here."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def _graphs(dynamo_utils: Any) -> int:
    return int(dynamo_utils.counters["stats"].get("unique_graphs", 0))


def _counters(dynamo_utils: Any) -> dict[str, Any]:
    return {group: dict(values) for group, values in dynamo_utils.counters.items()
            if group in ("stats", "frames", "recompiles", "graph_break")}


def _recompile_limit() -> int | None:
    import torch._dynamo.config as config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            return int(getattr(config, name))
    return None


# --------------------------------------------------------------------------- summary


def summarize(results: dict[str, Any], tiny: bool, size: int) -> list[dict[str, Any]]:
    """One row per way of running: s/image, images/s, TFLOP/s and x floor (full size, 1024²)."""
    stages = results["stages"]
    rows = []
    wanted = (("plain, eager", "plain_b1", "pipeline", "plain_b1"),
              ("plain, eager", "plain_b4", "pipeline", "plain_b4"),
              ("fast, eager", "fast_eager", "engine_b1", "fast_eager"),
              ("fast, eager", "fast_eager", "engine_b4", "fast_eager"),
              ("fast, compiled", "compile", "engine_b1", "compile"),
              ("fast, compiled", "compile", "engine_b4", "compile"),
              ("fp8, eager", "fp8", "eager_b1", "fp8"),
              ("fp8, compiled", "fp8", "compiled_b1", "fp8"),
              ("fp8, compiled", "fp8", "compiled_b4", "fp8"))
    for path, stage, key, _ in wanted:
        rate = stages.get(stage, {}).get(key)
        if not isinstance(rate, dict):
            continue
        row = {"path": path, "batch": rate["batch"], "s_per_image": rate["s_per_image"],
               "images_per_s": rate["images_per_s"]}
        if not tiny and size == 1024:
            row["tflop_s"] = round(TFLOP_PER_IMAGE / rate["s_per_image"], 1)
            row["x_floor"] = round(rate["s_per_image"] / FLOOR_S_PER_IMAGE, 2)
        error = None
        if stage == "compile":
            error = stages[stage].get(f"vs_eager_{key[-2:]}", {}).get("relative_l2")
        elif stage == "fp8":
            tag = key.split("_")[0]
            error = stages[stage].get(f"{tag}_vs_bf16_eager_{key[-2:]}", {}).get("relative_l2")
        row["rel_l2_vs_eager"] = error
        rows.append(row)
    return rows


def print_table(results: dict[str, Any]) -> None:
    rows = results.get("table", [])
    stages = results["stages"]
    machine = stages.get("versions", {}).get("machine", {})
    settings = results.get("settings", {})
    cold = stages.get("cold_start", {})
    comp = stages.get("compile", {})
    lines = [f"{settings.get('model', '?')} model, {settings.get('size')}² x {settings.get('steps')} steps "
             f"on {machine.get('device_name', '?')} "
             f"(torch {machine.get('torch') or stages.get('process', {}).get('torch', '?')}); "
             f"floor {FLOOR_S_PER_IMAGE} s/image at 1024² ({TFLOP_PER_IMAGE:.0f} TFLOP)"]
    header = ("path", "batch", "s/image", "images/s", "TFLOP/s", "x floor", "rel L2 vs eager")
    lines.append(" | ".join(header))
    for r in rows:
        lines.append(" | ".join(str(x) for x in (
            r["path"], r["batch"], r["s_per_image"], r["images_per_s"], r.get("tflop_s", "-"),
            r.get("x_floor", "-"), "-" if r["rel_l2_vs_eager"] is None else r["rel_l2_vs_eager"])))
    lines.append(f"cold start: {cold.get('total_s', '-')} s (import {cold.get('import_s', '-')}, "
                 f"load {cold.get('from_pretrained_s', '-')} + to device {cold.get('to_device_s', '-')}, "
                 f"first image {cold.get('first_image_s', '-')}); compile at load "
                 f"{comp.get('load_compile_s', '-')} s, first b1 {comp.get('first_request_b1_s', '-')} s, "
                 f"first b4 {comp.get('first_request_b4_s', '-')} s; peak "
                 f"{stages.get('memory', {}).get('peak_b4_gib', '-')} GiB at batch 4")
    status = ", ".join(f"{name} {s.get('status', '?').split(':')[0]}" for name, s in stages.items()
                       if name != "process")
    lines.append(f"stages: {status}")
    print("\n" + "\n".join(lines), flush=True)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="tiny model on the CPU (CUDA-only stages are skipped, with the reason)")
    parser.add_argument("--out", type=Path, help="write the JSON results here (rewritten atomically)")
    parser.add_argument("--model-dir", type=Path,
                        help="where the model is saved once (default: $ZPIPE_CACHE for tiny, "
                        "/tmp/zpipe-models for the full size)")
    parser.add_argument("--size", type=int, help="image side (default 1024; tiny 128)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 8; tiny 2)")
    parser.add_argument("--repeats", type=int, help="timed batch-1 runs (default 5; tiny 2)")
    parser.add_argument("--repeats-batch", type=int, help="timed batch-4 runs (default 3; tiny 1)")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode for the regional compile (default 'default')")
    parser.add_argument("--compile-backend",
                        help="'inductor' (default on CUDA) or 'eager' (trace only; tiny's default)")
    parser.add_argument("--attention", help="attention backends to try, comma-separated "
                        "(default: zengine.fast.ATTENTION_ORDER)")
    parser.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--budget-s", type=float, help="stop starting stages after this (default "
                        "500; tiny 240)")
    parser.add_argument("--hard-s", type=float, help="the watchdog exits here (default budget + 40)")
    parser.add_argument("--evict-imports", action="store_true",
                        help="drop torch/diffusers/transformers files from the page cache before "
                        "importing them (a cold import)")
    parser.add_argument("--min-disk-mb-s", type=float, default=200.0,
                        help="below this write speed the model stays in memory (no cold start)")
    args = parser.parse_args(argv)
    defaults = ({"size": 128, "steps": 2, "repeats": 2, "repeats_batch": 1, "budget_s": 240.0,
                 "compile_backend": "eager"} if args.tiny else
                {"size": 1024, "steps": 8, "repeats": 5, "repeats_batch": 3, "budget_s": 500.0,
                 "compile_backend": "inductor"})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.hard_s is None:
        args.hard_s = args.budget_s + 40.0
    unknown = set((args.stages or "").split(",")) - set(STAGES) - {""}
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")
    return args


# Stage: (budget s, least s to start it). The full-size estimates on an H200 are guesses until
# the first run; a stage over its budget stops between measurements, the watchdog interrupts it
# if it hangs, and the stages after it still get their turn.
BUDGETS = {"versions": (25, 5), "build": (150, 40), "cold_start": (60, 20), "plain_b1": (30, 10),
           "plain_b4": (40, 15), "memory": (5, 1), "fast_eager": (70, 25), "compile": (170, 60),
           "fp8": (110, 40)}
TINY_BUDGETS = {"versions": (20, 2), "build": (60, 5), "cold_start": (30, 5), "plain_b1": (20, 2),
                "plain_b4": (20, 2), "memory": (5, 1), "fast_eager": (40, 5), "compile": (90, 5),
                "fp8": (20, 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = STARTED if argv is None else time.perf_counter()
    run = Run(args.out, args.budget_s, args.hard_s, started)
    process: dict[str, Any] = {"pid": os.getpid(), "argv": sys.argv[1:] if argv is None else argv}
    if args.evict_imports:
        process["import_page_cache"] = evict_page_cache(
            _package_dirs(("torch", "diffusers", "transformers")), drop_all=not args.tiny)
    start = time.perf_counter()
    import torch

    process.update(import_torch_s=round(time.perf_counter() - start, 2), torch=torch.__version__)
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("the full-size model needs CUDA (20.5 GB of bf16 weights); use --tiny here")
    run.results.update(date=datetime.now(UTC).isoformat(timespec="seconds"),
                       settings={"model": "tiny" if args.tiny else "full-size random weights",
                                 "size": args.size, "steps": args.steps, "repeats": args.repeats,
                                 "repeats_batch": args.repeats_batch, "budget_s": args.budget_s,
                                 "hard_s": args.hard_s, "compile_mode": args.compile_mode,
                                 "compile_backend": args.compile_backend,
                                 "dtype": "float32" if args.tiny else "bfloat16"})
    run.results["stages"]["process"] = process
    run.write()
    run.start_watchdog(grace_s=30.0 if not args.tiny else 15.0)

    bench = Bench(args, run)
    only = set(args.stages.split(",")) if args.stages else set(STAGES)
    budgets = TINY_BUDGETS if args.tiny else BUDGETS
    cuda_only = "needs CUDA (tiny run on the CPU)" if args.tiny else None
    try:
        import torchao  # noqa: F401

        torchao_missing = None
    except ImportError as exc:
        torchao_missing = f"torchao not importable ({_why(exc)}): pip install torchao==0.18.0"
    plan: list[tuple[str, Callable[[], None], Callable[[], str | None]]] = [
        ("versions", bench.versions, lambda: None),
        ("build", bench.build, lambda: None),
        ("cold_start", bench.cold_start,
         lambda: None if (bench.path or bench.built) else "no model (build failed)"),
        ("plain_b1", lambda: bench.plain(1, "plain_b1"), lambda: None if bench.pipe else "no pipeline"),
        ("plain_b4", lambda: bench.plain(4, "plain_b4"), lambda: None if bench.pipe else "no pipeline"),
        ("memory", bench.memory, lambda: None),
        ("fast_eager", bench.fast_eager, lambda: None if bench.pipe else "no pipeline"),
        ("compile", bench.compile, lambda: None if bench.pipe else "no pipeline"),
        ("fp8", bench.fp8,
         lambda: (cuda_only or torchao_missing or (None if bench.pipe else "no pipeline"))),
    ]
    try:
        for name, work, skip in plan:
            if name not in only:
                continue
            if name == "fp8" and torchao_missing is None:
                run.put("fp8", torchao=importlib.metadata.version("torchao"))
            budget, need = budgets[name]
            try:
                run.run_stage(name, budget, work, need_s=need, skip=skip())
            except KeyboardInterrupt:  # the watchdog's, landing just after its stage ended
                if not run.interrupted_by_watchdog:
                    raise
                run.interrupted_by_watchdog = False
                run.put(name, watchdog="interrupt arrived as the stage ended")
    finally:
        run.stop_watchdog()
        with run.lock:
            run.results["table"] = summarize(run.results, args.tiny, args.size)
            run.results["stages"]["table"] = {"status": "ok"}
        run.write()
    print_table(run.results)  # last: the lines a reader of the log sees first
    return run.results


if __name__ == "__main__":
    main()
