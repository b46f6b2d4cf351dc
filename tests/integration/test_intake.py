"""The comment intake over real HTTP: uvicorn on a loopback port, LocalStore or SeaweedFS S3."""

from __future__ import annotations

import contextvars
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from flows.names import COMMENT_EVENT, COMMENT_RESOURCE_PREFIX
from flows.services.intake import (
    IntakeSettings,
    create_app,
    load_intake_settings,
    post_comment,
)
from tasks.comments.ledger import CommentLedger
from tasks.config.schema import BrandConfig
from tasks.core.errors import ConfigError, ZpipeError
from tasks.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tasks.store.objects import S3Store

SECRET = "intake-test-secret-5f1c9a7e"
BRANDS = {
    slug: BrandConfig(slug=slug, name=name, style={"zh": "暖色胶片", "en": "warm film"},
                      producer={"name": name, "id": "91310000TEST0001X"},
                      replies={"max_chars": 60, "blocklist": ["加微信", "代购"]})
    for slug, name in (("demo", "Dawnlight Coffee"), ("tea", "Misty Tea"))
}


class Recorder:
    """An event emitter that records its calls (or fails, while `fail` is set)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail = False
        self._lock = threading.Lock()

    def __call__(self, **event: Any) -> None:
        if self.fail:
            raise ConnectionError("prefect is down")
        with self._lock:
            self.events.append(event)


@dataclass
class Running:
    url: str
    app: FastAPI
    emitted: Recorder
    ledger: CommentLedger = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = self.app.state.intake.ledger


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Run `app` with uvicorn in a thread (in this context: Prefect settings carry over)."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=contextvars.copy_context().run, args=(server.run,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture()
def start_intake(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start intakes (LocalStore by default) for one test; all stop when it ends."""
    with ExitStack() as stack:

        def start(store_url: str | None = None, emit: Any = "record", **overrides: Any) -> Running:
            recorder = Recorder()
            settings = IntakeSettings(
                secret=SECRET, store_url=store_url or str(tmp_path / "store"), brands=BRANDS,
                emit=recorder if emit == "record" else emit, **overrides,
            )
            app = create_app(settings)
            return Running(url=stack.enter_context(serving(app)), app=app, emitted=recorder)

        yield start


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store_url(request, tmp_path) -> str:
    """A store URL of each kind; S3 credentials come from the environment."""
    if request.param == "local":
        return f"file://{tmp_path}/store"
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    monkeypatch = request.getfixturevalue("monkeypatch")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{bucket}/zpipe"


def comment(cid: str = "c1", author: str = "ann", text: str = "想要一张秋天咖啡馆的拿铁海报",
            brand: str = "demo") -> dict[str, str]:
    return {"id": cid, "author": author, "text": text, "post_id": "post-42", "brand": brand}


def signed_post(url: str, body: bytes, secret: str = SECRET, timestamp: int | None = None,
                **kwargs: Any) -> httpx.Response:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    headers = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(secret.encode(), stamp, body),
               "Content-Type": "application/json"}
    return httpx.post(f"{url}/v1/comments", content=body, headers=headers, timeout=30, **kwargs)


# --- accepted comments -----------------------------------------------------------------


def test_valid_comment_is_queued_and_emitted(start_intake, store_url):
    run = start_intake(store_url)
    r = post_comment(run.url, SECRET, comment("c1", text="想要一张\u200b秋天咖啡馆的拿铁海报 latte"))
    assert r.status_code == 202, r.text
    assert r.json() == {"id": "c1", "state": "queued", "reason": None, "status_url": "/v1/comments/c1"}
    assert run.emitted.events == [{
        "event": COMMENT_EVENT,
        "resource": {"prefect.resource.id": COMMENT_RESOURCE_PREFIX + "c1"},
        "payload": {"id": "c1", "brand": "demo"},  # ids only: the flow reads the text from the ledger
    }]
    record = run.ledger.get("c1")
    assert record.state == "queued" and record.text == "想要一张秋天咖啡馆的拿铁海报 latte"
    assert {"咖啡馆", "海报", "latte"} <= set(record.keywords)
    status = httpx.get(run.url + r.json()["status_url"])
    assert status.status_code == 200
    assert status.json() == {"id": "c1", "state": "queued", "image_url": None, "flow_run_id": None,
                             "reason": None}


def test_same_id_with_a_new_signature_is_a_dedupe(start_intake):
    run = start_intake()
    now = int(time.time())
    first = post_comment(run.url, SECRET, comment("dup"), timestamp=now)
    again = post_comment(run.url, SECRET, comment("dup"), timestamp=now - 1)
    # the same fields in another JSON spelling (key order, spacing, escapes) are the same comment
    respelled = json.dumps(dict(reversed(comment("dup").items())), indent=2).encode()
    third = signed_post(run.url, respelled, timestamp=now - 2)
    assert first.status_code == 202
    assert again.status_code == third.status_code == 200
    assert again.json() == third.json() == {**first.json(), "state": "queued"}
    assert len(run.emitted.events) == 1
    assert run.app.state.intake.store.list("_comments/") == ["_comments/dup.json"]


@pytest.mark.parametrize("change", [{"text": "另一段文字"}, {"author": "bob"}, {"post_id": "post-43"},
                                    {"brand": "tea"}, {"text": "想要一张秋天咖啡馆的拿铁海报 "}],
                         ids=["text", "author", "post_id", "brand", "trailing-space"])
def test_same_id_with_other_content_is_409(start_intake, change):
    run = start_intake()
    now = int(time.time())
    first = post_comment(run.url, SECRET, comment("dup"), timestamp=now)
    changed = post_comment(run.url, SECRET, {**comment("dup"), **change}, timestamp=now - 1)
    assert first.status_code == 202
    assert changed.status_code == 409, changed.text
    detail = changed.json()["detail"]
    assert "'dup'" in detail and "differs from the first submission" in detail and "new id" in detail
    assert run.ledger.get("dup").text == "想要一张秋天咖啡馆的拿铁海报"  # the first one stands
    exact = post_comment(run.url, SECRET, comment("dup"), timestamp=now - 2)
    assert (exact.status_code, exact.json()) == (200, first.json())
    assert len(run.emitted.events) == 1


def test_rejected_or_failed_id_with_other_content_is_409(start_intake):
    run = start_intake()
    now = int(time.time())
    rejected = post_comment(run.url, SECRET, comment("r1", text="加微信领优惠"), timestamp=now)
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"
    r = post_comment(run.url, SECRET, comment("r1", text="想要一张拿铁海报"), timestamp=now - 1)
    assert r.status_code == 409 and "'r1'" in r.json()["detail"]
    run.emitted.fail = True
    assert post_comment(run.url, SECRET, comment("f1"), timestamp=now - 2).status_code == 503
    run.emitted.fail = False
    r = post_comment(run.url, SECRET, comment("f1", text="另一段文字"), timestamp=now - 3)
    assert r.status_code == 409 and "'f1'" in r.json()["detail"]
    assert run.ledger.get("f1").state == "failed" and run.emitted.events == []
    assert post_comment(run.url, SECRET, comment("f1"), timestamp=now - 4).status_code == 202


def _race(run: Running, bodies: list[dict[str, str]]) -> list[httpx.Response]:
    """POST every body at the same moment (one thread each, distinct signatures); answers in order."""
    now = int(time.time())
    barrier = threading.Barrier(len(bodies))
    answers: list[httpx.Response] = [None] * len(bodies)  # type: ignore[list-item]

    def send(n: int) -> None:
        barrier.wait()
        answers[n] = post_comment(run.url, SECRET, bodies[n], timestamp=now - n)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_concurrent_posts_of_one_id_queue_once(start_intake, store_url):
    run = start_intake(store_url, per_author_per_minute=100)  # one author sends all six
    answers = _race(run, [comment("race")] * 6)
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 5 + [202], [(r.status_code, r.text) for r in answers]
    assert {r.json()["state"] for r in answers} == {"queued"}
    assert len(run.emitted.events) == 1


def test_concurrent_different_bodies_for_one_id_accept_one(start_intake, store_url):
    run = start_intake(store_url)
    answers = _race(run, [comment("race", author=f"a{n}") for n in range(6)])
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] + [409] * 5, [(r.status_code, r.text) for r in answers]
    assert len(run.emitted.events) == 1
    winner = next(n for n, r in enumerate(answers) if r.status_code == 202)
    assert run.ledger.get("race").author == f"a{winner}"  # the accepted body is the one recorded
    assert all("'race'" in r.json()["detail"] for r in answers if r.status_code == 409)


# --- authentication --------------------------------------------------------------------


def test_bad_signatures_are_401(start_intake):
    run = start_intake()
    body = json.dumps(comment("sig")).encode()
    now = int(time.time())
    cases = {
        "missing": httpx.post(f"{run.url}/v1/comments", content=body),
        "mismatch": signed_post(run.url, body, secret="not-the-secret-at-all"),
        "stale": signed_post(run.url, body, timestamp=now - 400),
        "in the future": signed_post(run.url, body, timestamp=now + 400),
        "malformed": httpx.post(f"{run.url}/v1/comments", content=body,
                                headers={TIMESTAMP_HEADER: str(now), SIGNATURE_HEADER: "md5=123"}),
    }
    tampered = {TIMESTAMP_HEADER: str(now), SIGNATURE_HEADER: sign(SECRET.encode(), str(now), body)}
    cases["tampered"] = httpx.post(f"{run.url}/v1/comments", content=body.replace(b"ann", b"bob"),
                                   headers=tampered)
    for words, r in cases.items():
        assert r.status_code == 401, (words, r.text)
        detail = r.json()["detail"]
        assert detail.startswith("invalid signature"), detail
        assert (words if words != "tampered" else "mismatch") in detail
        assert SECRET not in r.text
    assert run.ledger.get("sig") is None
    assert run.emitted.events == []


def test_replayed_signature_is_401(start_intake):
    run = start_intake()
    now = int(time.time())
    first = post_comment(run.url, SECRET, comment("rep"), timestamp=now)
    replay = post_comment(run.url, SECRET, comment("rep"), timestamp=now)  # byte-identical request
    assert first.status_code == 202
    assert replay.status_code == 401 and "replayed" in replay.json()["detail"]
    assert len(run.emitted.events) == 1


# --- limits ----------------------------------------------------------------------------


def test_author_flood_is_429_with_retry_after(start_intake):
    run = start_intake(per_author_per_minute=3)
    codes = [post_comment(run.url, SECRET, comment(f"f{n}", author="flood")).status_code
             for n in range(3)]
    assert codes == [202] * 3
    blocked = post_comment(run.url, SECRET, comment("f3", author="flood"))
    assert blocked.status_code == 429
    assert 1 <= int(blocked.headers["Retry-After"]) <= 60
    assert "flood" in blocked.json()["detail"] and "3 comments per minute" in blocked.json()["detail"]
    assert run.ledger.get("f3") is None
    assert post_comment(run.url, SECRET, comment("other", author="calm")).status_code == 202
    assert len(run.emitted.events) == 4


def test_overall_limit_is_429(start_intake):
    run = start_intake(per_author_per_minute=100, overall_per_minute=4)
    codes = [post_comment(run.url, SECRET, comment(f"o{n}", author=f"user{n}")).status_code
             for n in range(5)]
    assert codes == [202] * 4 + [429]
    r = post_comment(run.url, SECRET, comment("o9", author="someone-new", brand="tea"))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "at most 4 comments per minute" in r.json()["detail"]


# --- moderation ------------------------------------------------------------------------


def test_blocklisted_comment_is_rejected_without_event(start_intake):
    run = start_intake()
    now = int(time.time())
    r = post_comment(run.url, SECRET, comment("bad", text="想要优惠请 加 微 信 哦"), timestamp=now)
    assert r.status_code == 200
    body = r.json()
    assert body["state"] == "rejected" and "加微信" in body["reason"]
    assert body["status_url"] == "/v1/comments/bad"
    assert run.emitted.events == []
    status = httpx.get(f"{run.url}/v1/comments/bad").json()
    assert status["state"] == "rejected" and status["reason"] == body["reason"]
    again = post_comment(run.url, SECRET, comment("bad", text="想要优惠请 加 微 信 哦"),
                         timestamp=now - 1)
    assert (again.status_code, again.json()) == (200, body)


def test_overlong_comment_is_rejected(start_intake):
    run = start_intake()
    r = post_comment(run.url, SECRET, comment("long", text="好" * 61))
    assert r.status_code == 200
    assert r.json()["state"] == "rejected"
    assert "61" in r.json()["reason"] and "60" in r.json()["reason"]
    assert run.emitted.events == []


# --- request errors --------------------------------------------------------------------


def test_unknown_brand_is_404_listing_known(start_intake):
    run = start_intake()
    r = post_comment(run.url, SECRET, comment("nb", brand="nope"))
    assert r.status_code == 404
    assert "'nope'" in r.json()["detail"] and "demo, tea" in r.json()["detail"]


def test_malformed_body_is_422_naming_the_field(start_intake):
    run = start_intake()
    bad_json = signed_post(run.url, b'{"id": "x", not json')
    assert bad_json.status_code == 422
    assert bad_json.json()["detail"][0]["type"] == "json_invalid"
    missing = dict(comment("m1"))
    del missing["author"]
    r = signed_post(run.url, json.dumps(missing).encode(), timestamp=int(time.time()) - 1)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "author"]
    r = signed_post(run.url, json.dumps(comment("no/slash")).encode(), timestamp=int(time.time()) - 2)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "id"]
    r = signed_post(run.url, json.dumps({**comment("m2"), "extra": 1}).encode())
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "extra"]
    r = signed_post(run.url, b"\xff\xfe\x00", timestamp=int(time.time()) - 3)
    assert r.status_code == 422
    assert run.emitted.events == []


NOT_JSON_BODIES = [
    # (id, body, fragment of the error message)
    ("nan", b'{"id": "j1", "author": "ann", "text": NaN, "post_id": "p", "brand": "demo"}', "NaN"),
    ("infinity", b'{"id": "j2", "author": "ann", "text": "hi", "post_id": "p", "brand": "demo", '
                 b'"x": Infinity}', "Infinity"),
    ("minus-infinity", b'{"id": -Infinity, "author": "ann", "text": "hi", "post_id": "p", "brand": "demo"}',
     "-Infinity"),
    ("huge-float", b'{"id": "j4", "author": "ann", "text": 1e400, "post_id": "p", "brand": "demo"}',
     "out of range"),
    ("huge-int", b'{"id": "j5", "author": "ann", "text": ' + b"9" * 5000 + b', "post_id": "p", "brand": "d"}',
     "5000 digits"),
    ("duplicate-key", b'{"id": "j6", "author": "ann", "text": "hi", "post_id": "p", "brand": "demo", '
                      b'"author": "bob"}', "duplicate key 'author'"),
    ("not-utf8", json.dumps(comment("j7", text="秋天"), ensure_ascii=False).encode("gbk"), "not UTF-8"),
    ("deep-extra", b'{"id": "j8", "author": "ann", "text": "hi", "post_id": "p", "brand": "demo", "x": '
                   + b"[" * 100 + b"]" * 100 + b"}", "recursion limit"),
    ("deep", b"[" * 5000 + b"]" * 5000, "recursion limit"),
]


@pytest.mark.parametrize(("body", "fragment"), [c[1:] for c in NOT_JSON_BODIES],
                         ids=[c[0] for c in NOT_JSON_BODIES])
def test_body_that_is_not_strict_json_is_422_naming_the_problem(start_intake, body, fragment):
    run = start_intake()
    r = signed_post(run.url, body)
    assert r.status_code == 422, r.text
    error = r.json()["detail"][0]
    assert error["type"] == "json_invalid" and error["loc"] == ["body"]
    assert fragment in error["msg"], error["msg"]
    assert run.emitted.events == [] and run.app.state.intake.store.list("_comments/") == []


def test_oversized_body_is_413(start_intake):
    run = start_intake()
    big = json.dumps(comment("big", text="好" * 30000)).encode()  # ~90 KB of UTF-8
    now = int(time.time())
    assert signed_post(run.url, big, timestamp=now).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies while reading
        for start in range(0, len(big), 8192):
            yield big[start:start + 8192]

    stamp = str(now - 1)
    r = httpx.post(f"{run.url}/v1/comments", content=chunks(),
                   headers={TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(SECRET.encode(), stamp, big)})
    assert r.status_code == 413
    assert run.ledger.get("big") is None


# --- status, docs, health --------------------------------------------------------------


def test_status_of_unknown_comment_is_404(start_intake):
    run = start_intake()
    r = httpx.get(f"{run.url}/v1/comments/never-seen")
    assert r.status_code == 404 and "never-seen" in r.json()["detail"]
    assert httpx.get(f"{run.url}/v1/comments/bad%20id").status_code == 422


@pytest.mark.s3
def test_done_comment_has_a_downloadable_image_url(start_intake, s3_server, s3_bucket, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    run = start_intake(f"s3://{s3_bucket}/zpipe")
    assert post_comment(run.url, SECRET, comment("img")).status_code == 202
    image = b"\x89PNG\r\n\x1a\n" + uuid.uuid4().bytes
    store = S3Store(s3_bucket, prefix="zpipe")
    store.put("demo/replies/img.png", image, "image/png")
    run.ledger.update("img", state="done", image_key="demo/replies/img.png", flow_run_id="run-7")
    status = httpx.get(f"{run.url}/v1/comments/img").json()
    assert status["state"] == "done" and status["flow_run_id"] == "run-7"
    assert status["image_url"].startswith(s3_server.endpoint_url)
    download = httpx.get(status["image_url"])
    assert download.status_code == 200 and download.content == image


def test_docs_and_health(start_intake):
    run = start_intake()
    assert httpx.get(f"{run.url}/healthz").json() == {"ok": True}
    assert httpx.get(f"{run.url}/docs").status_code == 200
    spec = httpx.get(f"{run.url}/openapi.json").json()
    assert spec["info"]["title"] == "zpipe comment intake"
    post = spec["paths"]["/v1/comments"]["post"]
    assert "X-Zpipe-Signature" in post["description"] and "HMAC-SHA256" in post["description"]
    assert "author" in post["requestBody"]["content"]["application/json"]["schema"]["properties"]


# --- emit failures ---------------------------------------------------------------------


def test_emit_failure_is_503_and_a_resend_queues_it(start_intake):
    run = start_intake()
    run.emitted.fail = True
    now = int(time.time())
    r = post_comment(run.url, SECRET, comment("e1"), timestamp=now)
    assert r.status_code == 503 and "not queued" in r.json()["detail"]
    record = run.ledger.get("e1")
    assert record.state == "failed" and "event not emitted" in record.reason
    assert httpx.get(f"{run.url}/v1/comments/e1").json()["state"] == "failed"

    run.emitted.fail = False
    r = post_comment(run.url, SECRET, comment("e1"), timestamp=now - 1)
    assert r.status_code == 202 and r.json()["state"] == "queued"
    assert run.ledger.get("e1").reason is None
    assert len(run.emitted.events) == 1
    again = post_comment(run.url, SECRET, comment("e1"), timestamp=now - 2)
    assert again.status_code == 200 and len(run.emitted.events) == 1


# --- end to end with Prefect -----------------------------------------------------------


def test_event_reaches_the_prefect_server(prefect_api, start_intake):
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    run = start_intake(emit=None)  # the default: prefect.events.emit_event
    cid = "e2e-" + uuid.uuid4().hex[:10]
    assert post_comment(run.url, SECRET, comment(cid)).status_code == 202
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(limit=10, filter=EventFilter(
                event=EventNameFilter(name=[COMMENT_EVENT]),
                resource=EventResourceFilter(id=[COMMENT_RESOURCE_PREFIX + cid]),
            ))
            if page.events:
                break
            assert time.monotonic() < deadline, "the event never reached the Prefect server"
            time.sleep(0.3)
    assert len(page.events) == 1
    assert page.events[0].payload == {"id": cid, "brand": "demo"}


def test_default_emitter_needs_prefect_api_url(tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    settings = IntakeSettings(secret=SECRET, store_url=str(tmp_path), brands=BRANDS)
    with temporary_settings(restore_defaults={PREFECT_API_URL}), \
            pytest.raises(ZpipeError, match="PREFECT_API_URL"):
        create_app(settings)


# --- settings --------------------------------------------------------------------------


def _brand_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "brands"
    folder.mkdir()
    (folder / "demo.yaml").write_text(Path("configs/brands/demo.yaml").read_text(encoding="utf-8"),
                                      encoding="utf-8")
    (folder / "settings.yaml").write_text("kind: settings\n", encoding="utf-8")
    return folder


def test_load_intake_settings_from_env_and_file(tmp_path, monkeypatch):
    folder = _brand_dir(tmp_path)
    monkeypatch.delenv("ZPIPE_INTAKE_SECRET_FILE", raising=False)
    monkeypatch.setenv("ZPIPE_INTAKE_SECRET", SECRET)
    settings = load_intake_settings(folder, "s3://bucket/zpipe")
    assert list(settings.brands) == ["demo"]  # the settings file is not a brand: skipped
    assert settings.brands["demo"].replies.blocklist
    assert settings.secret.get_secret_value() == SECRET and SECRET not in repr(settings)

    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "-from-file\n", encoding="utf-8")
    monkeypatch.delenv("ZPIPE_INTAKE_SECRET")
    monkeypatch.setenv("ZPIPE_INTAKE_SECRET_FILE", str(secret_file))
    assert load_intake_settings(folder, "x").secret.get_secret_value() == SECRET + "-from-file"


def test_load_intake_settings_errors(tmp_path, monkeypatch):
    folder = _brand_dir(tmp_path)
    monkeypatch.delenv("ZPIPE_INTAKE_SECRET", raising=False)
    monkeypatch.delenv("ZPIPE_INTAKE_SECRET_FILE", raising=False)
    with pytest.raises(ConfigError, match=r"ZPIPE_INTAKE_SECRET.*not set.*token_hex"):
        load_intake_settings(folder, "x")
    monkeypatch.setenv("ZPIPE_INTAKE_SECRET", "short-secret")
    with pytest.raises(ConfigError, match="too short") as info:
        load_intake_settings(folder, "x")
    assert "short-secret" not in str(info.value)
    monkeypatch.setenv("ZPIPE_INTAKE_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="both"):
        load_intake_settings(folder, "x")
    monkeypatch.delenv("ZPIPE_INTAKE_SECRET")
    with pytest.raises(ConfigError, match="cannot read the intake secret"):
        load_intake_settings(folder, "x")
    monkeypatch.delenv("ZPIPE_INTAKE_SECRET_FILE")
    monkeypatch.setenv("ZPIPE_INTAKE_SECRET", SECRET)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no brand YAML"):
        load_intake_settings(empty, "x")
    with pytest.raises(ConfigError, match="not a directory"):
        load_intake_settings(tmp_path / "nowhere", "x")


class Depth:
    """A reply-queue depth at the intake's probe interface (`queue_depth=`), set by the test."""

    def __init__(self, value: int = 0) -> None:
        self.value, self.calls = value, 0

    def __call__(self) -> int:
        self.calls += 1
        return self.value


def test_a_full_reply_queue_answers_503_with_retry_after_and_records_nothing(start_intake):
    depth = Depth(3)
    running = start_intake(max_queue=3, queue_depth=depth)
    body = json.dumps(comment("q1")).encode()
    busy = signed_post(running.url, body)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "5"
    assert "3 comment replies are waiting or running (cap 3)" in busy.json()["detail"]
    assert running.ledger.get("q1") is None and running.emitted.events == []  # nothing half-done
    ready = httpx.get(f"{running.url}/ready")
    assert ready.status_code == 503 and ready.headers["Retry-After"] == "5"
    assert ready.json()["queue_depth"] == 3 and "cap 3" in ready.json()["problems"][0]

    depth.value = 1
    time.sleep(1.1)  # the depth is asked again at most once a second
    assert httpx.get(f"{running.url}/ready").json() == {"ready": True, "queue_depth": 1, "max_queue": 3,
                                                        "problems": []}
    first = signed_post(running.url, body)  # the same comment, re-sent after Retry-After
    assert first.status_code == 202 and running.ledger.get("q1").state == "queued"
    # comments queued since the last probe count until the next one sees their runs
    second = signed_post(running.url, json.dumps(comment("q2", author="bo")).encode())
    assert second.status_code == 202
    third = signed_post(running.url, json.dumps(comment("q3", author="cy")).encode())
    assert third.status_code == 503 and running.ledger.get("q3") is None


def test_ready_asks_the_real_prefect_server_for_the_queue(prefect_api, tmp_path):
    """Default probe: comment-reply runs not finished, counted by a real Prefect API (the
    session's server may hold other tests' runs: the test counts the one it adds)."""
    from datetime import UTC, datetime, timedelta

    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Scheduled

    from flows.comment import comment_reply
    from flows.services.intake import prefect_queue_depth

    before = prefect_queue_depth()
    with get_client(sync_client=True) as client:  # a reply waiting for its time: queued work
        later = Scheduled(scheduled_time=datetime.now(UTC) + timedelta(days=1))
        waiting = client.create_flow_run(comment_reply, state=later,
                                         parameters={"comment_id": "q-probe", "brand": "demo"})
    try:
        assert prefect_queue_depth() == before + 1
        settings = IntakeSettings(secret=SECRET, store_url=str(tmp_path / "store"), brands=BRANDS,
                                  max_queue=before + 1)
        app = create_app(settings)  # the default emitter: the probe asks Prefect
        with serving(app) as url:
            full = httpx.get(f"{url}/ready")
            assert full.status_code == 503 and full.json()["queue_depth"] == before + 1
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(waiting.id, Cancelled(), force=True)
            time.sleep(1.1)  # the probe's answer is kept for a second
            ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 200 and ready.json()["queue_depth"] == before
    finally:
        with get_client(sync_client=True) as client:
            client.delete_flow_run(waiting.id)


def test_the_queue_counts_fast_path_replies_on_workers(prefect_api, monkeypatch):
    """A reply handed to a resident worker is queued work too until it finishes; one that has
    been running longer than a reply may (its worker died) no longer holds a place."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Running, Scheduled

    import flows.comment
    from flows.comment import reply_on_worker
    from flows.services.intake import prefect_queue_depth

    before = prefect_queue_depth()
    made = []
    with get_client(sync_client=True) as client:
        def reply_run(state):
            run = client.create_task_run(reply_on_worker, flow_run_id=None, dynamic_key=uuid.uuid4().hex,
                                         state=state)
            made.append(run.id)
            return run
        try:
            queued = reply_run(Scheduled())
            reply_run(Running())
            assert prefect_queue_depth() == before + 2
            client.set_task_run_state(queued.id, Cancelled(), force=True)
            assert prefect_queue_depth() == before + 1
            monkeypatch.setattr(flows.comment, "WORKER_TIMEOUT_S", 1)  # a reply's longest, here
            time.sleep(1.5)
            assert prefect_queue_depth() == before  # running past it: its worker is gone
        finally:
            for run_id in made:
                client.delete_task_run(run_id)


def test_max_queue_comes_from_the_environment(tmp_path, monkeypatch):
    folder = _brand_dir(tmp_path)
    monkeypatch.delenv("ZPIPE_INTAKE_SECRET_FILE", raising=False)
    monkeypatch.setenv("ZPIPE_INTAKE_SECRET", SECRET)
    monkeypatch.setenv("ZPIPE_INTAKE_MAX_QUEUE", "40")
    assert load_intake_settings(folder, str(tmp_path)).max_queue == 40
    monkeypatch.setenv("ZPIPE_INTAKE_MAX_QUEUE", "lots")
    with pytest.raises(ConfigError, match="ZPIPE_INTAKE_MAX_QUEUE"):
        load_intake_settings(folder, str(tmp_path))


# --- under a burst ---------------------------------------------------------------------


def _wait_indexed(run: Running) -> None:
    """Wait until the intake has listed the ledger's ids (it does so in the background at start)."""
    deadline = time.monotonic() + 10
    while not run.app.state.intake.ids.surely_new("never-sent"):
        assert time.monotonic() < deadline, "the ledger's ids were not listed within 10 s"
        time.sleep(0.02)


def _send_all(url: str, requests: list[tuple[str, bytes, str]], threads: int = 16) -> list[httpx.Response]:
    """POST every (kind, body, secret) at once from `threads` threads, each signed anew; answers in order."""
    now = int(time.time())

    def send(n: int) -> httpx.Response:
        _kind, body, secret = requests[n]
        return signed_post(url, body, secret=secret, timestamp=now - n % 200)  # distinct signatures

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(send, range(len(requests))))


def test_every_answer_kind_holds_under_a_burst(start_intake):
    """Concurrent new comments over the limits, re-sends, changed re-sends, bad signatures and
    invalid bodies, with a reply-queue cap: each gets its own answer, and the ledger and the
    events hold exactly the accepted comments (refusals on the in-memory path record nothing)."""
    recorder = Recorder()
    run = start_intake(emit=recorder, per_author_per_minute=2, overall_per_minute=6, max_queue=3,
                       queue_depth=lambda: len(recorder.events))
    _wait_indexed(run)
    first = post_comment(run.url, SECRET, comment("first"))
    assert first.status_code == 202

    def body(**fields: str) -> bytes:
        return json.dumps({**comment(), **fields}).encode()

    requests = (
        [("new", body(id=f"n{k}", author=f"user{k % 40}"), SECRET) for k in range(120)]
        + [("resend", body(id="first"), SECRET)] * 20
        + [("changed", body(id="first", text="另一段文字"), SECRET)] * 10
        + [("bad_signature", body(id=f"b{k}"), "not-the-intake-secret") for k in range(10)]
        + [("invalid", body(id=f"bad id {k}"), SECRET) for k in range(10)]
    )
    random.Random(7).shuffle(requests)
    answers = _send_all(run.url, requests)

    by_kind: dict[str, list[httpx.Response]] = {}
    for (kind, _, _), answer in zip(requests, answers, strict=True):
        by_kind.setdefault(kind, []).append(answer)
    assert {r.status_code for r in by_kind["resend"]} == {200}  # over the limits, still its first answer
    assert {r.json()["state"] for r in by_kind["resend"]} == {"queued"}
    assert {r.status_code for r in by_kind["changed"]} == {409}
    assert {r.status_code for r in by_kind["bad_signature"]} == {401}
    assert {r.status_code for r in by_kind["invalid"]} == {422}
    new = {r.status_code for r in by_kind["new"]}
    assert new <= {202, 429, 503} and {429, 503} <= new, new
    for r in by_kind["new"]:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1 and "rate limited" in r.json()["detail"]
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "5" and "cap 3" in r.json()["detail"]
    accepted = sorted(r.json()["id"] for r in by_kind["new"] if r.status_code == 202)
    # the cap: 3 replies queued, even for comments admitted at the same moment (each takes its
    # place before it is recorded); the limit: 6 comments a minute (a 503 counts, a 429 not)
    assert 1 + len(accepted) == 3
    assert 1 + len(accepted) + sum(r.status_code == 503 for r in by_kind["new"]) == 6
    stored = sorted(key.removeprefix("_comments/").removesuffix(".json")
                    for key in run.app.state.intake.store.list("_comments/"))
    assert stored == sorted(["first", *accepted])  # nothing refused was recorded, nothing half-written
    assert sorted(e["payload"]["id"] for e in recorder.events) == sorted(["first", *accepted])


def test_a_restarted_intake_answers_a_resend_over_the_limit_from_the_ledger(start_intake, tmp_path):
    """The in-memory refusal path knows the ids of comments recorded before the intake started
    (it lists the ledger): a re-send of one is answered 200, even with the limit used up."""
    store = str(tmp_path / "shared-store")
    assert post_comment(start_intake(store).url, SECRET, comment("kept")).status_code == 202
    again = start_intake(store, overall_per_minute=1)
    _wait_indexed(again)
    assert not again.app.state.intake.ids.surely_new("kept")
    now = int(time.time())
    assert post_comment(again.url, SECRET, comment("fills", author="bo"), timestamp=now).status_code == 202
    over = post_comment(again.url, SECRET, comment("over", author="cy"), timestamp=now)
    assert over.status_code == 429 and again.ledger.get("over") is None
    resent = post_comment(again.url, SECRET, comment("kept"), timestamp=now - 1)
    assert (resent.status_code, resent.json()["state"]) == (200, "queued")
    changed = post_comment(again.url, SECRET, comment("kept", text="另一段文字"), timestamp=now - 2)
    assert changed.status_code == 409


def test_a_resend_moments_after_the_first_is_answered_from_memory_then_from_the_ledger(start_intake):
    """Within RECENT_TTL_S a re-send gets the state the intake last saw (no ledger read), after
    it the ledger's current state; other content is a 409 either way."""
    from flows.services.intake import RECENT_TTL_S

    run = start_intake()
    now = int(time.time())
    assert post_comment(run.url, SECRET, comment("mem"), timestamp=now).status_code == 202
    run.ledger.update("mem", state="running", flow_run_id="run-1")  # the reply flow took it
    soon = post_comment(run.url, SECRET, comment("mem"), timestamp=now - 1)
    changed = post_comment(run.url, SECRET, comment("mem", author="bob"), timestamp=now - 2)
    assert (soon.status_code, soon.json()["state"], changed.status_code) == (200, "queued", 409)
    time.sleep(RECENT_TTL_S + 0.2)
    later = post_comment(run.url, SECRET, comment("mem"), timestamp=now - 3)
    assert (later.status_code, later.json()["state"]) == (200, "running")
    assert len(run.emitted.events) == 1
