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
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, suspend_flow_run

from flows.names import CAMPAIGN_FAILED_EVENT, CAMPAIGN_FLOW, REVIEW_FLOW
from tasks.config.schema import load_settings
from tasks.orchestration.approval import (
    ApprovalDecision,
    ApprovalOutcome,
    ReviewRecord,
    expire_review,
    save_review,
)
from tasks.store.objects import ObjectStore, open_store

REVIEW_EXPIRED_DEPLOYMENT = "on-review-timeout"
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
