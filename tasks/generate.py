"""Generation stage: image jobs -> PNG bytes through the Turbo engine, one engine per process.

Two ways to run it, same code:
- `generate_batch`: in the flow's own process (a plain `zpipe run`, no server needed);
- `generate_on_worker`: handed to a resident task worker (`zpipe worker`, one per GPU) with
  `.delay()`. The worker keeps the engine loaded across flow runs and holds the global
  concurrency limit `gpu` while it generates; its results persist to result storage so the
  flow's process can read them back.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from tasks.config import EngineSettings
from tasks.plan import ImageJob
from zengine import GenerationRequest, GenerationResult, LoraSpec, ModelSource, TurboEngine

GPU_CONCURRENCY_LIMIT = "gpu"  # one slot per GPU; `zpipe worker` makes sure it exists


_ENGINES_LOCK = threading.Lock()  # batches run in several threads: exactly one engine each


def get_engine(settings: EngineSettings) -> TurboEngine:
    """The process's engine for these settings: weights load once, on first use.

    Thread-safe: two batches asking at once get the same engine, whose own lock then
    serializes the load (concurrent `from_pretrained` calls are not thread-safe).
    """
    with _ENGINES_LOCK:
        return _engine_for(settings)


@functools.lru_cache(maxsize=2)
def _engine_for(settings: EngineSettings) -> TurboEngine:
    source = ModelSource(model=settings.model, revision=settings.revision)
    device = None if settings.device == "auto" else settings.device
    return TurboEngine(source, device=device, max_batch=settings.max_batch)


def to_request(job: ImageJob) -> GenerationRequest:
    """The engine request for a job (prompt, size, seed, Turbo steps)."""
    return GenerationRequest(prompt=job.prompt.text, width=job.width, height=job.height,
                             seed=job.seed, steps=job.steps,
                             loras=tuple(LoraSpec(path, weight) for path, weight in job.loras))


def generate_images(
    jobs: Sequence[ImageJob],
    settings: EngineSettings,
    on_step: Callable[[int, int], None] | None = None,
) -> list[GenerationResult]:
    """Generate one image per job, in job order; timings say which process and load made it."""
    engine = get_engine(settings)
    results = engine.generate([to_request(job) for job in jobs], on_step=on_step)
    for result in results:
        result.timings.update(engine_pid=os.getpid(), engine_loads=engine.load_count,
                              load_s=round(engine.load_s or 0.0, 3))
    return results


def _batch_name() -> str:
    from prefect.runtime import task_run

    jobs = task_run.parameters.get("jobs", [])
    if not jobs:
        return "generate-empty"
    first = jobs[0]
    return f"generate {first.weekday}-{first.format}" + (f" +{len(jobs) - 1}" if len(jobs) > 1 else "")


@task(name="generate-batch", task_run_name=_batch_name, cache_policy=NO_CACHE,
      timeout_seconds=1800, retries=1, retry_delay_seconds=5)
def generate_batch(jobs: list[ImageJob], settings: EngineSettings) -> list[GenerationResult]:
    """Generate a batch of images on this process's engine."""
    return generate_images(jobs, settings)


@task(name="generate-batch-gpu", task_run_name=_batch_name, cache_policy=NO_CACHE,
      timeout_seconds=1800, retries=1, retry_delay_seconds=5, persist_result=True)
def generate_on_worker(jobs: list[ImageJob], settings: EngineSettings) -> list[GenerationResult]:
    """Generate a batch on a resident GPU task worker, holding one `gpu` concurrency slot."""
    with concurrency(GPU_CONCURRENCY_LIMIT, occupy=1, strict=True):
        return generate_images(jobs, settings)
