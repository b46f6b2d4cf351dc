"""Reviews on the store: images wait under `pending/` (the approval gate) or `held/` (the QA
gate) until a reviewer decides. The decisions are plain data (`ApprovalChoice`, `HeldChoice`);
the Prefect UI's forms are built on them in `tasks.orchestration.approval`. No Prefect here.

Images the QA gate (tasks.qa) held wait under `held/` the same way: `list_held`, then
`release_held` (to the public key; a gated key goes straight to `published/`) or `delete_held`.

Approved images (and their sidecars, stamped with the decision) move to `published/`;
rejected ones are deleted; a review that never comes rejects everything it covered.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.core.errors import ZpipeError
from tasks.store.keys import HELD, PENDING, PUBLISHED, REVIEWS
from tasks.store.objects import ObjectStore


class ApprovalChoice(BaseModel):
    """What a reviewer decides about a paused campaign run's pending images."""

    decision: Literal["approve_all", "reject_listed", "reject_all"] = Field(
        default="approve_all",
        description="approve_all: publish everything; reject_listed: delete the keys below, "
                    "publish the rest; reject_all: delete everything")
    reject_keys: list[str] = Field(default_factory=list,
                                   description="pending image keys to reject (reject_listed)")
    reviewer: str = Field(min_length=1, description="who decided (recorded in each sidecar)")
    note: str = ""


class ApprovalOutcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    published: list[str]
    rejected: list[str]
    reviewer: str | None
    reason: str


def published_key(pending_key: str) -> str:
    """`pending/<key>` -> `published/<key>`."""
    if not pending_key.startswith(PENDING):
        raise ZpipeError(f"{pending_key!r} is not under {PENDING!r}")
    return PUBLISHED + pending_key[len(PENDING):]


def apply_decision(store: ObjectStore, pending_keys: list[str],
                   decision: ApprovalChoice | None, now: datetime) -> ApprovalOutcome:
    """Move approved images to published/ (sidecar last), delete rejected ones."""
    if decision is None:
        rejected, reviewer, reason = list(pending_keys), None, "review timed out"
    elif decision.decision == "approve_all":
        rejected, reviewer, reason = [], decision.reviewer, "approved"
    elif decision.decision == "reject_all":
        rejected, reviewer, reason = list(pending_keys), decision.reviewer, "rejected"
    else:
        unknown = sorted(set(decision.reject_keys) - set(pending_keys))
        if unknown:
            raise ZpipeError(f"reject_keys not in this review: {unknown}; "
                             f"use keys from the run's image table")
        rejected, reviewer, reason = list(decision.reject_keys), decision.reviewer, "partly rejected"
    published = []
    for key in pending_keys:
        if key in rejected:
            store.delete(f"{key}.json")  # sidecar first: no sidecar = not a finished image
            store.delete(key)
            continue
        target = published_key(key)
        sidecar = json.loads(store.get(f"{key}.json"))
        sidecar["key"] = target
        sidecar["approval"] = {"reviewer": reviewer, "decided_at": now.isoformat(),
                               "note": decision.note if decision else ""}
        store.put(target, store.get(key), sidecar["output"]["content_type"], overwrite=True)
        store.put(f"{target}.json", json.dumps(sidecar, ensure_ascii=False, indent=2).encode(),
                  "application/json", overwrite=True)
        store.delete(f"{key}.json")
        store.delete(key)
        published.append(target)
    return ApprovalOutcome(published=published, rejected=rejected, reviewer=reviewer, reason=reason)


REVIEWS_PREFIX = REVIEWS  # one record per suspended run, for the expiry sweep


class ReviewRecord(BaseModel):
    """What a suspended run left waiting: enough for the timeout to reject it without the run."""

    model_config = ConfigDict(extra="forbid")

    flow_run_id: str
    campaign: str
    week: str
    pending: list[str]
    deadline: datetime


def review_key(flow_run_id: str) -> str:
    return f"{REVIEWS_PREFIX}{flow_run_id}.json"


def save_review(store: ObjectStore, record: ReviewRecord) -> None:
    store.put(review_key(record.flow_run_id), record.model_dump_json(indent=2).encode(),
              "application/json", overwrite=True)


def load_review(store: ObjectStore, flow_run_id: str) -> ReviewRecord | None:
    key = review_key(flow_run_id)
    return ReviewRecord.model_validate_json(store.get(key)) if store.exists(key) else None


def expire_review(store: ObjectStore, flow_run_id: str, now: datetime) -> ApprovalOutcome | None:
    """Reject what a suspended run still has under `pending/` once its review deadline passed.

    None when the run left no review or its deadline is still ahead (it may yet be resumed).
    """
    record = load_review(store, flow_run_id)
    if record is None or now < record.deadline:
        return None
    waiting = [key for key in record.pending if store.exists(f"{key}.json")]
    outcome = apply_decision(store, waiting, None, now)
    store.delete(review_key(flow_run_id))
    return outcome


# --- Held images: what the QA gate kept off the public prefix --------------------------------



class HeldImage(BaseModel):
    """One image the QA gate held, as a reviewer sees it (from its sidecar under `held/`)."""

    model_config = ConfigDict(extra="forbid")

    key: str  # held/<planned key>
    public_key: str  # where a release puts it
    reasons: list[str]
    decision: str | None = None  # the gate's decision ("hold")
    score: float | None = None
    held_at: str | None = None


class HeldChoice(BaseModel):
    """What a reviewer decides about images the QA gate held."""

    release: list[str] = Field(default_factory=list, description="held keys to publish as they are")
    delete: list[str] = Field(default_factory=list, description="held keys to delete")
    reviewer: str = Field(min_length=1, description="who decided (recorded in each sidecar)")
    note: str = ""


class HeldOutcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    released: list[str]  # the public keys they now live at
    deleted: list[str]
    reviewer: str


def release_target(key: str) -> str:
    """Where releasing `held/<key>` publishes it: `<key>`, or `published/...` for a gated key
    (a reviewer's release is that image's approval)."""
    if not key.startswith(HELD):
        raise ZpipeError(f"{key!r} is not under {HELD!r}; pass a key from list_held()")
    planned = key[len(HELD):]
    return published_key(planned) if planned.startswith(PENDING) else planned


def list_held(store: ObjectStore, prefix: str = "") -> list[HeldImage]:
    """Every held image (under `held/<prefix>`), with the reasons from its sidecar."""
    held = []
    for name in sorted(store.list(HELD + prefix)):
        if not name.endswith(".json"):
            continue
        sidecar = json.loads(store.get(name))
        qa = sidecar.get("qa") or {}
        key = name.removesuffix(".json")
        held.append(HeldImage(key=key, public_key=release_target(key),
                              reasons=(sidecar.get("held") or {}).get("reasons") or qa.get("reasons", []),
                              decision=qa.get("decision"), score=qa.get("score"),
                              held_at=(sidecar.get("held") or {}).get("held_at")))
    return held


def release_held(store: ObjectStore, key: str, reviewer: str, now: datetime, note: str = "") -> str:
    """Publish a held image as it is (sidecar last, stamped with the release); returns its key."""
    target = release_target(key)
    if not store.exists(f"{key}.json"):
        raise ZpipeError(f"no held image {key!r}: it was released or deleted already")
    sidecar = json.loads(store.get(f"{key}.json"))
    sidecar["key"] = target
    sidecar["review"] = {"action": "released", "reviewer": reviewer, "decided_at": now.isoformat(),
                         "note": note}
    store.put(target, store.get(key), sidecar["output"]["content_type"], overwrite=True)
    store.put(f"{target}.json", json.dumps(sidecar, ensure_ascii=False, indent=2).encode(),
              "application/json", overwrite=True)
    store.delete(f"{key}.json")  # sidecar first: no sidecar = not a finished image
    store.delete(key)
    return target


def delete_held(store: ObjectStore, key: str) -> None:
    """Delete a held image and its sidecar (a rerun of its week would make it again)."""
    release_target(key)  # checks the key is under held/
    store.delete(f"{key}.json")
    store.delete(key)


def apply_held_decision(store: ObjectStore, decision: HeldChoice, now: datetime) -> HeldOutcome:
    """Release and delete what the reviewer listed (a key in both lists is refused)."""
    both = sorted(set(decision.release) & set(decision.delete))
    if both:
        raise ZpipeError(f"keys both released and deleted: {both}; choose one for each")
    released = [release_held(store, key, decision.reviewer, now, decision.note)
                for key in decision.release]
    for key in decision.delete:
        delete_held(store, key)
    return HeldOutcome(released=released, deleted=list(decision.delete), reviewer=decision.reviewer)
