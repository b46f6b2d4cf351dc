"""Generation steps: a batch on this process's engine, or handed to a resident GPU worker."""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from prefect import task
from prefect.futures import PrefectFuture

from tasks.config.schema import BrandConfig, EngineSettings
from tasks.content.plan import ImageJob
from tasks.generation.engine import generate_images
from tasks.orchestration.handoff import TaskRunHandoff
from tasks.orchestration.handover import MadeOnWorker, _batch_name, generate_on_worker, make_on_worker
from tasks.qa import QAAttempt, QASettings
from tasks.steps.policies import ENGINE_RETRY, NEVER_CACHE
from zengine import GenerationResult

__all__ = ["chunks", "generate_batch", "generate_batches", "generate_on_worker", "handovers",
           "make_on_workers"]

# Batches handed to resident workers at once: each hand-over is a server round trip (a task
# run created, its parameters stored), 0.1-0.5 s on a busy SQLite server; one after another
# they fed 8 workers less than a third of what they could take (bench/RESULTS.md, scale).
HANDOVER_THREADS = 8
# A hand-over carries up to this many GPU batches (the worker runs them one after another):
# every hand-over costs the flow's process CPU (a task run created, a result read back, a
# publishing task run), and that one process fed 8 workers only a third of what they could take
HANDOVER_MAX_GPU_BATCHES = 4
ROUNDS_PER_WORKER = 8  # ...but enough hand-overs for each worker to take about this many
# The last hand-overs are one GPU batch each, about this many per worker, so the workers finish
# within about one batch of each other: with every hand-over 3 batches, 1,000 images on 8
# workers at 0.6 s/image ended over 7 s apart (busy 94.3 % between first and last batch)
TAIL_ROUNDS = 2


def handovers(jobs: list[ImageJob], max_batch: int) -> list[list[ImageJob]]:
    """`jobs` cut into hand-overs to resident workers: whole GPU batches, as many per hand-over
    as keeps about `ROUNDS_PER_WORKER` hand-overs per connected worker (at most
    `HANDOVER_MAX_GPU_BATCHES`), the last `TAIL_ROUNDS` per worker one GPU batch each."""
    from prefect.client.orchestration import get_client

    from tasks.orchestration.handover import generation_workers

    with get_client(sync_client=True) as client:
        workers = max(1, len(generation_workers(client)))
    gpu_batches = len(jobs) // (max_batch * workers * ROUNDS_PER_WORKER)
    size = max_batch * min(HANDOVER_MAX_GPU_BATCHES, max(1, gpu_batches))
    tail = min(len(jobs), max_batch * workers * TAIL_ROUNDS) if size > max_batch else 0
    return chunks(jobs[:len(jobs) - tail], size) + chunks(jobs[len(jobs) - tail:], max_batch)


def chunks(jobs: list[ImageJob], size: int) -> list[list[ImageJob]]:
    """`jobs` in order, `size` at a time (the last chunk may be shorter)."""
    return [jobs[i:i + size] for i in range(0, len(jobs), size)]


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
        yield from _on_workers(batches, generate_on_worker, engine, timeout=timeout)
        return
    in_flight: deque[tuple[list[ImageJob], PrefectFuture]] = deque()
    queue = deque(batches)
    while queue or in_flight:
        while queue and len(in_flight) < lookahead:
            batch = queue.popleft()
            in_flight.append((batch, generate_batch.submit(batch, engine)))
        batch, future = in_flight.popleft()
        yield batch, future.result(timeout=timeout)


def _on_workers(batches: list[list[ImageJob]], task: Any, *args: Any, timeout: float | None = None,
                ) -> Iterator[tuple[list[ImageJob], Any]]:
    """Hand every batch to `task` on resident workers from `HANDOVER_THREADS` threads, in
    order (the server's queue is first in, first out), and wait for them in that order."""
    pool = ThreadPoolExecutor(HANDOVER_THREADS, thread_name_prefix="hand-over")
    handoff = TaskRunHandoff(task)  # one API client for every hand-over (and hand-over again)
    try:
        # each hand-over in a copy of this context: the flow run it belongs to lives there
        handing: list[tuple[list[ImageJob], Future]] = [
            (batch, pool.submit(contextvars.copy_context().run, task.hand_over, handoff, batch, *args))
            for batch in batches]
        for batch, handed in handing:
            yield batch, handed.result().result(timeout=timeout)
    finally:  # the flow stopped early: batches not handed over yet never are
        pool.shutdown(wait=True, cancel_futures=True)
        handoff.close()


def make_on_workers(batches: list[list[ImageJob]], engine: EngineSettings, store_url: str,
                    brand: BrandConfig, qa: QASettings | None = None,
                    attempts: dict[str, list[QAAttempt]] | None = None,
                    ) -> Iterator[tuple[list[ImageJob], MadeOnWorker]]:
    """Batches generated *and published* on resident workers, in order (see `make_on_worker`)."""
    yield from _on_workers(batches, make_on_worker, engine, store_url, brand, qa, attempts)
