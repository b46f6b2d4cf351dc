"""Comment-reply steps: claim a comment, plan its image, record the outcome."""

from __future__ import annotations

import time
from uuid import UUID

from prefect import task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.exceptions import ObjectNotFound

from tasks.comments.ledger import CommentLedger, CommentState
from tasks.comments.reply import plan_reply
from tasks.config.schema import BrandConfig, EngineSettings
from tasks.content.plan import ImageJob
from tasks.steps.policies import LEDGER_RETRY, NEVER_CACHE
from tasks.store.objects import store_at

AWAIT_POLL_S = 0.5  # how often a run waiting for another run's answer reads the ledger
# With the fast path, a comment not answered this long after its event gets a comment-reply
# flow run (the fallback: no worker took it, or its worker died; sooner when its reply failed)
FALLBACK_DELAY_S = 60


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


