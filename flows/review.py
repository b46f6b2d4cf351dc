"""The approval gate's waiting: suspend (deployment runs) or pause (ad-hoc runs), and its timeout.

A deployment run *suspends*: its process exits and holds no thread, GPU or memory while the
reviewer takes hours. Resuming reschedules the run; it starts again from the top, finds every
image already under `pending/` (keys are content-addressed), and `suspend_flow_run` with the
same key returns the reviewer's form instead of suspending again.

A run with no deployment (`zpipe run` against a server) cannot be rescheduled, so it *pauses*
in-process with the same form, and handles its own timeout.

A suspended run whose review times out is failed by the Prefect server, with no zpipe code
running. The run leaves a review record in the store before it suspends; the `review-expired`
deployment, triggered by the `prefect.flow-run.Failed` event of a `weekly-campaign` run, reads
it and rejects whatever is still pending, as the issue's "a timeout rejects" asks.

Images the QA gate *held* (`held/`) have a review of their own: when a run holds images it
emits `zpipe.image.held`; the `review-held-images/on-held` deployment then shows them (thumbnails
and reasons) in the Prefect UI and waits, suspended, for the reviewer's `HeldDecision` form:
release (publish as it is) or delete, image by image.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, suspend_flow_run

from flows.names import (
    CAMPAIGN_FAILED_EVENT,
    CAMPAIGN_FLOW,
    HELD_EVENT,
    HELD_RESOURCE_PREFIX,
    HELD_REVIEW_FLOW,
    REVIEW_FLOW,
)
from tasks.config.schema import load_settings
from tasks.orchestration.approval import ApprovalDecision, HeldDecision
from tasks.publish.review import (
    ApprovalOutcome,
    HeldOutcome,
    ReviewRecord,
    expire_review,
    list_held,
    save_review,
)
from tasks.steps.approval import apply_held_decision_task
from tasks.store.objects import ObjectStore, S3Store, open_store

REVIEW_EXPIRED_DEPLOYMENT = "on-review-timeout"
HELD_REVIEW_DEPLOYMENT = "on-held"
HELD_REVIEW_TIMEOUT_S = 7 * 24 * 3600  # a week; an unanswered review leaves the images held
HELD_URL_TTL_S = 7 * 24 * 3600  # presigned full-size links in the review artifact (S3 maximum)
FLOW_RUN_RESOURCE_PREFIX = "prefect.flow-run."


def _form(name: str, week: str, pending: list[str]) -> type[ApprovalDecision]:
    return ApprovalDecision.with_initial_data(
        description=f"Review {len(pending)} images of {name} {week}. Keys:\n"
                    + "\n".join(f"- `{k}`" for k in pending),
        decision="approve_all", reviewer="")


def wait_for_review(store_url: str, name: str, week: str, pending: list[str],
                    timeout_s: int) -> ApprovalDecision | None:
    """The reviewer's decision; None when nobody answered in time (pause only, see module doc)."""
    logger = get_run_logger()
    run = FlowRunContext.get().flow_run
    key = f"review-{name}-{week}".lower()
    if run.deployment_id is None:
        logger.info("%d images wait for review under pending/ (paused, timeout %d s)",
                    len(pending), timeout_s)
        try:
            return pause_flow_run(wait_for_input=_form(name, week, pending), timeout=timeout_s,
                                  key=key)
        except FlowPauseTimeout:
            return None
    # Written on every pass: harmless after a resume, and always there before a suspend.
    save_review(open_store(store_url), ReviewRecord(
        flow_run_id=str(run.id), campaign=name, week=week, pending=pending,
        deadline=datetime.now(UTC) + timedelta(seconds=timeout_s)))
    logger.info("%d images wait for review under pending/ (suspended, timeout %d s); "
                "resume the run in the Prefect UI with the review form", len(pending), timeout_s)
    return suspend_flow_run(wait_for_input=_form(name, week, pending), timeout=timeout_s, key=key)


def _store_of(parameters: dict) -> ObjectStore:
    """The store a campaign run wrote to, from its parameters (as `weekly_campaign` opens it)."""
    return open_store(parameters.get("store") or load_settings(parameters.get("settings")).store)


@flow(name=REVIEW_FLOW, flow_run_name="review timeout {flow_run_id}")
def review_expired(flow_run_id: str) -> ApprovalOutcome | None:
    """Reject the pending images of a suspended campaign run whose review timed out."""
    logger = get_run_logger()
    run_id = flow_run_id.removeprefix(FLOW_RUN_RESOURCE_PREFIX)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    outcome = expire_review(_store_of(run.parameters), run_id, datetime.now(UTC))
    if outcome is None:
        logger.info("run %s left no expired review: nothing to reject", run_id)
    else:
        logger.info("review of run %s timed out: %d images rejected", run_id, len(outcome.rejected))
    return outcome


def review_deployment() -> RunnerDeployment:
    """Runs `review-expired` whenever a `weekly-campaign` run fails (a review timeout fails it).

    No parameters of its own: the failed run's parameters say which store it used.
    """
    return review_expired.to_deployment(
        name=REVIEW_EXPIRED_DEPLOYMENT, entrypoint_type=EntrypointType.MODULE_PATH,
        triggers=[DeploymentEventTrigger(
            name="campaign run failed",
            expect={CAMPAIGN_FAILED_EVENT},
            match_related={"prefect.resource.role": "flow",
                           "prefect.resource.name": CAMPAIGN_FLOW},
            parameters={"flow_run_id": "{{ event.resource.id }}"})],
        description="reject what a campaign run left under pending/ when its review times out",
        tags=["approval"])


# --- Images the QA gate held ------------------------------------------------------------------


def held_folder(keys: list[str]) -> str:
    """The folder the held keys share (`brand/campaign/week/`), '' when they share none."""
    parts = [key.removeprefix("held/").split("/")[:-1] for key in keys]
    common: list[str] = []
    for segments in zip(*parts, strict=False):
        if len(set(segments)) != 1:
            break
        common.append(segments[0])
    return "/".join(common) + "/" if common else ""


def announce_held(store_url: str, held_keys: list[str], source: str) -> None:
    """Emit `zpipe.image.held` for images a run held, so `review-held-images` asks a reviewer."""
    from prefect.events import emit_event

    if not held_keys:
        return
    folder = held_folder(held_keys)
    emit_event(event=HELD_EVENT,
               resource={"prefect.resource.id": f"{HELD_RESOURCE_PREFIX}{folder or 'all'}",
                         "prefect.resource.name": folder or "held"},
               payload={"store": store_url, "prefix": folder, "count": len(held_keys),
                        "source": source})


def _held_form(held_keys: list[str], prefix: str) -> type[HeldDecision]:
    return HeldDecision.with_initial_data(
        description=f"{len(held_keys)} image(s) held by the QA gate under `held/{prefix}`. "
                    "Copy keys into *release* (publish as it is) or *delete*; keys left out stay "
                    "held. Thumbnails and reasons: this run's `held-review` artifact.\n"
                    + "\n".join(f"- `{k}`" for k in held_keys),
        release=[], delete=[], reviewer="")


@flow(name=HELD_REVIEW_FLOW, flow_run_name="review held {prefix}")
def review_held(store: str | None = None, prefix: str = "", settings: str | None = None,
                timeout_s: int = HELD_REVIEW_TIMEOUT_S) -> HeldOutcome | None:
    """Show what the QA gate held under `held/<prefix>` and release or delete what the reviewer says.

    Returns None when nothing is held (or nobody answered an ad-hoc run in time).
    """
    from prefect.artifacts import create_markdown_artifact

    from tasks.publish.contact_sheet import held_markdown

    logger = get_run_logger()
    opened = open_store(store or load_settings(settings).store)
    store_url = opened.describe()

    # 1. What is held, as the reviewer will see it
    held = list_held(opened, prefix)
    if not held:
        logger.info("nothing is held under held/%s in %s", prefix, store_url)
        return None
    keys = [image.key for image in held]
    link = ((lambda key: opened.url(key, expires_s=HELD_URL_TTL_S))
            if isinstance(opened, S3Store) else None)
    rows = [(image.key, image.public_key, image.reasons,
             opened.get(image.key) if opened.exists(image.key) else None) for image in held]
    create_markdown_artifact(
        key="held-review", description=f"images held by the QA gate under held/{prefix}",
        markdown=f"# Held by the QA gate: {len(held)} image(s)\n\nStore `{store_url}`, "
                 f"prefix `held/{prefix}`.\n\n" + held_markdown(rows, link))

    # 2. Wait for the form: suspended (deployment runs hold no process), paused otherwise
    run = FlowRunContext.get().flow_run
    # Stable across processes: a resumed (rescheduled) run must find its answer under this key
    key = "held-" + hashlib.sha256("\n".join([prefix, *keys]).encode()).hexdigest()[:16]
    logger.info("%d held image(s) wait for a reviewer: fill in the form to release or delete them",
                len(keys))
    if run.deployment_id is None:
        try:
            decision = pause_flow_run(wait_for_input=_held_form(keys, prefix), timeout=timeout_s, key=key)
        except FlowPauseTimeout:
            logger.info("nobody answered in %d s: the images stay held", timeout_s)
            return None
    else:
        decision = suspend_flow_run(wait_for_input=_held_form(keys, prefix), timeout=timeout_s, key=key)

    # 3. Apply it: each released image goes to its public key, deleted ones are gone
    outcome = apply_held_decision_task(store_url, decision)
    logger.info("%s released %d and deleted %d held image(s)", outcome.reviewer,
                len(outcome.released), len(outcome.deleted))
    return outcome


def held_review_deployment() -> RunnerDeployment:
    """Runs `review-held-images` whenever a run holds images (its `zpipe.image.held` event)."""
    return review_held.to_deployment(
        name=HELD_REVIEW_DEPLOYMENT, entrypoint_type=EntrypointType.MODULE_PATH,
        triggers=[DeploymentEventTrigger(
            name="images held by QA",
            expect={HELD_EVENT},
            match={"prefect.resource.id": f"{HELD_RESOURCE_PREFIX}*"},
            parameters={"store": "{{ event.payload.store }}",
                        "prefix": "{{ event.payload.prefix }}"})],
        description="show what the QA gate held and release or delete it, image by image",
        tags=["approval", "qa"])
