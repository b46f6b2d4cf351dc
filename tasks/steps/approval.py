"""Review steps: apply a reviewer's decision on pending or held images."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import task

from tasks.orchestration.approval import ApprovalDecision, HeldDecision
from tasks.publish.review import (
    ApprovalOutcome,
    HeldOutcome,
    apply_decision,
    apply_held_decision,
    review_key,
)
from tasks.steps.policies import NEVER_CACHE, STORE_RETRY
from tasks.store.objects import store_at


@task(name="apply-approval", cache_policy=NEVER_CACHE, **STORE_RETRY)
def apply_decision_task(store_url: str, pending_keys: list[str], decision: ApprovalDecision | None,
                        flow_run_id: str | None = None) -> ApprovalOutcome:
    """Publish what the reviewer approved and delete what they rejected (then its review record)."""
    store = store_at(store_url)
    outcome = apply_decision(store, pending_keys, decision, datetime.now(UTC))
    if flow_run_id is not None:
        store.delete(review_key(flow_run_id))
    return outcome


@task(name="review-held", cache_policy=NEVER_CACHE, **STORE_RETRY)
def apply_held_decision_task(store_url: str, decision: HeldDecision) -> HeldOutcome:
    """Release or delete images the QA gate held, as the reviewer decided."""
    return apply_held_decision(store_at(store_url), decision, datetime.now(UTC))
