"""Comment-reply steps: claim a comment, plan its image, record the outcome; put the event's
run behind a fast-path reply."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
from prefect import task
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, State, StateType, TaskRun
from prefect.client.schemas.responses import SetStateStatus
from prefect.exceptions import MissingContextError, ObjectNotFound, PrefectHTTPStatusError
from prefect.logging import get_logger, get_run_logger
from prefect.states import Completed, Scheduled

from tasks.comments.ledger import CommentLedger, CommentState
from tasks.comments.reply import plan_reply
from tasks.config.schema import BrandConfig, EngineSettings
from tasks.content.plan import ImageJob
from tasks.steps.policies import LEDGER_RETRY, NEVER_CACHE
from tasks.store.objects import store_at

AWAIT_POLL_S = 0.5  # how often a run waiting for another run's answer reads the ledger
# The event's run behind a fast-path reply starts this much later: the fallback if that reply's
# worker dies (sooner when it fails), never a second process beside it
FALLBACK_DELAY_S = 60
CLOSED_MESSAGE = "answered on the fast path"  # starts the message of an event's run closed unstarted
EVENT_RUNS_SCANNED = 200  # not-yet-started reply runs read to find one comment's (a burst's worth)


def run_is_active(run_id: str) -> bool:
    """True while the Prefect run `run_id` exists and has not finished: a flow run, or the
    task run of a fast-path reply (`flows.comment.reply_on_worker`)."""
    try:
        run_uuid = UUID(run_id)
    except ValueError:  # not a Prefect run id: nothing is answering under it
        return False
    with get_client(sync_client=True) as client:
        try:
            run: FlowRun | TaskRun = client.read_flow_run(run_uuid)
        except ObjectNotFound:
            try:
                run = client.read_task_run(run_uuid)
            except ObjectNotFound:
                return False
    return run.state is not None and not run.state.is_final()


@task(name="start-reply", cache_policy=NEVER_CACHE, **LEDGER_RETRY)
def start_reply_task(store_url: str, comment_id: str, run_id: str) -> tuple[CommentState, bool]:
    """Claim the comment for this run (a flow run, or a fast-path task run): (record, True) if
    this run answers it, else who does."""
    return CommentLedger(store_at(store_url)).start(comment_id, run_id, run_is_active)


@task(name="await-reply", cache_policy=NEVER_CACHE)
def await_reply_task(store_url: str, comment_id: str, run_id: str,
                     takeover_s: float) -> tuple[CommentState, bool]:
    """Another run is answering the comment: wait for its answer (True: take it over, because
    that run is gone or has held the comment longer than `takeover_s`)."""
    ledger = CommentLedger(store_at(store_url))
    deadline = time.monotonic() + takeover_s
    while True:
        record = ledger.get(comment_id)
        if record is None or record.state != "running":
            return record, False
        other = record.flow_run_id or ""
        if time.monotonic() > deadline or not run_is_active(other):
            def still_running(run: str, stalled: str = other) -> bool:  # the stalled run counts as gone
                return run != stalled and run_is_active(run)
            return ledger.start(comment_id, run_id, still_running)
        time.sleep(AWAIT_POLL_S)


@task(name="finish-reply", cache_policy=NEVER_CACHE, **LEDGER_RETRY)
def finish_reply_task(store_url: str, comment_id: str, image_key: str | None,
                      reason: str | None = None, held: bool = False) -> CommentState:
    """Record the outcome for the status endpoint: done with the image key, held (by the QA
    gate, under `held/`: a reviewer decides, `reason` says why) or failed."""
    ledger = CommentLedger(store_at(store_url))
    if image_key is None:
        return ledger.update(comment_id, state="failed", reason=reason or "unknown error")
    if held:
        return ledger.update(comment_id, state="held", image_key=image_key,
                             reason=reason or "held by the QA gate for a reviewer")
    return ledger.update(comment_id, state="done", image_key=image_key, reason=None)


@task(name="plan-reply", cache_policy=NEVER_CACHE)
def plan_reply_task(brand: BrandConfig, comment: CommentState, engine: EngineSettings) -> ImageJob:
    """Render the brand's reply template with the comment's keywords (templating stage)."""
    return plan_reply(brand, comment, engine)


# -- the event's run behind a fast-path reply ------------------------------------------


def _logger() -> Any:
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("zpipe.comments")


def _event_runs(client: SyncPrefectClient, flow_name: str, comment_id: str) -> list[FlowRun]:
    """The deployment runs of `flow_name` for this comment that no process has taken yet."""
    waiting = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(is_null_=False),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
        limit=EVENT_RUNS_SCANNED)
    return [run for run in waiting if run.parameters.get("comment_id") == comment_id]


def move_event_runs(flow_name: str, comment_id: str, state: State) -> int:
    """Put this comment's event-triggered runs that have not started (SCHEDULED) in `state`.

    Best effort, and never forced: a run a process took meanwhile keeps its course (it finds
    the comment answered), and an API error is logged, not raised (the reply goes on; the run
    then starts as it would have). Returns how many runs moved.
    """
    moved = 0
    try:
        with get_client(sync_client=True) as client:
            for run in _event_runs(client, flow_name, comment_id):
                answer = client.set_flow_run_state(run.id, state.model_copy())
                moved += answer.status == SetStateStatus.ACCEPT
    except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
        _logger().warning("comment %s: its event's run not moved to %s: %s", comment_id,
                          state.name, exc)
    return moved


def defer_event_runs(flow_name: str, comment_id: str, run_id: str) -> int:
    """A fast-path reply claimed the comment: its event's run waits `FALLBACK_DELAY_S` (no
    second process competes with the reply's generation for the CPU)."""
    later = datetime.now(UTC) + timedelta(seconds=FALLBACK_DELAY_S)
    return move_event_runs(flow_name, comment_id, Scheduled(
        scheduled_time=later, message=f"deferred: the fast path (task run {run_id}) answers; "
                                      "this run is its fallback"))


def release_event_runs(flow_name: str, comment_id: str) -> int:
    """The fast-path reply failed: its event's run starts now and answers the comment."""
    return move_event_runs(flow_name, comment_id, Scheduled(
        scheduled_time=datetime.now(UTC), message="the fast path failed: this run answers"))


def close_event_runs(flow_name: str, comment_id: str, run_id: str) -> int:
    """The fast-path reply recorded its answer: its event's run is done without starting."""
    return move_event_runs(flow_name, comment_id, Completed(
        message=f"{CLOSED_MESSAGE} by task run {run_id}"))
