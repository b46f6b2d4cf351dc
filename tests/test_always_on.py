"""The always-on system end to end: `zpipe up` with the real processes, a signed comment over
HTTP becomes a labelled image in S3, deployments carry their schedules, `zpipe down` cleans up."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from flows.intake import post_comment
from tasks.watermark import read_labels
from tests.helpers import assert_visible_label

REPO = Path(__file__).resolve().parents[1]
ZPIPE = str(Path(sys.executable).parent / "zpipe")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _zpipe(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([ZPIPE, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, zpipe_cache):
    """A whole local stack, started by `zpipe up` in a temp home, stopped by `zpipe down`."""
    home = tmp_path_factory.mktemp("zpipe-home")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "PREFECT_", "ZPIPE_INTAKE"))}
    env["ZPIPE_CACHE"] = str(zpipe_cache)
    up = _zpipe("up", "--home", str(home), "--prefect-port", str(_free_port()),
                "--s3-port", str(_free_port()), "--intake-port", str(_free_port()), env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    status = _zpipe("status", "--home", str(home), "--json", env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    info = json.loads(status.stdout)
    yield home, env, info
    down = _zpipe("down", "--home", str(home), env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    for name, proc in info["processes"].items():
        assert not psutil.pid_exists(proc["pid"]) or psutil.Process(proc["pid"]).status() == \
            psutil.STATUS_ZOMBIE, f"{name} still running after `zpipe down`"


def _s3_client(info: dict):
    import boto3

    creds = json.loads(Path(info["s3_credentials_file"]).read_text())
    return boto3.client("s3", endpoint_url=info["s3_endpoint_url"], region_name="us-east-1",
                        aws_access_key_id=creds["aws_access_key_id"],
                        aws_secret_access_key=creds["aws_secret_access_key"])


def test_status_reports_every_endpoint_and_secret_files_are_private(stack):
    _, _, info = stack
    for key in ("prefect_api_url", "prefect_ui_url", "s3_endpoint_url", "bucket", "intake_url",
                "intake_secret_file", "s3_credentials_file"):
        assert info[key], key
    assert set(info["processes"]) == {"prefect-server", "s3", "worker", "serve", "intake"}
    assert all(p["state"] == "running" for p in info["processes"].values()), info["processes"]
    for secret_file in (info["intake_secret_file"], info["s3_credentials_file"]):
        assert os.stat(secret_file).st_mode & 0o777 == 0o600


def test_deployments_are_registered_with_schedules_and_trigger(stack):
    _, _, info = stack
    api = info["prefect_api_url"]
    deadline = time.monotonic() + 60
    while True:
        deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
        names = {d["name"] for d in deployments}
        if {"weekly-demo", "weekly-demo-hourly", "on-comment"} <= names or time.monotonic() > deadline:
            break
        time.sleep(1)
    by_name = {d["name"]: d for d in deployments}
    weekly = by_name["weekly-demo"]["schedules"][0]["schedule"]
    assert weekly["cron"] == "0 9 * * 1" and weekly["timezone"] == "Asia/Shanghai"
    hourly = by_name["weekly-demo-hourly"]["schedules"][0]["schedule"]
    assert hourly["cron"] == "0 * * * *"
    automations = httpx.post(f"{api}/automations/filter", json={}, timeout=10).json()
    triggers = [a["trigger"] for a in automations]
    assert any("zpipe.comment.received" in t.get("expect", []) for t in triggers), triggers


def test_signed_comment_becomes_a_labelled_image_in_s3(stack):
    _, _, info = stack
    secret = Path(info["intake_secret_file"]).read_text().strip()
    comment = {"id": "c-e2e-1", "author": "小林", "post_id": "p-1", "brand": "demo",
               "text": "想要一杯桂花拿铁，秋天的味道！ osmanthus latte please"}
    started = time.monotonic()
    answer = post_comment(info["intake_url"], secret, comment)
    assert answer.status_code == 202, answer.text
    status_url = info["intake_url"].rstrip("/") + answer.json()["status_url"]
    deadline = time.monotonic() + 240
    while True:
        status = httpx.get(status_url, timeout=10).json()
        if status["state"] in ("done", "failed", "rejected") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status["state"] == "done", status
    assert status["flow_run_id"]
    elapsed = time.monotonic() - started
    image = httpx.get(status["image_url"], timeout=30)  # the presigned URL works over HTTP
    assert image.status_code == 200
    labels = read_labels(image.content)
    assert labels["aigc"]["Label"] == "1"
    keys = [o["Key"] for o in _s3_client(info).list_objects_v2(Bucket=info["bucket"])["Contents"]]
    replies = [k for k in keys if k.startswith("demo/comments/") and not k.endswith(".json")]
    assert len(replies) == 1 and replies[0].split("/")[-1].startswith("c-e2e-1-")
    sidecar = json.loads(_s3_client(info).get_object(
        Bucket=info["bucket"], Key=replies[0] + ".json")["Body"].read())
    picture = Image.open(io.BytesIO(image.content)).convert("RGB")
    assert picture.size == (sidecar["size"]["width"], sidecar["size"]["height"])
    assert picture.height > picture.width  # 9:16 reply
    assert_visible_label(picture, sidecar["labels"]["explicit"])
    print(f"comment -> image in S3: {elapsed:.1f} s")

    # the same comment again (new signature): same answer, still one image
    again = post_comment(info["intake_url"], secret, comment, timestamp=int(time.time()) + 1)
    assert again.status_code == 200 and again.json()["state"] == "done"
    time.sleep(2)
    keys = [o["Key"] for o in _s3_client(info).list_objects_v2(Bucket=info["bucket"])["Contents"]]
    assert len([k for k in keys if k.startswith("demo/comments/") and not k.endswith(".json")]) == 1


def test_bad_signature_is_refused(stack):
    _, _, info = stack
    answer = post_comment(info["intake_url"], "not-the-secret-at-all",
                          {"id": "c-bad", "author": "x", "post_id": "p", "brand": "demo",
                           "text": "hello"})
    assert answer.status_code == 401
