"""Resident task workers and the approval gate, on a real Prefect server."""

from __future__ import annotations

import contextvars
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flows.campaign import weekly_campaign
from tasks.config.schema import EngineSettings
from tasks.store.objects import LocalStore
from tests.helpers import check_campaign_objects
from tests.processes import stop_process

REPO = Path(__file__).resolve().parents[2]
ENGINE = EngineSettings(model="tiny", preview_scale=0.25, max_batch=4)

pytestmark = pytest.mark.slow


@pytest.fixture()
def task_worker(prefect_api, zpipe_cache, tmp_path):
    """A real `zpipe worker` process against the test Prefect server."""
    settings = tmp_path / "settings.yaml"
    settings.write_text("kind: settings\nengine:\n  preview_scale: 0.25\n  max_batch: 4\n")
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "ZPIPE_CACHE": str(zpipe_cache),
           "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO"}
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    zpipe = Path(sys.executable).parent / "zpipe"
    proc = subprocess.Popen([str(zpipe), "worker", "--settings", str(settings)], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    time.sleep(1)
    yield proc
    stop_process(proc, timeout=20)
    log.close()


def test_generation_runs_on_the_resident_worker_and_loads_once(task_worker, tmp_path, monkeypatch):
    monkeypatch.setenv("ZPIPE_GENERATION", "workers")
    out = tmp_path / "out"
    for week in ("2026-W48", "2026-W49", "2026-W50"):  # three flow runs
        summary = weekly_campaign("configs/campaigns/weekly-demo.yaml", week=week,
                                  store=f"file://{out}", engine=ENGINE)
        assert len(summary.created) == 14, summary
    sidecars = check_campaign_objects(LocalStore(out), 3 * 14)
    pids = {s["timings"]["engine_pid"] for s in sidecars}
    loads = {s["timings"]["engine_loads"] for s in sidecars}
    assert pids == {task_worker.pid}, "images were not made by the worker process"
    assert loads == {1}, "the worker loaded the model more than once"
    assert os.getpid() not in pids

    # the workers published and read back what they made: each week's contact sheet shows a
    # thumbnail for all 14 images, with their labels
    for week in ("2026-W48", "2026-W49", "2026-W50"):
        [sheet] = (out / "_sheets").rglob(f"{week}/index.html")
        html = sheet.read_text(encoding="utf-8")
        assert html.count('src="data:image/jpeg;base64,') == 14, week

    # every Completed run's progress artifact reads 100 % (it once stopped at 12 of 14)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = [f"weekly-demo-{week.lower()}-progress" for week in ("2026-W48", "2026-W49", "2026-W50")]
    with get_client(sync_client=True) as client:
        artifacts = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    assert {a.key: float(a.data) for a in artifacts} == dict.fromkeys(keys, 100.0)


def _approval_campaign(tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(REPO / "configs", tmp_path / "configs")
    path = tmp_path / "configs/campaigns/weekly-demo.yaml"
    text = path.read_text(encoding="utf-8").replace("approval: none", "approval: required")
    text = text.replace("formats: [\"1:1\", \"9:16\"]", "formats: [\"1:1\"]")
    path.write_text(text + "approval_timeout_s: 60\n", encoding="utf-8")
    return path


def _run_and_review(campaign: Path, out: Path, run_input: dict | None):
    """Run the gated campaign in a thread; answer its pause with `run_input` (None: let it time out)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    box: dict = {}

    def run() -> None:
        try:
            box["summary"] = weekly_campaign(str(campaign), week="2026-W48", store=f"file://{out}",
                                             engine=ENGINE)
        except Exception as exc:  # surfaced by the assertion below
            box["error"] = exc

    context = contextvars.copy_context()  # Prefect's settings (the test server) live in it
    thread = threading.Thread(target=context.run, args=(run,))
    thread.start()
    deadline = time.monotonic() + 120
    paused = []
    while not paused and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(1)
        with get_client(sync_client=True) as client:
            paused = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    assert paused, f"the run never paused for review: {box}"
    pending = sorted(p for p in LocalStore(out).list() if p.startswith("pending/"))
    assert len(pending) == 14 and not any(p.startswith("published/") for p in LocalStore(out).list())
    if run_input is not None:
        if run_input.get("reject_keys") == "FIRST":
            run_input["reject_keys"] = [pending[0]]
        resume_flow_run(paused[0].id, run_input=run_input)
    thread.join(timeout=180)
    assert "error" not in box, box
    return box["summary"], pending


def test_approval_approve_and_reject_listed(prefect_api, zpipe_cache, tmp_path):
    campaign = _approval_campaign(tmp_path)
    out = tmp_path / "out"
    summary, pending = _run_and_review(
        campaign, out, {"decision": "reject_listed", "reject_keys": "FIRST", "reviewer": "lin"})
    keys = LocalStore(out).list()
    assert not any(k.startswith("pending/") for k in keys)
    published = [k for k in keys if k.startswith("published/") and not k.endswith(".json")]
    assert len(published) == 6 and summary.approval.reviewer == "lin"
    rejected = pending[0]
    assert f"published/{rejected.removeprefix('pending/')}" not in keys
    sidecar = json.loads(LocalStore(out).get(published[0] + ".json"))
    assert sidecar["approval"]["reviewer"] == "lin" and sidecar["key"] == published[0]
    # a rerun of the same week regenerates only the rejected image, and waits again
    # (not exercised here: it would pause again; the planner test covers find_missing)


def test_approval_timeout_rejects_everything(prefect_api, zpipe_cache, tmp_path):
    campaign = _approval_campaign(tmp_path)
    campaign.write_text(campaign.read_text(encoding="utf-8").replace(
        "approval_timeout_s: 60", "approval_timeout_s: 10"), encoding="utf-8")
    out = tmp_path / "out"
    summary, _ = _run_and_review(campaign, out, None)
    assert summary.approval.reason == "review timed out"
    assert [k for k in LocalStore(out).list() if not k.startswith("_")] == []


# A worker receiving a run (on Prefect's global loop, which emits an event for it) while an
# earlier run starts a Prefect service (holding the services' shared lock, waiting for that
# loop): the race that hung a worker with two batches for good (flows.services.worker).
_SERVICE_RACE = """
import sys, threading, time
from prefect._internal.concurrency.api import create_call, from_sync
from prefect.concurrency.services import ConcurrencySlotAcquisitionWithLeaseService
from prefect.events.worker import EventsWorker
from flows.services.worker import start_prefect_services
from tasks.orchestration.handover import make_on_worker

if sys.argv[1] == "started":
    start_prefect_services((make_on_worker,))

def receive():  # the task worker's receiving code: busy a moment, then an event
    time.sleep(0.5)
    EventsWorker.instance()

received = from_sync.call_soon_in_loop_thread(create_call(receive))
time.sleep(0.1)  # the loop is busy receiving: this run's engine starts its slot service now
ConcurrencySlotAcquisitionWithLeaseService.instance(frozenset({"tag:zpipe-generation"}))
received.result()
print("both done")
"""


@pytest.mark.parametrize("start", ["started", "not-started"])
def test_a_worker_starts_prefects_services_before_it_serves_so_a_second_run_cannot_hang_it(
        prefect_api, start):
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    try:
        done = subprocess.run([sys.executable, "-c", _SERVICE_RACE, start], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        assert start == "not-started", "the worker's services were started and it still hung"
        return  # Prefect's own behaviour, the reason for start_prefect_services
    assert start == "started", "without its services started first the race no longer hangs: " \
                               "Prefect fixed it, and start_prefect_services can go"
    assert done.returncode == 0, done.stderr
    assert "both done" in done.stdout
