"""The comment fast path on real parts: the intake hands an accepted comment straight to a
resident `zpipe worker`, which answers it on its loaded engine (no new flow-run process); the
run the Prefect event triggers later finds it answered. And a run that finds another run
"answering" waits for it, or takes over when that run is gone or stalls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flows.services.intake import IntakeSettings, create_app, load_brands, post_comment, worker_handoff
from tasks.comments.ledger import CommentLedger, CommentState
from tasks.store.objects import LocalStore
from tests.conftest import REPO
from tests.processes import stop_process

SECRET = "fast-path-test-secret-9b2c4e"
BRANDS = REPO / "configs/brands"

pytestmark = pytest.mark.slow


class Recorder:
    """The event emitter, recorded (the trigger is not what this test measures)."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, **event) -> None:
        self.events.append(event)


@pytest.fixture()
def resident_worker(prefect_api, zpipe_cache, tmp_path):
    """One real `zpipe worker` (tiny model, small previews) and the settings it runs with."""
    out = tmp_path / "out"
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"kind: settings\nengine:\n  preview_scale: 0.5\n  max_batch: 4\n"
                        f"store: file://{out}\ngeneration: workers\n", encoding="utf-8")
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "ZPIPE_CACHE": str(zpipe_cache)}
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(Path(sys.executable).parent / "zpipe"), "worker", "--settings",
                             str(settings)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    yield proc, settings, out
    stop_process(proc, timeout=20)
    log.close()


def test_an_accepted_comment_is_answered_on_the_resident_worker(resident_worker, tmp_path, monkeypatch):
    from flows.comment import comment_reply
    from tests.integration.test_intake import serving

    proc, settings, out = resident_worker
    monkeypatch.setenv("ZPIPE_CACHE", os.environ["ZPIPE_CACHE"])
    store = f"file://{out}"
    emitted = Recorder()
    intake = IntakeSettings(secret=SECRET, store_url=store, brands=load_brands(BRANDS), emit=emitted,
                            handoff=worker_handoff(BRANDS, store, str(settings)))
    ledger = CommentLedger(LocalStore(out))
    with serving(create_app(intake)) as url:
        latencies = []
        for i, text in enumerate(["想要一杯桂花拿铁", "rainy day hot cocoa please"]):
            comment = {"id": f"fast-{i}", "author": f"a{i}", "text": text, "post_id": "p-1", "brand": "demo"}
            sent = time.monotonic()
            answer = post_comment(url, SECRET, comment)
            assert answer.status_code == 202, answer.text
            deadline = sent + 180  # the first one may wait for the worker's start and model load
            while (record := ledger.get(comment["id"])).state not in ("done", "failed", "held"):
                assert time.monotonic() < deadline, f"not answered: {record}"
                time.sleep(0.05)
            latencies.append(time.monotonic() - sent)
            assert record.state == "done", record
            sidecar = json.loads(LocalStore(out).get(f"{record.image_key}.json"))
            assert sidecar["timings"]["engine_pid"] == proc.pid  # made by the resident worker
        print(f"accepted -> stored: {', '.join(f'{s:.2f} s' for s in latencies)}")
    assert [e["payload"]["id"] for e in emitted.events] == ["fast-0", "fast-1"]  # the event still left
    # the worker announced each answer, which keeps the event's trigger from making a fallback run
    answers = _events_of("zpipe.comment.answered", {"fast-0", "fast-1"})
    assert {a["payload"]["id"]: a["payload"]["image_key"] for a in answers} == {
        c: ledger.get(c).image_key for c in ("fast-0", "fast-1")}
    assert {a["payload"]["outcome"] for a in answers} == {"done"}

    # The run the event triggers (here in-process) finds it answered: no second image
    images = [k for k in LocalStore(out).list("demo/comments/") if not k.endswith(".json")]
    assert comment_reply(comment_id="fast-0", brand="demo", brands_dir=str(BRANDS),
                         settings=str(settings)) == ledger.get("fast-0").image_key
    assert [k for k in LocalStore(out).list("demo/comments/") if not k.endswith(".json")] == images


def _events_of(name: str, comment_ids: set[str], timeout_s: float = 30) -> list[dict]:
    """The server's `name` events for these comments, once it has stored one for each."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            page = client.request("POST", "/events/filter", json={"filter": {
                "event": {"name": [name]}, "occurred": {"since": "2026-01-01T00:00:00Z"},
                "resource": {"id": [f"zpipe.comment.{c}" for c in sorted(comment_ids)]}},
                "limit": 50}).json()
            if {e["payload"]["id"] for e in page["events"]} >= comment_ids or time.monotonic() > deadline:
                return page["events"]
            time.sleep(1)


def test_a_run_waits_for_the_answering_run_and_takes_over_one_that_is_gone(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Running

    from flows.comment import comment_reply
    from tasks.steps.comments import await_reply_task

    ledger = CommentLedger(LocalStore(tmp_path))
    now = datetime.now(UTC)
    for comment_id in ("w-1", "w-2"):
        ledger.claim(CommentState(id=comment_id, brand="demo", author="lin", post_id="p", text="拿铁",
                                  keywords=["拿铁"], state="queued", received_at=now, updated_at=now))
    with get_client(sync_client=True) as client:
        other = client.create_flow_run(comment_reply, parameters={"comment_id": "w-1", "brand": "demo"},
                                       state=Running())
        mine = client.create_flow_run(comment_reply, parameters={"comment_id": "w-1", "brand": "demo"},
                                      state=Running())
    store = f"file://{tmp_path}"
    ledger.start("w-1", str(other.id), lambda run: False)
    ledger.start("w-2", str(other.id), lambda run: False)

    # 1. The other run is alive but stalls: after `takeover_s` this run takes the comment
    started = time.monotonic()
    record, taken = await_reply_task.fn(store, "w-1", str(mine.id), takeover_s=1.5)
    assert taken and record.flow_run_id == str(mine.id) and time.monotonic() - started >= 1.5

    # 2. The other run is gone (finished without recording an answer): taken at once
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(other.id, Completed(), force=True)
    started = time.monotonic()
    record, taken = await_reply_task.fn(store, "w-2", str(mine.id), takeover_s=60)
    assert taken and time.monotonic() - started < 10

    # 3. The other run answers while this one waits: its answer, nothing taken
    ledger.update("w-1", state="done", image_key="demo/comments/x.jpg")
    record, taken = await_reply_task.fn(store, "w-1", "not-a-run", takeover_s=60)
    assert not taken and record.state == "done" and record.image_key == "demo/comments/x.jpg"
