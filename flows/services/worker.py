"""`zpipe worker`: a resident GPU task worker that keeps the engine loaded across flow runs."""

from __future__ import annotations

from prefect.settings import PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings
from prefect.task_worker import serve

from flows.comment import reply_on_worker
from tasks.comments.reply import warm_up_replies
from tasks.config.schema import Settings
from tasks.generation.engine import get_engine
from tasks.orchestration.handover import generate_on_worker, load_worker_policy, make_on_worker

WORK_AT_ONCE = 2  # pieces of work a worker holds: one on the GPU, one getting ready


def run_worker(settings: Settings, preload: bool = True) -> None:
    """Load the engine once, then serve generation batches and fast-path comment replies
    (`flows.comment.reply_on_worker`), one on the GPU at a time, until stopped.

    One worker per GPU: nothing outside this process guards its GPU (`THIS_GPU` inside it).
    """
    load_worker_policy()  # a bad ZPIPE_WORKER_* value stops the worker here, not mid-batch
    if preload:  # pay the weight load (and the replies' dictionaries) at start-up, not on a comment
        get_engine(settings.engine).load()
        warm_up_replies(settings.qa)
    # Two at a time: while one batch generates, the next one's bookkeeping (run state, handed
    # over?, heartbeat artifact, parameters read) is done, and the last one's result is stored
    # and reported; the engine's lock and `THIS_GPU` keep the GPU to one batch. One at a time
    # left the GPU idle 0.2-0.7 s between batches (bench/RESULTS.md, scale).
    # Fast-path replies log from a task run with no flow run: Prefect keeps those lines local
    # (the task run is their record) and would warn once per line
    with temporary_settings({PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}):
        serve(make_on_worker, generate_on_worker, reply_on_worker, limit=WORK_AT_ONCE)
