"""Generation stage: image jobs -> PNG bytes through the Turbo engine, one engine per process."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import EngineSettings
from tasks.plan import ImageJob
from zengine import GenerationRequest, GenerationResult, ModelSource, TurboEngine


@functools.lru_cache(maxsize=2)
def get_engine(settings: EngineSettings) -> TurboEngine:
    """The process's engine for these settings: weights load once, on first use."""
    source = ModelSource(model=settings.model, revision=settings.revision)
    device = None if settings.device == "auto" else settings.device
    return TurboEngine(source, device=device, max_batch=settings.max_batch)


def to_request(job: ImageJob) -> GenerationRequest:
    """The engine request for a job (prompt, size, seed, Turbo steps)."""
    return GenerationRequest(prompt=job.prompt.text, width=job.width, height=job.height,
                             seed=job.seed, steps=job.steps)


def generate_images(
    jobs: Sequence[ImageJob],
    settings: EngineSettings,
    on_step: Callable[[int, int], None] | None = None,
) -> list[GenerationResult]:
    """Generate one image per job, in job order."""
    engine = get_engine(settings)
    return engine.generate([to_request(job) for job in jobs], on_step=on_step)


def _batch_name() -> str:
    from prefect.runtime import task_run

    jobs = task_run.parameters.get("jobs", [])
    first = jobs[0] if jobs else None
    if first is None:
        return "generate-empty"
    return f"generate {first.weekday}-{first.format}" + (f" +{len(jobs) - 1}" if len(jobs) > 1 else "")


@task(name="generate-batch", task_run_name=_batch_name, cache_policy=NO_CACHE,
      timeout_seconds=1800, retries=1, retry_delay_seconds=5)
def generate_batch(jobs: list[ImageJob], settings: EngineSettings) -> list[GenerationResult]:
    """Generate a batch of images on this process's resident engine."""
    return generate_images(jobs, settings)
