"""Hand-over of generation batches to resident task workers (the engine use is tasks.generation).

Three ways to run generation, same code:
- `generate_batch` (tasks.steps.generation): in the flow's own process (a plain `zpipe run`,
  no server needed), published there too;
- `make_on_worker`: handed to a resident task worker (`zpipe worker`, one per GPU) with
  `WorkerTask.hand_over` (a deferred task run as `.delay()` makes one, through one API client
  for the campaign, `tasks.orchestration.handoff`); the worker generates the batch, then
  publishes it (label, QA gate, spool, upload, read back) while its next batch generates, and
  returns a small `MadeOnWorker` record through result storage. Campaigns with `generation: workers` use it;
- `generate_on_worker`: the same hand-over returning the images themselves (no publishing).
The worker keeps the engine loaded across flow runs and runs one batch at a time on its GPU.

Handing work to workers must survive a worker or server that dies. Prefect's task-run queue
lives in the server's memory: it forgets a run once a worker acknowledged it (a worker killed
mid-batch leaves its runs RUNNING for ever: the one generating, the one waiting for the GPU
and the one it had prefetched) and a server
restart forgets every queued run. So `generate_on_worker.delay()` returns a `HandedOver`
future: the worker beats a progress artifact on the run while it generates, and the flow's
`result()` hands a batch over again (a new task run, the old one marked Crashed) when the
beat stops, the run crashed, or a later batch started while this one still waits. Handing
over is safe: generation writes nothing to the store, publishing (here or on a worker) is
keyed by content and skips an image whose sidecar exists, and a worker skips a run that was
already handed over.
"""

from __future__ import annotations

import contextvars
import copy
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import httpx
from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import StateType, TaskRun
from prefect.exceptions import CrashedRun, MissingContextError
from prefect.futures import PrefectDistributedFuture
from prefect.states import Cancelled, Crashed, State
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from tasks.config.schema import BrandConfig, EngineSettings
from tasks.content.plan import ImageJob
from tasks.core.errors import ConfigError, ZpipeError
from tasks.core.settings import Environment, env_raw
from tasks.generation.engine import generate_images
from tasks.orchestration.handoff import TaskRunHandoff
from tasks.publish.batch import BatchPublished, publish_batch, upload_patience_s
from tasks.publish.contact_sheet import StoredLook, look_at
from tasks.qa import QAAttempt, QASettings
from tasks.store.objects import store_at
from tasks.store.spool import Spool
from zengine import (
    GenerationResult,
)

# This process's GPU: a worker holds two pieces of work at once, one batch generates at a time.
# Only this lock guards it: one worker per GPU is the deployment's rule (infra/check_infra.py).
# A global `gpu` concurrency slot taken per batch cost 0.1-0.13 s of the GPU's time per batch on
# a quiet SQLite server (acquire + release), and a slot released by one batch sometimes stayed
# taken for the next: the worker then waited out its 30 s timeout.
THIS_GPU = threading.Lock()
GENERATION_TAG = "zpipe-generation"  # on worker batches: a flow sees which started after its own
HEARTBEAT = "zpipe heartbeat"  # starts the description of a batch's heartbeat artifact
HANDED_OVER = "handed over again"  # starts the message of a run whose batch went to another run


def _batch_name() -> str:
    from prefect.runtime import task_run

    return _jobs_label(task_run.parameters.get("jobs", []))


class WorkerLost(ZpipeError):
    """A batch was handed to task workers again and again and no worker finished it."""


class ServerLost(ZpipeError):
    """The Prefect API stayed unreachable while a flow waited for a batch."""


def _worker_field(name: str) -> Any:
    """The declaration of `ZPIPE_WORKER_<NAME>` (default, bounds, reason), for WorkerPolicy."""
    return copy.deepcopy(Environment.model_fields[f"worker_{name}"])


class WorkerPolicy(BaseModel):
    """Timing of batches on resident task workers, from `ZPIPE_WORKER_*` environment variables.

    Both sides read it: a worker beats every `heartbeat_s` while it generates; a waiting flow
    looks every `poll_s` and hands a batch over again when its beat has been silent for
    `stale_s`, or when it stays queued for `pickup_s` while a later batch started or the
    workers sat idle. Each field is the `worker_<name>` variable of tasks.core.settings
    (type, bounds, default and reason declared there once).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    heartbeat_s: float = _worker_field("heartbeat_s")
    stale_s: float = _worker_field("stale_s")
    pickup_s: float = _worker_field("pickup_s")
    poll_s: float = _worker_field("poll_s")
    max_handovers: int = _worker_field("max_handovers")
    server_wait_s: float = _worker_field("server_wait_s")
    spool_drain_s: float = _worker_field("spool_drain_s")

    @model_validator(mode="after")
    def _stale_spans_beats(self) -> WorkerPolicy:
        if self.stale_s < 3 * self.heartbeat_s:
            raise ValueError(f"ZPIPE_WORKER_STALE_S ({self.stale_s:g}) must be at least 3 x "
                             f"ZPIPE_WORKER_HEARTBEAT_S ({self.heartbeat_s:g}), or one late beat "
                             "hands a live batch over")
        return self


def load_worker_policy() -> WorkerPolicy:
    """The policy from the environment; a bad value is a ConfigError naming the variable."""
    values = {name: raw.strip() for name in WorkerPolicy.model_fields
              if (raw := env_raw(f"worker_{name}")) is not None}
    try:
        return WorkerPolicy.model_validate(values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = f"ZPIPE_WORKER_{str(error['loc'][0]).upper()}" if error["loc"] else "ZPIPE_WORKER_*"
        raise ConfigError("environment", field, error["msg"].removeprefix("Value error, "),
                          error.get("input") if error["loc"] else None) from None


def _logger() -> Any:
    from prefect.logging import get_logger, get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("zpipe.generate")


# -- on the worker: beat while generating, skip runs already handed over ---------------


class Heartbeat:
    """A progress artifact on the running task run, updated every `interval_s` from a thread.

    The flow reads it to tell a slow batch from a dead worker: the beat goes on while the
    model runs (steps can take seconds), and stops with the process.
    """

    def __init__(self, label: str, interval_s: float):
        self.label = label
        self.interval_s = interval_s
        self.progress = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.artifact_id: UUID | None = None

    def on_step(self, done: int, total: int) -> None:
        """The engine's step callback: the artifact shows the share of denoising steps done."""
        self.progress = 100.0 * done / max(total, 1)

    def _text(self, beat: int) -> str:
        return f"{HEARTBEAT}: {self.label} on {socket.gethostname()} pid {os.getpid()}, beat {beat}"

    def _beat(self) -> None:
        from prefect.artifacts import update_progress_artifact

        beat = 0
        while not self._stop.wait(self.interval_s):
            beat += 1
            try:
                update_progress_artifact(self.artifact_id, self.progress, description=self._text(beat))
            except (httpx.HTTPError, OSError) as exc:  # server restarting: keep generating
                _logger().warning("heartbeat %d of %s not sent: %s", beat, self.label, exc)

    def __enter__(self) -> Heartbeat:
        from prefect.artifacts import create_progress_artifact

        self.artifact_id = create_progress_artifact(0.0, description=self._text(0))
        context = contextvars.copy_context()  # Prefect's settings and run context live in it
        self._thread = threading.Thread(target=context.run, args=(self._beat,), daemon=True,
                                        name=f"heartbeat {self.label}")
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 10)


def generation_workers(client: SyncPrefectClient) -> list[dict[str, Any]]:
    """The task workers the server sees subscribed to generation batches (`identifier` is
    `<host>-<pid>`); a killed worker drops out within about a second."""
    return client.request("POST", "/task_workers/filter", json={
        "task_worker_filter": {"task_keys": [generate_on_worker.task_key, make_on_worker.task_key]}}).json()


def _handed_over(client: SyncPrefectClient, task_run_id: UUID) -> str | None:
    """The message that handed this run's batch to another run, if a flow did."""
    for state in client.read_task_run_states(task_run_id):
        if state.type == StateType.CRASHED and (state.message or "").startswith(HANDED_OVER):
            return state.message
    return None


def _skip_if_handed_over() -> State | None:
    """Cancelled, if a flow gave up on this worker run and queued its batch again (so it is not
    made twice); None to go on."""
    from prefect.runtime import task_run

    with get_client(sync_client=True) as client:
        handed_over = _handed_over(client, UUID(task_run.id))
    return Cancelled(message=f"not generated: {handed_over}") if handed_over else None


def _generate_on_worker(jobs: list[ImageJob], settings: EngineSettings) -> list[GenerationResult] | State:
    """Generate a batch on a resident GPU task worker, one batch at a time on its GPU."""
    if (skipped := _skip_if_handed_over()) is not None:
        return skipped
    policy = load_worker_policy()
    # a worker runs two pieces of work at once (flows.services.worker): this one's run state,
    # check and heartbeat overlap the other's generation; the GPU takes one batch at a time
    with Heartbeat(_batch_name(), policy.heartbeat_s) as beat, THIS_GPU:
        return generate_images(jobs, settings, on_step=beat.on_step)


class MadeOnWorker(BaseModel):
    """A batch a worker generated and published: what publishing did, and each image's
    generation timings (key -> timings) for the run's table. No image bytes travel back."""

    model_config = ConfigDict(extra="forbid")

    outcome: BatchPublished
    timings: dict[str, dict[str, float]]
    looked: dict[str, StoredLook] = {}  # each published image read back from the store (contact sheet)


def _make_on_worker(jobs: list[ImageJob], settings: EngineSettings, store_url: str,
                    brand: BrandConfig, qa: QASettings | None = None,
                    attempts: dict[str, list[QAAttempt]] | None = None) -> MadeOnWorker | State:
    """Generate a batch on a resident GPU task worker, then label, inspect (QA gate), spool
    and upload it there: publishing runs beside the next batch's generation, on every worker,
    instead of in the flow's one process (which could label and upload only about 20 images a
    second for all the workers together, bench/RESULTS.md, scale)."""
    if (skipped := _skip_if_handed_over()) is not None:
        return skipped
    policy = load_worker_policy()
    with Heartbeat(_batch_name(), policy.heartbeat_s) as beat:
        with THIS_GPU:
            images = generate_images(jobs, settings, on_step=beat.on_step)
        store = store_at(store_url)
        outcome = publish_batch(store, jobs, images, brand, Spool.for_store(store_url),
                                upload_patience_s(), _logger(), qa=qa, attempts=attempts)
        # the week's contact sheet shows what the store holds: read back here, beside the next
        # batch's generation, not 1,000 images at the end of the run in the flow's process
        looked = {image.key: look_at(store, image.key) for image in outcome.published}
    return MadeOnWorker(outcome=outcome, looked=looked, timings={
        job.key: {name: float(value) for name, value in image.timings.items()}
        for job, image in zip(jobs, images, strict=True)})


# -- in the flow: wait, and hand a batch over again when its worker is gone --------------


def _workers_idle(client: SyncPrefectClient) -> bool:
    """True if generation workers are connected but none is running a batch."""
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
        TaskRunFilterTags,
    )

    workers = generation_workers(client)
    if not workers:  # a worker restarting: waiting for it is right
        return False
    busy = client.read_task_runs(task_run_filter=TaskRunFilter(
        tags=TaskRunFilterTags(all_=[GENERATION_TAG]),
        state=TaskRunFilterState(type=TaskRunFilterStateType(
            any_=[StateType.RUNNING, StateType.PENDING]))), limit=1)
    return not busy


# What PrefectDistributedFuture raises (a bare RuntimeError) for a run with no state yet
_NO_STATE_YET = re.compile(r"has no state which means it hasn't started yet")


class HandedOver(PrefectDistributedFuture[list[GenerationResult]]):
    """A batch handed to resident task workers; `result()` survives a worker or server that dies.

    While it waits, every `poll_s` it reads the run: RUNNING with a silent heartbeat for
    `stale_s`, Crashed, or still queued for `pickup_s` while a later batch started or the
    connected workers sat idle (a worker died holding it, or a server restart emptied the
    queue) -> the old run is marked Crashed and the batch is handed over as a new run, at
    most `max_handovers` times.
    """

    def __init__(self, submit: Callable[[], PrefectDistributedFuture[Any]], label: str,
                 policy: WorkerPolicy):
        self._submit = submit
        self.label = label
        self.policy = policy
        self.handovers = 0
        super().__init__(task_run_id=submit().task_run_id)
        self._watch_from_now()

    def _watch_from_now(self) -> None:
        self._down_since: float | None = None
        self._signal: tuple[Any, ...] | None = None
        self._signal_at = time.monotonic()
        self._overtaken_at: float | None = None

    def result(self, timeout: float | None = None,
               raise_on_failure: bool = True) -> list[GenerationResult]:
        """The batch's images; TimeoutError after `timeout` s, WorkerLost after too many hand-overs."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"{self.label}: not generated within {timeout:g} s "
                                   f"({self.handovers} hand-overs); is a `zpipe worker` running?")
            try:
                try:
                    images = super().result(timeout=self.policy.poll_s if left is None
                                            else min(self.policy.poll_s, left),
                                            raise_on_failure=raise_on_failure)
                    if images:  # a list of images, or a batch published on the worker
                        return images
                    # finished, but its images never reached us (a server restart can drop
                    # the result's record): make them again rather than fail the run
                    self._hand_over(f"it finished without its images ({type(images).__name__})")
                except TimeoutError:
                    if self._final_state is not None:  # the batch itself raised a TimeoutError
                        raise
                    with get_client(sync_client=True) as client:
                        self._look(client)
                except RuntimeError as exc:
                    if not _NO_STATE_YET.search(str(exc)):
                        raise
                    # a run queued just now (a hand-over right after a server restart) whose
                    # state the server has not recorded yet: Prefect returns at once, so wait
                    # here, then look at it as at any queued run
                    time.sleep(self.policy.poll_s if left is None else min(self.policy.poll_s, left))
                    with get_client(sync_client=True) as client:
                        self._look(client)
                except CrashedRun as exc:
                    self._hand_over(f"its run crashed ({exc})")
                self._down_since = None
            except httpx.TransportError as exc:  # a fresh client does not retry a refused connection
                self._wait_for_server(exc)

    def _wait_for_server(self, exc: Exception) -> None:
        """The Prefect API is unreachable (restarting?): wait for it up to `server_wait_s`."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            _logger().warning("%s: the Prefect API is unreachable (%s); waiting up to %g s for it",
                              self.label, exc, self.policy.server_wait_s)
        elif now - self._down_since > self.policy.server_wait_s:
            raise ServerLost(f"{self.label}: the Prefect API was unreachable for "
                             f"{now - self._down_since:.0f} s ({exc}); rerun once the server is "
                             "back: finished images are kept and only the missing ones are made")
        time.sleep(self.policy.poll_s)

    def _look(self, client: SyncPrefectClient) -> None:
        """Hand the batch over if its worker is silent, or the queue lost it."""
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterTaskRunId,
            ArtifactFilterType,
        )
        from prefect.client.schemas.sorting import ArtifactSort

        run = client.read_task_run(self.task_run_id)
        state = run.state.type if run.state else StateType.SCHEDULED
        now = time.monotonic()
        if state == StateType.SCHEDULED:
            if not (self._overtaken(client, run) or _workers_idle(client)):
                self._overtaken_at = None
            elif self._overtaken_at is None:
                self._overtaken_at = now
            elif now - self._overtaken_at > self.policy.pickup_s:
                self._hand_over("it stayed queued while a later batch started or the workers sat "
                                "idle (its worker died holding it, or the server restarted)")
            return
        beats = client.read_artifacts(
            artifact_filter=ArtifactFilter(task_run_id=ArtifactFilterTaskRunId(any_=[run.id]),
                                           type=ArtifactFilterType(any_=["progress"])),
            sort=ArtifactSort.UPDATED_DESC, limit=1)
        signal = (state, run.run_count, beats[0].description if beats else None)
        if signal != self._signal:
            self._signal, self._signal_at = signal, now
        elif now - self._signal_at > self.policy.stale_s:
            self._hand_over(f"its worker sent no heartbeat for {now - self._signal_at:.0f} s")

    @staticmethod
    def _overtaken(client: SyncPrefectClient, run: TaskRun) -> bool:
        """True if a generation batch queued after `run` has started (the queue is FIFO)."""
        from prefect.client.schemas.filters import (
            TaskRunFilter,
            TaskRunFilterStartTime,
            TaskRunFilterTags,
        )

        started = client.read_task_runs(task_run_filter=TaskRunFilter(
            tags=TaskRunFilterTags(all_=[GENERATION_TAG]),
            start_time=TaskRunFilterStartTime(after_=run.created)), limit=50)
        return any(other.id != run.id and other.created and run.created
                   and other.created > run.created for other in started)

    def _hand_over(self, reason: str) -> None:
        old = self.task_run_id
        if self.handovers >= self.policy.max_handovers:
            raise WorkerLost(f"{self.label}: handed to workers {self.handovers + 1} times and never "
                             f"generated (last run {old}: {reason}); check that `zpipe worker` "
                             "runs and its log, then rerun: finished images are kept")
        with get_client(sync_client=True) as client:  # mark first: a worker then skips the old run
            client.set_task_run_state(old, Crashed(message=f"{HANDED_OVER}: {reason}"), force=True)
        self._task_run_id = self._submit().task_run_id
        self._final_state = None
        self.handovers += 1
        self._watch_from_now()
        _logger().warning("%s: task run %s %s; handed over again as task run %s", self.label, old,
                          reason, self._task_run_id)


class WorkerTask(Task[..., Any]):
    """A task served by resident task workers: `.delay()` returns a `HandedOver` future."""

    def apply_async(self, args: tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None,
                    wait_for: Any = None, dependencies: Any = None) -> HandedOver:
        """Queue the batch for a worker (see `HandedOver` for what happens if it dies)."""
        jobs = args[0] if args else (kwargs or {}).get("jobs", [])
        return HandedOver(lambda: Task.apply_async(self, args, kwargs, wait_for, dependencies),
                          _jobs_label(jobs), load_worker_policy())

    def hand_over(self, handoff: TaskRunHandoff, *args: Any) -> HandedOver:
        """`.delay(*args)` through `handoff`, which keeps one API client for all of a campaign's
        hand-overs (`.delay()` made a client and serialized the flow's settings each time:
        55-90 ms of CPU, in the one process that feeds every worker). The run belongs to the
        calling flow run, as `.delay()`'s does; the worker runs it with its own settings."""
        from prefect.context import FlowRunContext
        from prefect.utilities.callables import get_call_parameters

        parameters = get_call_parameters(self.fn, args, {})
        flow_run = (context := FlowRunContext.get()) and context.flow_run
        label = _jobs_label(args[0])

        def submit() -> PrefectDistributedFuture[Any]:
            return PrefectDistributedFuture(task_run_id=handoff.create(
                parameters, flow_run.id if flow_run else None, label))

        return HandedOver(submit, label, load_worker_policy())


def _jobs_label(jobs: Sequence[ImageJob]) -> str:
    if not jobs:
        return "generate-empty"
    first = jobs[0]
    return f"generate {first.weekday}-{first.format}" + (f" +{len(jobs) - 1}" if len(jobs) > 1 else "")


# No `timeout_seconds`: a task worker runs it in a thread, where Prefect cannot interrupt a
# running pipeline call anyway; it only logged a warning per batch saying so.
generate_on_worker = WorkerTask(
    _generate_on_worker, name="generate-batch-gpu", task_run_name=_batch_name,
    cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5,
    persist_result=True, tags=[GENERATION_TAG])

# Generation and publishing on the worker (`generation: workers` campaigns): the same hand-over,
# heartbeat and skip rules; only the small MadeOnWorker record goes through result storage.
make_on_worker = WorkerTask(
    _make_on_worker, name="make-batch-gpu", task_run_name=_batch_name,
    cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5,
    persist_result=True, tags=[GENERATION_TAG])
