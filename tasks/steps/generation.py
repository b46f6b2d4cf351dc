"""Generation steps: a batch on this process's engine, or handed to a resident GPU worker."""

from __future__ import annotations

from prefect import task

from tasks.config.schema import EngineSettings
from tasks.content.plan import ImageJob
from tasks.generation.engine import generate_images
from tasks.orchestration.handover import _batch_name, generate_on_worker
from tasks.steps.policies import ENGINE_RETRY, NEVER_CACHE
from zengine import GenerationResult

__all__ = ["generate_batch", "generate_on_worker"]


@task(name="generate-batch", task_run_name=_batch_name, cache_policy=NEVER_CACHE,
      persist_result=False, **ENGINE_RETRY)
def generate_batch(jobs: list[ImageJob], settings: EngineSettings) -> list[GenerationResult]:
    """Generate a batch of images on this process's engine.

    Its images go straight to the publishing task in the same process, so they are never
    written to result storage (pickling every batch's PNGs cost CPU the generator needs). No
    `timeout_seconds`: in a worker thread a timeout cannot stop a running pipeline call.
    """
    return generate_images(jobs, settings)
