"""`zpipe worker`: a resident GPU task worker that keeps the engine loaded across flow runs."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.exceptions import ObjectNotFound
from prefect.task_worker import serve

from flows.comment import reply_on_worker
from tasks.config.schema import Settings
from tasks.generation.engine import get_engine
from tasks.orchestration.handover import (
    GPU_CONCURRENCY_LIMIT,
    generate_on_worker,
    load_worker_policy,
    reclaim_gpu_slots,
)


def ensure_gpu_limit(slots: int) -> None:
    """Make sure the global `gpu` concurrency limit exists with at least `slots` slots."""
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(GPU_CONCURRENCY_LIMIT)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=GPU_CONCURRENCY_LIMIT, limit=slots))
            return
        if existing.limit < slots:
            client.update_global_concurrency_limit(
                GPU_CONCURRENCY_LIMIT, GlobalConcurrencyLimitUpdate(limit=slots))


def run_worker(settings: Settings, gpu_slots: int = 1, preload: bool = True) -> None:
    """Load the engine once, then serve generation batches and fast-path comment replies
    (`flows.comment.reply_on_worker`), one at a time, until stopped.

    A worker restarted after a crash first frees the `gpu` slot its dead predecessor held
    (when no other worker is up), so it does not wait out the old lease.
    """
    load_worker_policy()  # a bad ZPIPE_WORKER_* value stops the worker here, not mid-batch
    ensure_gpu_limit(gpu_slots)
    reclaim_gpu_slots()
    if preload:  # pay the weight load at start-up, not on the first comment
        get_engine(settings.engine).load()
    serve(generate_on_worker, reply_on_worker, limit=1)  # limit=1: one piece of work at a time per GPU
