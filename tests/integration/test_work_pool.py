"""Flows on a real Prefect work pool, as `infra/prefect.yaml` declares them: `prefect deploy`
registers the deployments, `prefect worker start --pool zpipe-flows` (a process worker) runs
each flow run in a new process, a resident `zpipe worker` makes the images, SeaweedFS stores
them. End to end on a real server: the campaign's schedule is on the server and a run of it
makes the week; a comment event triggers the reply deployment and its image is stored.

The project file is `infra/prefect.yaml` itself with two changes a user makes too: the pull
step's directory is this checkout (instead of the image's /app) and the deployments get a
settings file (the tests' small preview size and the S3 store).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from tasks.store.objects import S3Store
from tests.conftest import REPO
from tests.helpers import check_campaign_objects, wait_for

BIN = Path(sys.executable).parent
PREFIX = "pool"

pytestmark = [pytest.mark.slow, pytest.mark.s3]


def _project_file(tmp_path: Path, settings: Path) -> Path:
    """infra/prefect.yaml, pulled from this checkout, with the test settings as a parameter."""
    doc = yaml.safe_load((REPO / "infra/prefect.yaml").read_text(encoding="utf-8"))
    doc["pull"] = [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    for deployment in doc["deployments"]:
        if deployment["flow_name"] in ("weekly-campaign", "comment-reply"):
            deployment.setdefault("parameters", {})["settings"] = str(settings)
        if deployment["flow_name"] == "comment-reply":  # the fallback after 10 s (Prefect's least), not 60
            [trigger] = deployment["triggers"]
            assert trigger["posture"] == "Proactive" and trigger["within"] == 60
            trigger["within"] = 10
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def test_flows_run_on_a_process_work_pool(prefect_api, zpipe_cache, s3_server, s3_bucket, tmp_path,
                                          monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.events import emit_event

    from tasks.comments.ledger import CommentLedger, CommentState, extract_keywords

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    store = f"s3://{s3_bucket}/{PREFIX}"
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"kind: settings\nengine:\n  preview_scale: 0.25\n  max_batch: 4\n"
                        f"store: {store}\ngeneration: workers\n", encoding="utf-8")
    env = {**os.environ, **s3_server.env(), "PREFECT_API_URL": prefect_api,
           "ZPIPE_CACHE": str(zpipe_cache), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_WORKER_PREFETCH_SECONDS": "5"}

    def prefect(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done

    # 1. The pool and the deployments, as infra/prefect.yaml's header says
    prefect("work-pool", "create", "zpipe-flows", "--type", "process")
    prefect("deploy", "--all", "--prefect-file", str(_project_file(tmp_path, settings)))
    with get_client(sync_client=True) as client:
        campaign = client.read_deployment_by_name("weekly-campaign/weekly-demo")
        comment = client.read_deployment_by_name("comment-reply/on-comment")
        assert campaign.work_pool_name == "zpipe-flows" and comment.work_pool_name == "zpipe-flows"
        [schedule] = campaign.schedules
        assert schedule.schedule.cron == "0 9 * * 1" and schedule.schedule.timezone == "Asia/Shanghai"

    # 2. A process worker for flow runs, a resident worker for the GPU work
    logs = []
    procs = []
    for name, argv in (("pool-worker", [str(BIN / "prefect"), "worker", "start", "--pool", "zpipe-flows",
                                        "--type", "process"]),
                       ("gpu-worker", [str(BIN / "zpipe"), "worker", "--settings", str(settings)])):
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        # 3. The schedule is the server's: its next runs are Mondays 09:00 Beijing time (01:00 UTC)
        def scheduled():
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=["weekly-demo"])))
            return [r for r in runs if r.state and r.state.type == StateType.SCHEDULED]
        upcoming = wait_for("the scheduler to plan the campaign's runs", scheduled, timeout=90, every=1.0)
        for run in upcoming:
            when = run.expected_start_time.astimezone(UTC)
            assert (when.weekday(), when.hour, when.minute) == (0, 1, 0), when

        # 4. A run of the campaign deployment now: the pool worker runs it in its own process
        run = run_deployment("weekly-campaign/weekly-demo", parameters={"week": "2026-W48"},
                             timeout=600, poll_interval=2)
        assert run.state.type == StateType.COMPLETED, (run.state, _tail(tmp_path / "pool-worker.log"))
        sidecars = check_campaign_objects(S3Store(s3_bucket, prefix=PREFIX), 14)
        pids = {s["timings"]["engine_pid"] for s in sidecars}
        assert pids == {procs[1].pid}, "the images were not made by the resident worker"

        # 5. A comment no fast path answered: the event's trigger makes the reply's run (the
        #    fallback, after the trigger's window), and the pool runs it
        now = datetime.now(UTC)
        text = "周末去露营带上咖啡"
        ledger = CommentLedger(S3Store(s3_bucket, prefix=PREFIX))
        ledger.claim(CommentState(id="pool-c1", brand="demo", author="lin", post_id="p-1", text=text,
                                  keywords=extract_keywords(text), state="queued",
                                  received_at=now, updated_at=now))
        emit_event(event="zpipe.comment.received", resource={"prefect.resource.id": "zpipe.comment.pool-c1"},
                   payload={"id": "pool-c1", "brand": "demo"})
        done = wait_for("the comment's reply",
                        lambda: (r := ledger.get("pool-c1")).state in ("done", "failed") and r,
                        timeout=240, every=1)
        assert done.state == "done", (done, _tail(tmp_path / "pool-worker.log"))
        assert S3Store(s3_bucket, prefix=PREFIX).exists(done.image_key)
        with get_client(sync_client=True) as client:
            [reply_run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                id={"any_": [done.flow_run_id]}))
        assert reply_run.deployment_id == comment.id and reply_run.work_pool_name == "zpipe-flows"
        assert done.image_key.startswith("demo/comments/") and "/pool-c1-" in done.image_key
        sidecar = json.loads(S3Store(s3_bucket, prefix=PREFIX).get(f"{done.image_key}.json"))
        assert sidecar["key"] == done.image_key and "周末" in json.dumps(sidecar, ensure_ascii=False)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
