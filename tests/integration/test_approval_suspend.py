"""The approval gate of a deployment run, through `zpipe serve` on a real Prefect server.

The run suspends (its process exits), a reviewer resumes it with the typed form, and the
rescheduled run publishes without generating again; an unanswered review is failed by the
server at its timeout and the `review-expired` deployment rejects what was pending.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.publish.review import review_key
from tasks.store.objects import LocalStore
from tests.processes import running

REPO = Path(__file__).resolve().parents[2]
WEEK = "2026-W48"

pytestmark = pytest.mark.slow


def _gated_campaign(configs: Path, name: str, timeout_s: int) -> None:
    text = (REPO / "configs/campaigns/weekly-demo.yaml").read_text(encoding="utf-8")
    text = (text.replace("name: weekly-demo", f"name: {name}")
            .replace("approval: none", "approval: required")
            .replace('formats: ["1:1", "9:16"]', 'formats: ["1:1"]'))
    (configs / f"campaigns/{name}.yaml").write_text(text + f"approval_timeout_s: {timeout_s}\n",
                                                   encoding="utf-8")


@pytest.fixture(scope="module")
def served(prefect_api, zpipe_cache, tmp_path_factory) -> Iterator[Path]:
    """`zpipe serve` holding two gated campaigns (review timeouts 600 s and 10 s); yields the store."""
    home = tmp_path_factory.mktemp("served")
    configs = home / "configs"
    shutil.copytree(REPO / "configs", configs)
    for path in (configs / "campaigns").glob("*.yaml"):
        path.unlink()
    _gated_campaign(configs, "gated", 600)
    _gated_campaign(configs, "gated-fast", 10)
    out = home / "out"
    settings = home / "settings.yaml"
    settings.write_text(f"kind: settings\nstore: file://{out}\ngeneration: local\n"
                        "engine:\n  preview_scale: 0.25\n  max_batch: 4\n", encoding="utf-8")
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "ZPIPE_CACHE": str(zpipe_cache),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    env.pop("ZPIPE_STORE", None)
    env.pop("ZPIPE_GENERATION", None)
    zpipe = Path(sys.executable).parent / "zpipe"
    with running([zpipe, "serve", "--campaigns", configs / "campaigns", "--brands", configs / "brands",
                  "--settings", settings], log=home / "serve.log", env=env, cwd=REPO, stop_timeout=30):
        _wait(lambda: _deployment("weekly-campaign/gated-fast") and _deployment(
            "review-expired/on-review-timeout"), 90, "zpipe serve never registered its deployments",
            home / "serve.log")
        yield out


def _deployment(name: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def _wait(check: Callable[[], Any], timeout_s: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    raise AssertionError(f"{what} within {timeout_s} s\n{tail}")


def _run(run_id) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _start(deployment: str) -> Any:
    from prefect.deployments import run_deployment

    return run_deployment(deployment, parameters={"week": WEEK}, timeout=0)


def _suspended(run_id) -> Any:
    run = _run(run_id)
    assert not run.state.is_final(), f"the run ended instead of waiting for review: {run.state}"
    return run if run.state.name == "Suspended" else None


def _logs(run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with get_client(sync_client=True) as client:  # newest first: the resumed pass's lines
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                                limit=200, sort=LogSort.TIMESTAMP_DESC)
    return "\n".join(log.message for log in logs)


def _task_runs(run_id, name_prefix: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return [r for r in runs if r.name.startswith(name_prefix)]


def _pending(store: LocalStore) -> list[str]:
    return sorted(k for k in store.list("pending/") if not k.endswith(".json"))


def test_suspended_reviews_through_serve(served):
    """Two gated runs at once: one resumed by a reviewer, one left to time out."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.flow_runs import resume_flow_run

    store = LocalStore(served)
    run = _start("weekly-campaign/gated")
    unanswered = _start("weekly-campaign/gated-fast")  # review timeout 10 s

    # 1. Suspended: the images wait under pending/, the run left its review record
    _wait(lambda: _suspended(run.id), 180, "the run never suspended for review")
    pending = [k for k in _pending(store) if "/gated/" in k]
    assert len(pending) == 7, pending
    assert store.exists(review_key(str(run.id)))
    assert not store.list("published/")

    # 2. Resumed with the typed form: rescheduled, runs from the top, publishes, deletes the rest
    resume_flow_run(run.id, run_input={"decision": "reject_listed", "reject_keys": [pending[0]],
                                       "reviewer": "lin", "note": "wrong colours on monday"})
    final = _wait(lambda: (r := _run(run.id)).state.is_final() and r, 180,
                  "the resumed run never finished")
    assert final.state.is_completed(), final.state
    # the rescheduled run starts from the top, finds every image already pending, generates none
    _wait(lambda: "7 images planned, 7 already in" in _logs(run.id), 30,
          "the resumed run did not find its pending images (or its log never arrived)")
    assert len(_task_runs(run.id, "generate")) == 2, "7 images in batches of 4, generated once"
    published = sorted(k for k in store.list("published/") if not k.endswith(".json"))
    assert published == sorted("published/" + k.removeprefix("pending/") for k in pending[1:])
    assert not [k for k in _pending(store) if "/gated/" in k]
    sidecar = json.loads(store.get(published[0] + ".json"))
    assert sidecar["approval"]["reviewer"] == "lin"
    assert sidecar["approval"]["note"] == "wrong colours on monday"
    assert not store.exists(review_key(str(run.id))), "the review record outlived the decision"

    # 3. Unanswered: the server fails the run at its timeout, review-expired rejects the images
    final = _wait(lambda: (r := _run(unanswered.id)).state.is_final() and r, 180,
                  "the server never failed the expired review")
    assert final.state.is_failed() and "never resumed" in (final.state.message or "")
    _wait(lambda: not [k for k in _pending(store) if "/gated-fast/" in k], 90,
          "the review-expired deployment never rejected the pending images")
    assert not [k for k in store.list() if "/gated-fast/" in k and not k.startswith("_")]
    assert not store.exists(review_key(str(unanswered.id)))

    def sweep_completed() -> bool:
        with get_client(sync_client=True) as client:
            sweeps = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["review-expired"])))
        return any(s.parameters["flow_run_id"].endswith(str(unanswered.id))
                   and s.state.is_completed() for s in sweeps)
    _wait(sweep_completed, 60, "the review-expired run never completed")
