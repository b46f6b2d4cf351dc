"""Generation steps: a batch on this process's engine, or handed to a resident GPU worker."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from prefect import task
from prefect.futures import PrefectFuture

from tasks.config.schema import EngineSettings
from tasks.content.plan import ImageJob
from tasks.generation.engine import generate_images
from tasks.orchestration.handover import _batch_name, generate_on_worker
from tasks.steps.policies import ENGINE_RETRY, NEVER_CACHE
from zengine import GenerationResult

__all__ = ["generate_batch", "generate_batches", "generate_on_worker"]


@task(name="generate-batch", task_run_name=_batch_name, cache_policy=NEVER_CACHE,
      persist_result=False, **ENGINE_RETRY)
def generate_batch(jobs: list[ImageJob], settings: EngineSettings) -> list[GenerationResult]:
    """Generate a batch of images on this process's engine.

    Its images go straight to the publishing task in the same process, so they are never
    written to result storage (pickling every batch's PNGs cost CPU the generator needs). No
    `timeout_seconds`: in a worker thread a timeout cannot stop a running pipeline call.
    """
    return generate_images(jobs, settings)


def generate_batches(batches: list[list[ImageJob]], engine: EngineSettings, on_workers: bool,
                     lookahead: int = 2, timeout: float | None = None,
                     ) -> Iterator[tuple[list[ImageJob], list[GenerationResult]]]:
    """Batches with their images, in order, keeping the GPU fed.

    On resident task workers every batch is handed over at once (N workers take them in
    parallel). In-process, one batch runs while the next already waits on the engine, so the
    GPU starts it the moment the current one ends, whatever the flow thread is doing
    (`lookahead` batches in flight). The one place a flow chooses local or workers; a batch
    not done within `timeout` s raises.
    """
    if on_workers:
        futures = [(batch, generate_on_worker.delay(batch, engine)) for batch in batches]
        for batch, future in futures:
            yield batch, future.result(timeout=timeout)
        return
    in_flight: deque[tuple[list[ImageJob], PrefectFuture]] = deque()
    queue = deque(batches)
    while queue or in_flight:
        while queue and len(in_flight) < lookahead:
            batch = queue.popleft()
            in_flight.append((batch, generate_batch.submit(batch, engine)))
        batch, future = in_flight.popleft()
        yield batch, future.result(timeout=timeout)
