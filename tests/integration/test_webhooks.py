"""Signed outbound webhooks against a real local HTTP receiver: signature and idempotent id,
retries with backoff through 5xx, a receiver that is down and comes back, the outbox when it
stays down (`zpipe webhooks pending|redeliver`), refusals, bad declarations, and the comment
flow telling the brand its reply is out."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from tasks.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from tasks.notify.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    OUTBOX,
    WebhookSpec,
    deliver,
    make_deliveries,
    notify,
    pending,
    redeliver,
)
from tasks.store.objects import LocalStore
from tests.conftest import REPO

SECRET = "whsec-test-7f3a"
ENV = {"ZPIPE_TEST_HOOK_SECRET": SECRET}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """A real HTTP receiver on loopback: checks each signature, answers from `script` (then
    200), and processes each delivery id once, as the README tells receivers to."""

    def __init__(self, port: int | None = None, script: list[int] | None = None):
        self.port = port or _free_port()
        self.script = list(script or [])
        self.requests: list[dict] = []
        self.processed: dict[str, dict] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                verify_signature(SECRET.encode(), self.headers[TIMESTAMP_HEADER],
                                 self.headers[SIGNATURE_HEADER], body, time.time())
                receiver.requests.append({"headers": dict(self.headers), "body": json.loads(body)})
                status = receiver.script.pop(0) if receiver.script else 200
                if status == 200:
                    receiver.processed.setdefault(self.headers[DELIVERY_HEADER], json.loads(body))
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"try later")

            def log_message(self, *args):
                pass

        self.server: ThreadingHTTPServer | None = None
        self._handler = Handler

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/zpipe"

    def start(self) -> Receiver:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture()
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def _spec(url: str, **extra) -> WebhookSpec:
    return WebhookSpec(url=url, secret_env="ZPIPE_TEST_HOOK_SECRET", **extra)


def test_a_delivery_is_signed_and_carries_its_idempotent_id(receiver, tmp_path):
    store = LocalStore(tmp_path)
    specs = [_spec(receiver.url), _spec(receiver.url + "?only-replies", events=["comment.replied"])]
    [done] = notify(store, specs, "campaign.week_finished", "run-1",
                    {"campaign": "weekly-demo", "week": "2026-W48", "created": 14}, env=ENV)
    assert done.status == "delivered" and done.attempts == 1
    [request] = receiver.requests  # the replies-only receiver was not called
    assert request["headers"][EVENT_HEADER] == "campaign.week_finished"
    assert request["headers"][DELIVERY_HEADER] == done.id == request["body"]["id"]
    assert request["body"]["event"] == "campaign.week_finished"
    assert request["body"]["data"] == {"campaign": "weekly-demo", "week": "2026-W48", "created": 14}
    assert store.list(OUTBOX) == []
    # the same event about the same subject has the same id (a receiver drops the repeat)
    assert make_deliveries(specs, "campaign.week_finished", "run-1", {})[0].id == done.id
    assert make_deliveries(specs, "campaign.week_finished", "run-2", {})[0].id != done.id


def test_5xx_and_429_are_retried_with_the_same_id_and_processed_once(tmp_path):
    receiver = Receiver(script=[503, 429, 500]).start()
    try:
        [delivery] = make_deliveries([_spec(receiver.url, patience_s=20)], "comment.replied", "c-1",
                                     {"comment_id": "c-1"})
        waits: list[float] = []
        done = deliver(delivery, ENV, sleep=lambda s: (waits.append(s), time.sleep(0.01)))
    finally:
        receiver.stop()
    assert done.status == "delivered" and done.attempts == 4
    assert waits == [0.5, 1.0, 2.0]  # exponential backoff
    assert {r["headers"][DELIVERY_HEADER] for r in receiver.requests} == {delivery.id}
    assert len({r["headers"][TIMESTAMP_HEADER] for r in receiver.requests}) >= 1  # signed per attempt
    assert list(receiver.processed) == [delivery.id]


def test_a_receiver_that_is_down_and_comes_back_gets_the_delivery(tmp_path):
    receiver = Receiver()  # not listening yet: connections are refused
    [delivery] = make_deliveries([_spec(receiver.url, patience_s=30)], "image.held", "run-9/held",
                                 {"held": ["held/demo/x.jpg"]})
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(done=deliver(delivery, ENV)))
    thread.start()
    time.sleep(1.6)  # two refused attempts (0.5 s and 1 s of backoff)
    receiver.start()
    try:
        thread.join(timeout=30)
    finally:
        receiver.stop()
    done = box["done"]
    assert done.status == "delivered" and done.attempts >= 2
    assert list(receiver.processed) == [delivery.id]


def test_a_receiver_down_past_the_patience_leaves_it_in_the_outbox_then_redelivery(tmp_path):
    store = LocalStore(tmp_path)
    port = _free_port()
    spec = WebhookSpec(url=f"http://127.0.0.1:{port}/hooks", secret_env="ZPIPE_TEST_HOOK_SECRET",
                       patience_s=1)
    [failed] = notify(store, [spec], "comment.replied", "c-7", {"comment_id": "c-7"}, env=ENV)
    assert failed.status == "failed" and "ConnectError" in failed.last_error
    [waiting] = pending(store)
    assert waiting.id == failed.id and waiting.body == failed.body

    from flows.cli.app import app

    runner = CliRunner(env={"ZPIPE_TEST_HOOK_SECRET": SECRET})
    listed = runner.invoke(app, ["webhooks", "pending", "--store", f"file://{tmp_path}"])
    assert listed.exit_code == 1 and failed.id in listed.output and "comment.replied" in listed.output

    receiver = Receiver(port=port).start()
    try:
        again = runner.invoke(app, ["webhooks", "redeliver", "--store", f"file://{tmp_path}"])
        assert again.exit_code == 0, again.output
        assert "delivered" in again.output
        assert pending(store) == [] and list(receiver.processed) == [failed.id]
        # a second delivery of the same id (a receiver that timed out on its answer) is dropped
        notify(store, [spec], "comment.replied", "c-7", {"comment_id": "c-7"}, env=ENV)
        assert len(receiver.requests) == 2 and list(receiver.processed) == [failed.id]
    finally:
        receiver.stop()
    empty = runner.invoke(app, ["webhooks", "pending", "--store", f"file://{tmp_path}"])
    assert empty.exit_code == 0 and "empty" in empty.output


def test_a_refusal_is_not_retried_and_a_missing_secret_names_its_variable(tmp_path):
    receiver = Receiver(script=[400]).start()
    try:
        [delivery] = make_deliveries([_spec(receiver.url, patience_s=20)], "image.held", "h", {})
        done = deliver(delivery, ENV)
    finally:
        receiver.stop()
    assert done.status == "failed" and done.attempts == 1 and done.last_error.startswith("HTTP 400")

    store = LocalStore(tmp_path)
    [nosecret] = notify(store, [_spec(receiver.url)], "image.held", "h", {}, env={})
    assert nosecret.status == "failed"
    assert "ZPIPE_TEST_HOOK_SECRET is not set" in nosecret.last_error
    assert [d.id for d in pending(store)] == [nosecret.id]  # kept: export it, then redeliver
    assert redeliver(store, env={}, patience_s=0)[0].status == "failed"


def test_bad_declarations_name_the_field():
    with pytest.raises(ValidationError, match="url"):
        WebhookSpec(url="ftp://example.com/x", secret_env="ZPIPE_HOOK")
    with pytest.raises(ValidationError, match="secret_env"):
        WebhookSpec(url="https://example.com/x", secret_env="my secret")
    with pytest.raises(ValidationError, match="secret"):  # a secret in YAML is refused
        WebhookSpec(url="https://example.com/x", secret_env="ZPIPE_HOOK", secret="hunter2")
    with pytest.raises(ValidationError, match="events"):
        WebhookSpec(url="https://example.com/x", secret_env="ZPIPE_HOOK", events=["campaign.started"])


def test_a_brand_yaml_declares_its_webhooks(tmp_path):
    import shutil

    from tasks.config.schema import load_config
    from tasks.core.errors import ConfigError

    shutil.copytree(REPO / "configs", tmp_path / "configs")
    text = (REPO / "configs/brands/demo.yaml").read_text(encoding="utf-8")
    tmp_path = tmp_path / "configs/brands"
    good = tmp_path / "demo.yaml"
    good.write_text(text + "webhooks:\n  - url: https://hooks.example.com/zpipe\n"
                    "    secret_env: DEMO_HOOK_SECRET\n    events: [comment.replied]\n", encoding="utf-8")
    brand = load_config(good)
    assert brand.webhooks[0].events == ["comment.replied"] and brand.webhooks[0].patience_s == 30
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "webhooks:\n  - url: https://hooks.example.com/zpipe\n"
                   "    secret: hunter2\n    secret_env: DEMO_HOOK_SECRET\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"webhooks.*secret"):
        load_config(bad)


@pytest.mark.slow
def test_the_comment_flow_tells_the_brand_its_reply_is_out(prefect_api, zpipe_cache, tmp_path,
                                                           monkeypatch, receiver):
    import shutil

    from flows.comment import comment_reply
    from tasks.comments.ledger import CommentLedger, CommentState, extract_keywords

    monkeypatch.setenv("ZPIPE_CACHE", str(zpipe_cache))
    monkeypatch.setenv("ZPIPE_TEST_HOOK_SECRET", SECRET)
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    brands = tmp_path / "configs/brands"
    brand_yaml = brands / "demo.yaml"
    brand_yaml.write_text(brand_yaml.read_text(encoding="utf-8") + (
        f"webhooks:\n  - url: {receiver.url}\n    secret_env: ZPIPE_TEST_HOOK_SECRET\n"
        "    events: [comment.replied, image.held]\n"), encoding="utf-8")
    out = tmp_path / "out"
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"kind: settings\nengine:\n  preview_scale: 0.5\n  max_batch: 4\n"
                        f"store: file://{out}\ngeneration: local\n", encoding="utf-8")
    now = datetime.now(UTC)
    text = "想要一杯桂花拿铁"
    CommentLedger(LocalStore(out)).claim(CommentState(
        id="c-hook", brand="demo", author="lin", post_id="p-9", text=text,
        keywords=extract_keywords(text), state="queued", received_at=now, updated_at=now))

    key = comment_reply(comment_id="c-hook", brand="demo", brands_dir=str(brands), settings=str(settings))
    assert key and LocalStore(out).exists(key)
    [request] = receiver.requests
    assert request["headers"][EVENT_HEADER] == "comment.replied"
    assert request["body"]["data"] == {"brand": "demo", "comment_id": "c-hook", "post_id": "p-9",
                                       "store": f"file://{out}", "image_key": key}
    assert Path(out / OUTBOX).exists() is False


@pytest.mark.slow
def test_a_campaign_week_tells_the_brand_it_is_finished(prefect_api, zpipe_cache, tmp_path,
                                                        monkeypatch, receiver):
    import shutil

    from flows.campaign import weekly_campaign
    from tasks.config.schema import EngineSettings

    monkeypatch.setenv("ZPIPE_CACHE", str(zpipe_cache))
    monkeypatch.setenv("ZPIPE_TEST_HOOK_SECRET", SECRET)
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    brand_yaml = tmp_path / "configs/brands/demo.yaml"
    brand_yaml.write_text(brand_yaml.read_text(encoding="utf-8") + (
        f"webhooks:\n  - url: {receiver.url}\n    secret_env: ZPIPE_TEST_HOOK_SECRET\n"), encoding="utf-8")
    out = tmp_path / "out"
    summary = weekly_campaign(str(tmp_path / "configs/campaigns/weekly-demo.yaml"), week="2026-W48",
                              store=f"file://{out}",
                              engine=EngineSettings(model="tiny", preview_scale=0.25, max_batch=4))
    [request] = receiver.requests  # nothing held: only the week's end
    body = request["body"]
    assert request["headers"][EVENT_HEADER] == "campaign.week_finished"
    assert body["data"]["campaign"] == "weekly-demo" and body["data"]["week"] == "2026-W48"
    assert body["data"]["created"] == len(summary.created) == 14 and body["data"]["failed"] == []
    assert body["data"]["contact_sheet"] == summary.contact_sheet
    assert pending(LocalStore(out)) == []
