"""Orchestration faults on real parts: a generation worker killed mid-batch, a Prefect server
restarted during a deployment run, duplicate and out-of-order comment events.

Real Prefect servers, real `zpipe worker` processes, real SeaweedFS; the only fault injection
is SIGKILL of a process. Worker timings are shortened through `ZPIPE_WORKER_*`.
"""

from __future__ import annotations

import contextvars
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.orchestration.handover import GENERATION_TAG, HANDED_OVER, HEARTBEAT, generation_workers
from tasks.store.objects import S3Store
from tests.conftest import _free_port, _wait_http
from tests.helpers import check_campaign_objects, wait_for
from tests.processes import stop_process

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PREFIX = "zpipe"
# Short worker timings: a beat a second, a silent worker given up after 6 s.
WORKER_ENV = {"ZPIPE_WORKER_HEARTBEAT_S": "1", "ZPIPE_WORKER_STALE_S": "6",
              "ZPIPE_WORKER_PICKUP_S": "2", "ZPIPE_WORKER_POLL_S": "1"}
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
         "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false"}

pytestmark = [pytest.mark.slow, pytest.mark.s3]


# -- helpers -----------------------------------------------------------------------------


def _stop(proc: subprocess.Popen) -> None:
    stop_process(proc, timeout=20)


def _one_format_campaign(tmp_path: Path) -> Path:
    """The demo campaign with one format: 7 images, two worker batches (4 + 3)."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    path = tmp_path / "configs/campaigns/weekly-demo.yaml"
    text = path.read_text(encoding="utf-8").replace('formats: ["1:1", "9:16"]', 'formats: ["1:1"]')
    path.write_text(text, encoding="utf-8")
    return path


def _settings(tmp_path: Path, store: str, generation: str = "workers", max_batch: int = 4) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(f"kind: settings\nengine:\n  preview_scale: 0.5\n  max_batch: {max_batch}\n"
                    f"store: {store}\ngeneration: {generation}\n", encoding="utf-8")
    return path


class Worker:
    """`zpipe worker` processes against one Prefect server, started and killed at will."""

    def __init__(self, api_url: str, settings: Path, env: dict[str, str], logs: Path):
        self.api_url, self.settings, self.env, self.logs = api_url, settings, env, logs
        self.procs: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        log = open(self.logs / f"worker{len(self.procs)}.log", "wb")  # noqa: SIM115 - closed by the OS
        proc = subprocess.Popen([str(BIN / "zpipe"), "worker", "--settings", str(self.settings)],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={**self.env, "PREFECT_API_URL": self.api_url})
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: subprocess.Popen, timeout: float = 120) -> None:
        """Until the server lists this worker as subscribed to generation batches."""
        from prefect.client.orchestration import get_client

        def subscribed() -> bool:
            assert proc.poll() is None, self.log(len(self.procs) - 1)
            with get_client(sync_client=True) as client:
                return any(worker["identifier"].endswith(f"-{proc.pid}")
                           for worker in generation_workers(client))
        wait_for("the worker to subscribe", subscribed, timeout, every=0.5)

    def log(self, index: int) -> str:
        return (self.logs / f"worker{index}.log").read_text(errors="replace")[-3000:]

    def stop_all(self) -> None:
        for proc in self.procs:
            _stop(proc)


def _in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `target` in a thread with this context (Prefect's settings live in it)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = target()
        except Exception as exc:  # surfaced by the test's assertions
            box["error"] = exc

    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
    thread.start()
    return thread, box


def _generation_runs(client, **filters: Any) -> list:
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterTags

    return client.read_task_runs(task_run_filter=TaskRunFilter(
        tags=TaskRunFilterTags(all_=[GENERATION_TAG]), **filters), limit=200)


def _heartbeat_of(client, task_run_id) -> list:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterTaskRunId

    return [a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
        task_run_id=ArtifactFilterTaskRunId(any_=[task_run_id]))) if
        (a.description or "").startswith(HEARTBEAT)]


def _published(s3, bucket: str) -> list[str]:
    """Every object key in the bucket (paginated), records included."""
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys


def _check_exactly_once(bucket: str, expected: int) -> list[dict]:
    """`expected` images, each once: valid sidecars, distinct content ids, nothing else."""
    sidecars = check_campaign_objects(S3Store(bucket, prefix=PREFIX), expected)
    content_ids = [s["content_id"] for s in sidecars]
    assert len(set(content_ids)) == expected, content_ids
    return sidecars


@pytest.fixture()
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server.env()


# -- (a) a worker killed mid-batch --------------------------------------------------------


def test_worker_killed_mid_batch_is_handed_over_and_every_image_made_once(
        prefect_api, zpipe_cache, s3_server, s3_bucket, s3_env, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilterState, TaskRunFilterStateType
    from prefect.client.schemas.objects import StateType

    from flows.campaign import weekly_campaign

    for name, value in WORKER_ENV.items():
        monkeypatch.setenv(name, value)
    store = f"s3://{s3_bucket}/{PREFIX}"
    settings = _settings(tmp_path, store)
    campaign = _one_format_campaign(tmp_path)
    env = {**os.environ, "ZPIPE_CACHE": str(zpipe_cache)}
    workers = Worker(prefect_api, settings, env, tmp_path)
    first = workers.start()
    try:
        workers.wait_ready(first)
        thread, box = _in_thread(lambda: weekly_campaign(str(campaign), week="2026-W48",
                                                         settings=str(settings)))

        # 1. Mid-batch, seen from the server: a generation run RUNNING whose worker beats
        running = TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING]))

        def generating():
            with get_client(sync_client=True) as client:
                return next((run for run in _generation_runs(client, state=running)
                             if run.start_time and _heartbeat_of(client, run.id)), None)
        victim = wait_for("a batch generating on the worker", generating, timeout=120, every=0.2)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        with get_client(sync_client=True) as client:
            assert client.read_task_run(victim.id).state.type == StateType.RUNNING, \
                "the batch finished before the kill: not killed mid-batch"

        # 2. A new worker comes up; the flow hands the dead worker's batches to it
        second = workers.start()
        thread.join(timeout=240)
        assert not thread.is_alive(), "the campaign never finished after the worker died"
        assert "error" not in box, box
        summary = box["value"]
        assert len(summary.created) == 7 and not summary.failed and not summary.existing

        # 3. Every image exactly once in S3; the killed run says it was handed over
        sidecars = _check_exactly_once(s3_bucket, 7)
        pids = {s["timings"]["engine_pid"] for s in sidecars}
        assert second.pid in pids and pids <= {first.pid, second.pid}, pids
        with get_client(sync_client=True) as client:
            killed = client.read_task_run(victim.id).state
            since = [r for r in _generation_runs(client) if r.created and victim.created
                     and r.created >= victim.created]
        assert killed.type == StateType.CRASHED and killed.message.startswith(HANDED_OVER), killed
        assert "heartbeat" in killed.message
        assert any(r.state.type == StateType.COMPLETED and r.id != victim.id for r in since)

        # 4. A rerun of the week makes nothing: every sidecar is there
        rerun = weekly_campaign(str(campaign), week="2026-W48", settings=str(settings))
        assert rerun.created == [] and len(rerun.existing) == 7
        _check_exactly_once(s3_bucket, 7)
    finally:
        workers.stop_all()


# -- (a2) three resident workers share the batches; one dies mid-batch ---------------------


def test_three_workers_share_the_batches_and_a_killed_ones_batch_finishes_on_another(
        prefect_api, zpipe_cache, s3_server, s3_bucket, s3_env, tmp_path, monkeypatch):
    """N resident workers on one machine (one per GPU): a week's batches spread
    over all of them; SIGKILL of one mid-batch hands its batch to a worker still running;
    every image exists exactly once."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilterState, TaskRunFilterStateType
    from prefect.client.schemas.objects import StateType

    from flows.campaign import weekly_campaign

    for name, value in WORKER_ENV.items():
        monkeypatch.setenv(name, value)
    store = f"s3://{s3_bucket}/{PREFIX}"
    settings = _settings(tmp_path, store, max_batch=1)  # 7 batches of one image
    campaign = _one_format_campaign(tmp_path)
    env = {**os.environ, "ZPIPE_CACHE": str(zpipe_cache)}
    workers = Worker(prefect_api, settings, env, tmp_path)
    procs = [workers.start() for _ in range(3)]
    try:
        for proc in procs:
            workers.wait_ready(proc)
        thread, box = _in_thread(lambda: weekly_campaign(str(campaign), week="2026-W48",
                                                         settings=str(settings)))

        # 1. Mid-batch: kill the worker whose heartbeat names a RUNNING batch (the others go on)
        running = TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING]))

        def generating():
            with get_client(sync_client=True) as client:
                for run in _generation_runs(client, state=running):
                    for beat in _heartbeat_of(client, run.id):
                        pid = int(beat.description.split(" pid ")[1].split(",")[0])
                        if pid in {p.pid for p in procs}:
                            return run, pid
            return None
        victim, victim_pid = wait_for("a batch generating on a worker", generating, timeout=120, every=0.2)
        killed = next(p for p in procs if p.pid == victim_pid)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
        survivors = {p.pid for p in procs if p is not killed}

        # 2. The campaign finishes on the two workers still running: nothing new is started
        thread.join(timeout=300)
        assert not thread.is_alive(), "the campaign never finished after a worker died"
        assert "error" not in box, box
        summary = box["value"]
        assert len(summary.created) == 7 and not summary.failed and not summary.existing

        # 3. Every image exactly once, made by at least two workers; the dead one's batch elsewhere
        sidecars = _check_exactly_once(s3_bucket, 7)
        pids = [s["timings"]["engine_pid"] for s in sidecars]
        assert set(pids) <= {p.pid for p in procs} and len(set(pids)) >= 2, pids
        assert set(pids) & survivors
        with get_client(sync_client=True) as client:
            dead = client.read_task_run(victim.id).state
        assert dead.type == StateType.CRASHED and dead.message.startswith(HANDED_OVER), dead
        print(f"images per worker: { {pid: pids.count(pid) for pid in set(pids)} }")
    finally:
        workers.stop_all()


# -- (b) the Prefect server restarts during a deployment run -----------------------------


class PrefectServer:
    """A `prefect server start` of our own (SQLite under `home`), killed and restarted at will."""

    def __init__(self, home: Path):
        self.home, self.port, self.starts = home, _free_port(), 0
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.starts += 1
        log_path = self.home / f"server{self.starts}.log"
        env = {**os.environ, **QUIET, "PREFECT_HOME": str(self.home)}
        env.pop("PREFECT_API_URL", None)
        self.proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115
        _wait_http(f"{self.url}/health", self.proc, log_path, timeout=180)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture()
def own_server(tmp_path) -> Iterator[PrefectServer]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = PrefectServer(tmp_path / "prefect-home")
    server.home.mkdir()
    server.start()
    try:
        with temporary_settings({PREFECT_API_URL: server.url}):
            yield server
    finally:
        if server.proc is not None:
            _stop(server.proc)


def _wait_final(client, flow_run_id, timeout: float):
    def final():
        run = client.read_flow_run(flow_run_id)
        return run if run.state and run.state.is_final() else None
    return wait_for(f"flow run {flow_run_id} to end", final, timeout, every=1)


def test_server_restart_during_a_deployment_run_ends_clearly_and_rerun_makes_only_missing(
        own_server, zpipe_cache, s3_server, s3_bucket, s3_env, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilterFlowRunId,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    store = f"s3://{s3_bucket}/{PREFIX}"
    settings = _settings(tmp_path, store)
    campaign = _one_format_campaign(tmp_path)
    env = {**os.environ, **WORKER_ENV, "ZPIPE_CACHE": str(zpipe_cache),
           "PREFECT_API_URL": own_server.url, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    workers = Worker(own_server.url, settings, env, tmp_path)
    worker = workers.start()
    serve = subprocess.Popen(  # `zpipe serve` for the one campaign (what `zpipe up` runs)
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from flows.deployments import serve_all; "
         "serve_all(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))",
         str(campaign.parent), str(campaign.parent.parent / "brands"), str(settings)],
        cwd=REPO, env=env, stdout=open(tmp_path / "serve.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT)
    s3 = s3_server.client()

    def images() -> dict[str, Any]:
        """Image key -> LastModified, for images whose sidecar is there (complete ones)."""
        keys = set(_published(s3, s3_bucket))
        return {k: s3.head_object(Bucket=s3_bucket, Key=k)["LastModified"] for k in keys
                if not k.endswith(".json") and f"{k}.json" in keys and "/_" not in k}
    try:
        workers.wait_ready(worker)
        with get_client(sync_client=True) as client:
            wait_for("the served deployment", lambda: _deployment_exists(client), timeout=120, every=1)
        first = run_deployment("weekly-campaign/weekly-demo", parameters={"week": "2026-W48"},
                               timeout=0)

        # 1. Mid-run (images published while the next batch generates), the server dies and
        #    comes back
        running = TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING]))

        def mid_run() -> int:
            with get_client(sync_client=True) as client:
                return (done := len(images())) and _generation_runs(client, state=running) and done
        done_before = wait_for("images published while a batch generates", mid_run, timeout=180,
                            every=0.3)
        own_server.kill()
        assert done_before < 7, "the run finished before the server was killed"
        own_server.start()  # same port, same SQLite database

        # 2. The run ends in a clear state: Completed, or failed saying to rerun
        with get_client(sync_client=True) as client:
            run = _wait_final(client, first.id, timeout=300)
        state = run.state
        assert state.type == StateType.COMPLETED or "rerun" in (state.message or ""), state
        before = images()
        assert len(before) == 7 or state.type != StateType.COMPLETED
        if state.type == StateType.COMPLETED:
            _check_exactly_once(s3_bucket, 7)

        # 3. A rerun makes exactly the missing images and leaves the others untouched
        second = run_deployment("weekly-campaign/weekly-demo", parameters={"week": "2026-W48"},
                                timeout=0)
        with get_client(sync_client=True) as client:
            rerun = _wait_final(client, second.id, timeout=300)
            batches = _generation_runs(client, flow_run_id=TaskRunFilterFlowRunId(any_=[second.id]))
        assert rerun.state.type == StateType.COMPLETED, rerun.state
        _check_exactly_once(s3_bucket, 7)
        after = images()
        rewritten = {k for k in after if before.get(k) != after[k]}
        assert rewritten == set(after) - set(before)
        assert bool(batches) == bool(rewritten), (len(batches), rewritten)
    finally:
        _stop(serve)
        workers.stop_all()


def _deployment_exists(client) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_deployment_by_name("weekly-campaign/weekly-demo")
    except ObjectNotFound:
        return False
    return True


# -- (c) duplicate and out-of-order comment events ---------------------------------------


def _queue_comment(ledger, comment_id: str, text: str, state: str = "queued", **extra: Any):
    """A ledger record as the intake writes it before emitting the event."""
    from datetime import UTC, datetime

    from tasks.comments.ledger import CommentState, extract_keywords

    now = datetime.now(UTC)
    record, won = ledger.claim(CommentState(
        id=comment_id, brand="demo", author="lin", post_id="p-1", text=text,
        keywords=extract_keywords(text), state=state, received_at=now, updated_at=now, **extra))
    assert won
    return record


def _reply_images(bucket: str) -> dict[str, list[str]]:
    """Reply image keys by comment id (the key is `<brand>/comments/<date>/<id>-<hash>.<ext>`)."""
    store = S3Store(bucket, prefix=PREFIX)
    images: dict[str, list[str]] = {}
    for key in store.list("demo/comments/"):
        if not key.endswith(".json"):
            comment_id = key.rsplit("/", 1)[1].rsplit("-", 1)[0]
            images.setdefault(comment_id, []).append(key)
            assert store.exists(f"{key}.json"), f"{key} has no sidecar"
    return images


def test_duplicate_and_out_of_order_comment_events_make_one_image_per_comment(
        prefect_api, zpipe_cache, s3_server, s3_bucket, s3_env, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.comment import comment_reply
    from tasks.comments.ledger import CommentLedger

    store = f"s3://{s3_bucket}/{PREFIX}"
    settings = _settings(tmp_path, store, generation="local")
    ledger = CommentLedger(S3Store(s3_bucket, prefix=PREFIX))
    for comment_id, text in [("c-a", "想要一杯桂花拿铁"), ("c-b", "周末去露营带上咖啡"),
                             ("c-c", "rainy day hot cocoa please"), ("c-d", "秋天的燕麦拿铁")]:
        _queue_comment(ledger, comment_id, text)
    _queue_comment(ledger, "c-x", "请加微信", state="rejected", reason="contains the blocked term")

    def deliver(comment_id: str) -> Callable[[], Any]:
        """The trigger's flow run for one `zpipe.comment.received` event."""
        return lambda: comment_reply(comment_id=comment_id, brand="demo",
                                     brands_dir=str(REPO / "configs/brands"), settings=str(settings))

    # 1. B's event before A's, and A's event twice at the same moment
    b_thread, b_box = _in_thread(deliver("c-b"))
    a_runs = [_in_thread(deliver("c-a")) for _ in range(2)]
    # 2. C is "running" under a flow run that is gone (its process died): a redelivery takes over
    ledger.update("c-c", state="running", flow_run_id="0b5c2a7e-1d2f-4c3b-9a8d-7e6f5a4b3c2d")
    c_thread, c_box = _in_thread(deliver("c-c"))
    for thread, _ in [(b_thread, b_box), *a_runs, (c_thread, c_box)]:
        thread.join(timeout=240)
        assert not thread.is_alive()
    boxes = [b_box, *(box for _, box in a_runs), c_box]
    assert all("error" not in box for box in boxes), boxes
    a_keys = [box["value"] for _, box in a_runs]
    done_a = ledger.get("c-a")
    assert done_a.state == "done" and done_a.image_key in a_keys
    assert set(a_keys) <= {done_a.image_key, None}  # the loser names the key, or nothing yet

    # 3. D's event is redelivered while its first run is still running: the second run ends
    #    at once without generating, the first one answers
    d_thread, d_box = _in_thread(deliver("c-d"))
    first_d = wait_for("c-d's first run to claim it",
                    lambda: (r := ledger.get("c-d")).state == "running" and r, timeout=120, every=0.1)
    second = deliver("c-d")()
    assert second is None or second == ledger.get("c-d").image_key
    d_thread.join(timeout=240)
    assert "error" not in d_box, d_box
    done_d = ledger.get("c-d")
    assert done_d.state == "done" and done_d.flow_run_id == first_d.flow_run_id

    # 4. Late redeliveries after the images are done, and an event for a rejected comment
    before = {cid: ledger.get(cid) for cid in ("c-a", "c-b", "c-c", "c-d", "c-x")}
    for comment_id in ("c-a", "c-b", "c-x"):
        assert deliver(comment_id)() == before[comment_id].image_key
    assert {cid: ledger.get(cid) for cid in before} == before, "a late event changed the ledger"

    # 5. Exactly one labelled image per answered comment, none for the rejected one
    images = _reply_images(s3_bucket)
    assert sorted(images) == ["c-a", "c-b", "c-c", "c-d"], images
    assert all(len(keys) == 1 for keys in images.values()), images
    for comment_id, (key,) in images.items():
        record = ledger.get(comment_id)
        assert record.state == "done" and record.image_key == key and record.reason is None
    assert ledger.get("c-x").state == "rejected" and ledger.get("c-x").image_key is None
    with get_client(sync_client=True) as client:  # the one that took over C left its run id
        assert client.read_flow_run(ledger.get("c-c").flow_run_id).state.is_completed()


def test_a_handed_over_run_without_a_state_yet_is_waited_for(monkeypatch):
    """Right after a server restart a batch handed over again can exist with no state yet;
    Prefect's future then raises RuntimeError at once. The flow must wait and look, not fail
    (seen in CI: "Task run ... has no state which means it hasn't started yet")."""
    import contextlib
    import uuid

    from prefect.futures import PrefectDistributedFuture

    import tasks.orchestration.handover as generate

    run_id = uuid.uuid4()
    answers = iter([RuntimeError(f"Task run {run_id} has no state which means it hasn't started yet."),
                    ["image"]])

    def result(self, timeout=None, raise_on_failure=True):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    looked, slept = [], []
    monkeypatch.setattr(PrefectDistributedFuture, "result", result)
    monkeypatch.setattr(generate.HandedOver, "_look", lambda self, client: looked.append(client))
    monkeypatch.setattr(generate, "get_client", lambda sync_client: contextlib.nullcontext("client"))
    monkeypatch.setattr(generate.time, "sleep", slept.append)
    future = generate.HandedOver(lambda: type("Run", (), {"task_run_id": run_id})(), "generate mon",
                                 generate.WorkerPolicy(poll_s=2))
    assert future.result() == ["image"]
    assert looked == ["client"] and slept == [2]

    other = RuntimeError("something else broke")  # any other RuntimeError still propagates
    answers = iter([other])
    with pytest.raises(RuntimeError, match="something else broke"):
        future.result()
