"""The always-on system end to end: `zpipe up` with the real processes, a signed comment over
HTTP becomes a labelled image in S3, deployments carry their schedules, `zpipe down` cleans up.

The stack is started once per test session and shared with tests/integration/test_load.py and
tests/integration/test_secrets.py (`shared_stack`): it takes about a minute to start on 2 cores. It gets
KNOWN random S3 keys and intake secret through the environment, as a user would set them, so
that the secret scan knows what to look for, and low intake rate limits, so that the load test's
burst accepts only a few comments (the rest are answered 429).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from flows.services.intake import post_comment
from tasks.labels.watermark import read_labels
from tests.helpers import assert_visible_label

REPO = Path(__file__).resolve().parents[2]
ZPIPE = str(Path(sys.executable).parent / "zpipe")
# The intake's limits in the shared stack: a burst of 1,000 comments gets at most this many
# accepted per minute (each one generates an image); every other comment is answered 429.
# 4 replies are one wave of `zpipe serve`'s 4 parallel flow runs: ~40 s on 2 cores (8 took two
# waves, ~80 s), which keeps the load test within its 2-minute budget.
RATE_LIMITS = {"ZPIPE_INTAKE_PER_MINUTE": "4", "ZPIPE_INTAKE_PER_AUTHOR_PER_MINUTE": "2"}

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _zpipe(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([ZPIPE, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@dataclass(frozen=True)
class KnownSecrets:
    """Random S3 keys shaped like AWS's and an intake secret, new for every test session."""

    access_key: str
    secret_key: str
    intake_secret: str

    @classmethod
    def random(cls) -> KnownSecrets:
        upper = string.ascii_uppercase + string.digits
        aws_secret = string.ascii_letters + string.digits + "/+"  # AWS secret keys use / and +
        return cls(access_key="AKIA" + "".join(secrets.choice(upper) for _ in range(16)),
                   secret_key="".join(secrets.choice(aws_secret) for _ in range(40)),
                   intake_secret=secrets.token_urlsafe(32))

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "ZPIPE_INTAKE_SECRET": self.intake_secret}

    def __repr__(self) -> str:  # pytest prints fixture values in failures: never the secrets
        return "KnownSecrets(<hidden>)"


@dataclass(frozen=True)
class RunningStack:
    """A stack started by `zpipe up`: its home, the environment it got, `zpipe status --json`."""

    home: Path
    env: dict[str, str] = field(repr=False)  # the caller's environment, known secrets included
    info: dict
    secrets: KnownSecrets
    outputs: list[str] = field(repr=False)  # what the zpipe commands printed, for the secret scan


_SHARED = pytest.StashKey[RunningStack]()
_FAILED = pytest.StashKey[str]()


def shared_stack(request: pytest.FixtureRequest, zpipe_cache: Path) -> RunningStack:
    """The session's one stack, started by the first module that needs it (see release_stack)."""
    config = request.config
    if _FAILED in config.stash:
        pytest.fail(f"the shared stack did not start: {config.stash[_FAILED]}")
    if _SHARED in config.stash:
        return config.stash[_SHARED]
    home = request.getfixturevalue("tmp_path_factory").mktemp("zpipe-home")
    known = KnownSecrets.random()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "PREFECT_", "ZPIPE_INTAKE"))}
    env.update({**known.env(), **RATE_LIMITS, "ZPIPE_CACHE": str(zpipe_cache)})
    up = _zpipe("up", "--home", str(home), "--prefect-port", str(_free_port()),
                "--s3-port", str(_free_port()), "--intake-port", str(_free_port()), env=env)
    running = RunningStack(home, env, {}, known, [up.stdout, up.stderr])
    config.stash[_SHARED] = running  # stopped at the end of the session even after a failed `up`
    request.session.addfinalizer(lambda: stop_shared_stack(config))
    if up.returncode != 0:
        config.stash[_FAILED] = f"`zpipe up` exited {up.returncode}"
        pytest.fail(f"`zpipe up` failed:\n{up.stdout}{up.stderr}")
    status = _zpipe("status", "--home", str(home), "--json", env=env)
    running.outputs.extend([status.stdout, status.stderr])
    if status.returncode != 0:
        config.stash[_FAILED] = "`zpipe status` reports an unhealthy stack"
        pytest.fail(f"`zpipe status` after `zpipe up`:\n{status.stdout}{status.stderr}")
    running.info.update(json.loads(status.stdout))
    return running


def release_stack(request: pytest.FixtureRequest) -> None:
    """Stop the shared stack after the last module that uses it: idle, it slows the other tests."""
    items = request.session.items
    ours = [i for i, item in enumerate(items) if item.nodeid.startswith(request.node.nodeid + "::")]
    later = items[max(ours) + 1:] if ours else []
    if not any("stack" in item.fixturenames for item in later):
        stop_shared_stack(request.config)


def stop_shared_stack(config: pytest.Config) -> None:
    """`zpipe down`, then every process of the stack must be gone; idempotent."""
    running = config.stash.get(_SHARED, None)
    if running is None:
        return
    del config.stash[_SHARED]
    down = _zpipe("down", "--home", str(running.home), env=running.env)
    assert down.returncode == 0, down.stdout + down.stderr
    for name, proc in running.info.get("processes", {}).items():
        assert not psutil.pid_exists(proc["pid"]) or psutil.Process(proc["pid"]).status() == \
            psutil.STATUS_ZOMBIE, f"{name} still running after `zpipe down`"


@pytest.fixture(scope="module")
def stack(request, zpipe_cache):
    """The shared `zpipe up` stack (started on first use, stopped after its last user)."""
    yield shared_stack(request, zpipe_cache)
    release_stack(request)


def _s3_client(info: dict):
    import boto3

    creds = json.loads(Path(info["s3_credentials_file"]).read_text())
    return boto3.client("s3", endpoint_url=info["s3_endpoint_url"], region_name="us-east-1",
                        aws_access_key_id=creds["aws_access_key_id"],
                        aws_secret_access_key=creds["aws_secret_access_key"])


def list_keys(info: dict, prefix: str = "") -> list[str]:
    """Every object key in the stack's bucket under `prefix`."""
    pages = _s3_client(info).get_paginator("list_objects_v2").paginate(Bucket=info["bucket"], Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def reply_images(info: dict, brand: str = "demo") -> dict[str, list[str]]:
    """Reply image keys (`<brand>/comments/<date>/<id>-<hash>.<ext>`) by comment id."""
    found: dict[str, list[str]] = {}
    for key in list_keys(info, f"{brand}/comments/"):
        if not key.endswith(".json"):
            comment_id = key.rsplit("/", 1)[-1].rsplit(".", 1)[0].rsplit("-", 1)[0]
            found.setdefault(comment_id, []).append(key)
    return found


def post_accepted(info: dict, secret: str, comment: dict, timeout: float = 90) -> httpx.Response:
    """POST a comment, waiting out 429s as their Retry-After says (another test's burst)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = post_comment(info["intake_url"], secret, comment)
        if answer.status_code != 429 or time.monotonic() > deadline:
            return answer
        time.sleep(int(answer.headers["Retry-After"]))


def wait_states(info: dict, ids: list[str], timeout: float) -> dict[str, dict]:
    """GET /v1/comments/{id} until every comment is done, failed or rejected (or the timeout)."""
    deadline = time.monotonic() + timeout
    states: dict[str, dict] = {}
    with httpx.Client(base_url=info["intake_url"], timeout=10) as client:
        while True:
            for comment_id in ids:
                if states.get(comment_id, {}).get("state") not in ("done", "failed", "rejected"):
                    states[comment_id] = client.get(f"/v1/comments/{comment_id}").json()
            pending = [i for i in ids if states[i]["state"] not in ("done", "failed", "rejected")]
            if not pending or time.monotonic() > deadline:
                return states
            time.sleep(1)


def test_status_reports_every_endpoint_and_secret_files_are_private(stack):
    info = stack.info
    for key in ("prefect_api_url", "prefect_ui_url", "s3_endpoint_url", "bucket", "intake_url",
                "intake_secret_file", "s3_credentials_file"):
        assert info[key], key
    assert set(info["processes"]) == {"prefect-server", "s3", "worker", "serve", "intake"}
    assert all(p["state"] == "running" for p in info["processes"].values()), info["processes"]
    for secret_file in (info["intake_secret_file"], info["s3_credentials_file"]):
        assert os.stat(secret_file).st_mode & 0o777 == 0o600


def test_deployments_are_registered_with_schedules_and_trigger(stack):
    info = stack.info
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
    # the stack runs the fast path: a comment not answered within 60 s gets the fallback run
    [comment] = [t for t in triggers if "zpipe.comment.received" in t.get("after", [])]
    assert comment["posture"] == "Proactive" and comment["expect"] == ["zpipe.comment.answered"], comment
    assert comment["within"] == 60 and comment["for_each"] == ["prefect.resource.id"], comment


def test_signed_comment_becomes_a_labelled_image_in_s3(stack):
    info = stack.info
    secret = Path(info["intake_secret_file"]).read_text().strip()
    comment = {"id": "c-e2e-1", "author": "小林", "post_id": "p-1", "brand": "demo",
               "text": "想要一杯桂花拿铁，秋天的味道！ osmanthus latte please"}
    answer = post_accepted(info, secret, comment)
    started = time.monotonic()
    assert answer.status_code == 202, answer.text
    assert answer.json()["status_url"] == "/v1/comments/c-e2e-1"
    status = wait_states(info, ["c-e2e-1"], timeout=240)["c-e2e-1"]
    assert status["state"] == "done", status
    assert status["flow_run_id"]
    elapsed = time.monotonic() - started
    image = httpx.get(status["image_url"], timeout=30)  # the presigned URL works over HTTP
    assert image.status_code == 200
    labels = read_labels(image.content)
    assert labels["aigc"]["Label"] == "1"
    replies = reply_images(info)["c-e2e-1"]
    assert len(replies) == 1, replies
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
    assert reply_images(info)["c-e2e-1"] == replies


def test_bad_signature_is_refused(stack):
    info = stack.info
    answer = post_comment(info["intake_url"], "not-the-secret-at-all",
                          {"id": "c-bad", "author": "x", "post_id": "p", "brand": "demo",
                           "text": "hello"})
    assert answer.status_code == 401
