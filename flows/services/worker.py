"""`zpipe worker`: a resident GPU task worker that keeps the engine loaded across flow runs."""

from __future__ import annotations

import threading
from typing import Any

from prefect import Task
from prefect.logging import get_logger
from prefect.settings import PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings
from prefect.task_worker import serve

from flows.comment import reply_on_worker
from tasks.comments.reply import warm_up_replies
from tasks.config.schema import Settings
from tasks.core.errors import ZpipeError
from tasks.generation.engine import get_engine
from tasks.orchestration.handover import generate_on_worker, load_worker_policy, make_on_worker
from tasks.publish.batch import SpoolRecovery, recover_spool
from tasks.store.objects import store_at
from tasks.store.spool import Spool

WORK_AT_ONCE = 2  # pieces of work a worker holds: one on the GPU, one getting ready

logger = get_logger("zpipe.worker")  # beside Prefect's own lines in the worker's log


def run_worker(settings: Settings, preload: bool = True) -> None:
    """Load the engine once, then serve generation batches and fast-path comment replies
    (`flows.comment.reply_on_worker`), one on the GPU at a time, until stopped.

    One worker per GPU: nothing outside this process guards its GPU (`THIS_GPU` inside it).
    """
    policy = load_worker_policy()  # a bad ZPIPE_WORKER_* value stops the worker here, not mid-batch
    if preload:  # pay the weight load (and the replies' dictionaries) at start-up, not on a comment
        get_engine(settings.engine).load()
        warm_up_replies(settings.qa)
    # Two at a time: while one batch generates, the next one's bookkeeping (run state, handed
    # over?, heartbeat artifact, parameters read) is done, and the last one's result is stored
    # and reported; the engine's lock and `THIS_GPU` keep the GPU to one batch. One at a time
    # left the GPU idle 0.2-0.7 s between batches (bench/RESULTS.md, scale).
    # Fast-path replies log from a task run with no flow run: Prefect keeps those lines local
    # (the task run is their record) and would warn once per line
    served = (make_on_worker, generate_on_worker, reply_on_worker)
    drain = SpoolDrain(policy.spool_drain_s)
    drain.start()
    try:
        with temporary_settings({PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}):
            start_prefect_services(served)
            serve(*served, limit=WORK_AT_ONCE)
    finally:
        drain.stop()


class SpoolDrain:
    """Uploads, every `every_s` (and at start), what this machine's spools hold: images a
    worker published while S3 refused them past the upload retries. A campaign uploads its
    spool's leftovers at its start (`recover-spool`), but on the machine its flow runs on; a
    GPU worker on a machine of its own would keep them until a flow happened to run there.
    A store still down is tried again next time; the images are never made twice (a rerun
    of the week finds them in the store once uploaded, and a worker publishing one again
    skips what the store holds)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="spool-drain", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def drain(self) -> dict[str, SpoolRecovery | str]:
        """One pass over every spool: its recovery, or why it failed (store URL -> outcome)."""
        outcomes: dict[str, SpoolRecovery | str] = {}
        for spool in Spool.all_under():
            if not spool.committed():
                continue
            try:
                outcome: SpoolRecovery | str = recover_spool(store_at(spool.store_url), spool)
            except ZpipeError as exc:  # S3 still down, a bad URL, a full disk: next time
                outcome = f"{type(exc).__name__}: {exc}"
                logger.warning("spool %s: not uploaded yet (%s); trying again in %g s", spool.dir,
                               outcome, self.every_s)
            else:
                for line in outcome.discarded:
                    logger.warning(line)
                if outcome.uploaded or outcome.already_stored:
                    logger.info("spool %s: %d images uploaded to %s (%d were already there)", spool.dir,
                                len(outcome.uploaded), spool.store_url, len(outcome.already_stored))
            outcomes[spool.store_url] = outcome
        return outcomes

    def _run(self) -> None:
        while True:
            try:
                self.drain()
            except Exception:  # a pass that failed must not end the worker's drain for good
                logger.exception("spool drain failed; trying again in %g s", self.every_s)
            if self._stop.wait(self.every_s):
                return


def start_prefect_services(served: tuple[Task[..., Any], ...]) -> None:
    """Start now, from this thread, the Prefect services a task run starts on first use (the
    events and API-log workers, and one concurrency-slot service per set of task tags).

    Prefect 3.9.1 creates each such service under one lock shared by all of them
    (`_QueueServiceBase._instance_lock`) and, holding it, waits for the service to start on
    Prefect's global event loop. The task worker's receiving code runs on that loop and emits
    an event for every run it receives, which takes the same lock: a worker that received its
    second run while its first one started the `tag:zpipe-generation` slot service hung for
    good with both runs (py-spy, 2026-12-08: the loop in `EventsWorker.instance`, the run in
    `_new_instance`); the flow handed the batches over again after 60 s. Started here, before
    the worker serves anything, no run has to create one.
    """
    from prefect.concurrency.services import ConcurrencySlotAcquisitionWithLeaseService
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    EventsWorker.instance()
    APILogWorker.instance()
    for tags in {frozenset(f"tag:{tag}" for tag in task.tags) for task in served if task.tags}:
        ConcurrencySlotAcquisitionWithLeaseService.instance(tags)
