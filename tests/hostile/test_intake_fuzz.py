"""Property tests of the comment intake over real HTTP: no request body or header ever gets a 5xx.

Bodies start from a valid comment and are mutated (bytes flipped, cut, inserted; fields given
other types, huge or non-finite numbers, Unicode edge cases; extra and duplicate keys; deep
nesting), then signed as a sender would sign them, or sent with missing or garbled signature
headers and other content types. A real intake serves them (uvicorn on loopback, LocalStore
ledger, the real moderation). Bounded examples, no deadlines: it runs on 2-core CI machines.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.services.intake import IntakeSettings, create_app
from tasks.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.integration.test_intake import BRANDS, SECRET, Recorder, serving

FIELDS = ("id", "author", "text", "post_id", "brand")
REPLAY_SPAN = 290  # distinct timestamps per intake (tolerance 300 s): no request is a replay
FUZZ = settings(max_examples=120, deadline=None, database=None,  # no .hypothesis/ in the checkout
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Sender:
    """Signs and POSTs bodies to one intake, each with its own recent timestamp."""

    def __init__(self, url: str):
        self.url = url
        self.client = httpx.Client(timeout=30)
        self._stamps = itertools.count()
        self._signed: set[tuple[str, bytes]] = set()

    def stamp(self) -> str:
        return str(int(time.time()) - next(self._stamps) % REPLAY_SPAN)

    def post(self, body: bytes, headers: dict[str, str] | None = None, signed: bool = True,
             content_type: str | None = "application/json") -> httpx.Response:
        stamp = self.stamp()
        # The intake remembers every signature (replays are 401): a body sent again, e.g. when
        # hypothesis replays an example on the same intake, must never reuse a (stamp, body) pair
        while (stamp, body) in self._signed:
            stamp = self.stamp()
        self._signed.add((stamp, body))
        sent = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(SECRET.encode(), stamp, body)}
        if not signed:
            sent = {}
        if content_type is not None:
            sent["Content-Type"] = content_type
        return self.client.post(f"{self.url}/v1/comments", content=body, headers={**sent, **(headers or {})})


@pytest.fixture()
def sender(tmp_path: Path) -> Iterator[Sender]:
    """A fresh intake per property (its own replay memory and ledger); limits out of the way."""
    settings_ = IntakeSettings(secret=SECRET, store_url=str(tmp_path / "store"), brands=BRANDS,
                               emit=Recorder(), per_author_per_minute=100_000, overall_per_minute=100_000)
    with serving(create_app(settings_)) as url:
        s = Sender(url)
        yield s
        s.client.close()


def _valid(**changes: Any) -> dict[str, Any]:
    return {"id": "fz-" + uuid.uuid4().hex[:12], "author": "ann", "text": "秋天的拿铁海报 autumn latte",
            "post_id": "p-1", "brand": "demo", **changes}


def _encode(data: Any) -> bytes:
    # allow_nan: Python writes NaN/Infinity (not JSON) for non-finite floats, as careless senders do
    return json.dumps(data, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


def _assert_answered(r: httpx.Response) -> None:
    """Never a 5xx; always a JSON answer; every refusal carries a `detail`."""
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    body = r.json()
    if r.status_code >= 400:
        assert body.get("detail"), body
    assert SECRET not in r.text


# --- strategies ------------------------------------------------------------------------

EDGE_TEXT = st.text(alphabet=st.characters(codec=None), max_size=40) | st.sampled_from([
    "", " ", "\x00", "\u200b", "\u202e", "\ufeff", "\ud800", "\udfff", "\U0001f600", "e\u0301",
    "\uff21\uff22", "а", "\\", '"', "\n\r\t", "好" * 10_001, "x" * 300,
])
NUMBERS = (st.integers(min_value=-(10 ** 80), max_value=10 ** 80)
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([0, -0.0, 10 ** 400, 2 ** 63, -(2 ** 64), 1e308]))
LEAVES = st.none() | st.booleans() | NUMBERS | EDGE_TEXT
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(EDGE_TEXT, inner, max_size=3), max_leaves=8)
RAW_LITERALS = st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"-0", b"1" * 5000,
                                b"0x10", b"01", b".5", b"true", b"undefined", b"'single'", b'"\\ud800"',
                                b'"\\u0000"', b'"\xff"', b'"\xed\xa0\x80"', b"[" * 50 + b"]" * 50])


@st.composite
def json_mutations(draw: st.DrawFn) -> bytes:
    """A valid comment changed at the JSON level: a field's value, extra or duplicate keys, nesting."""
    data: Any = _valid()
    kind = draw(st.sampled_from(["value", "value", "drop", "extra", "raw", "raw", "raw", "duplicate",
                                 "nest", "whole"]))
    if kind == "value":
        data[draw(st.sampled_from(FIELDS))] = draw(VALUES)
    elif kind == "drop":
        del data[draw(st.sampled_from(FIELDS))]
    elif kind == "extra":
        data[draw(EDGE_TEXT)] = draw(VALUES)
    elif kind == "whole":
        data = draw(VALUES)
    body = _encode(data)
    if kind == "raw":  # a literal no JSON encoder writes, spliced in as a field's value
        field = draw(st.sampled_from(FIELDS))
        placeholder = _encode(data[field])
        body = body.replace(placeholder, draw(RAW_LITERALS), 1)
    elif kind == "duplicate":
        key, value = _encode(draw(st.sampled_from(FIELDS))), _encode(draw(VALUES))
        body = body[:-1] + b", " + key + b": " + value + b"}"
    elif kind == "nest":
        depth = draw(st.integers(min_value=1, max_value=3000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        body = opener * depth + body + closer * depth
    return body


@st.composite
def byte_mutations(draw: st.DrawFn) -> bytes:
    """A valid comment's bytes flipped, cut short or with bytes inserted."""
    body = bytearray(_encode(_valid(text=draw(EDGE_TEXT) or "hi")))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(min_value=0, max_value=max(0, len(body) - 1)))
        if kind == "flip" and body:
            body[at] ^= draw(st.integers(min_value=1, max_value=255))
        elif kind == "cut":
            del body[at:]
        else:
            body[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(body)


# printable ASCII: what an HTTP client lets through (it refuses control bytes and edge spaces)
GARBLED = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80).map(str.strip)
HEADER_CASES = st.one_of(  # each replaces a header of a correct signature
    st.builds(lambda v: {SIGNATURE_HEADER: v}, GARBLED | st.just("sha256=" + "0" * 64)),
    st.builds(lambda v: {TIMESTAMP_HEADER: v}, GARBLED | st.sampled_from(["-1", "0", "9" * 40, "1e9"])),
)
CONTENT_TYPES = st.sampled_from([None, "application/json", "text/plain", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x", "application/json; charset=latin-1"])


# --- properties ------------------------------------------------------------------------


@settings(FUZZ, max_examples=150)
@given(body=json_mutations() | byte_mutations(), content_type=CONTENT_TYPES)
def test_no_mutated_signed_body_is_a_5xx(sender: Sender, body: bytes, content_type: str | None):
    _assert_answered(sender.post(body, content_type=content_type))


@settings(FUZZ, max_examples=60)
@given(body=json_mutations() | byte_mutations(), headers=HEADER_CASES, signed=st.booleans())
def test_no_garbled_signature_is_a_5xx(sender: Sender, body: bytes, headers: dict[str, str], signed: bool):
    r = sender.post(body, headers=headers, signed=signed)
    _assert_answered(r)
    if headers or not signed:
        assert r.status_code == 401 and r.json()["detail"].startswith("invalid signature"), r.text[:300]


# Values that are JSON (finite numbers, no lone surrogates) but not the string a field needs
UTF8_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)
PLAIN_JSON = (st.none() | st.booleans() | st.integers(min_value=-(10 ** 30), max_value=10 ** 30)
              | st.floats(allow_nan=False, allow_infinity=False) | UTF8_TEXT)
WRONG_TYPE = (st.none() | st.booleans() | st.integers(min_value=-(10 ** 30), max_value=10 ** 30)
              | st.floats(allow_nan=False, allow_infinity=False) | st.lists(PLAIN_JSON, max_size=2)
              | st.dictionaries(UTF8_TEXT, PLAIN_JSON, max_size=2))
BAD_STRINGS = {  # strings each field refuses: empty, too long, unsafe characters, not a slug
    "id": st.sampled_from(["", "a/b", "../x", "h" * 129, "a b", "id\u200b", "ид"]),
    "author": st.sampled_from(["", "a" * 129, "ann\u202e", "ann\x00", "a\u200bb"]),
    "text": st.sampled_from(["", "好" * 10_001]),
    "post_id": st.sampled_from(["", "p" * 257, "p\u200b1", "p\x07"]),
    "brand": st.sampled_from(["", "Demo", "de mo", "../demo", "dеmo", "demo\n"]),
}


@st.composite
def invalid_fields(draw: st.DrawFn) -> tuple[str, bytes]:
    """(field at fault, a signed-ready body where only that field is invalid, missing or extra)."""
    data = _valid()
    kind = draw(st.sampled_from(["invalid", "missing", "extra"]))
    if kind == "extra":
        name = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
                    .filter(lambda n: n not in FIELDS))
        data[name] = draw(PLAIN_JSON)
        return name, _encode(data)
    field = draw(st.sampled_from(FIELDS))
    if kind == "missing":
        del data[field]
    else:
        data[field] = draw(WRONG_TYPE | BAD_STRINGS[field])
    return field, _encode(data)


@settings(FUZZ, max_examples=80)
@given(case=invalid_fields())
def test_signed_body_with_a_bad_field_is_422_naming_it(sender: Sender, case: tuple[str, bytes]):
    field, body = case
    r = sender.post(body)
    _assert_answered(r)
    assert r.status_code == 422, (field, r.text[:300])
    locs = [error["loc"] for error in r.json()["detail"]]
    assert ["body", field] in [loc[:2] for loc in locs], (field, locs)


VALID_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1,
                     max_size=200).filter(str.strip)


@settings(FUZZ, max_examples=25)
@given(text=VALID_TEXT, other=VALID_TEXT, author=st.text(alphabet="abcxyz张李-_.", min_size=1, max_size=20))
def test_valid_comment_is_answered_and_its_id_keeps_its_content(sender: Sender, text: str, other: str,
                                                                author: str):
    comment = _valid(text=text, author=author)
    first = sender.post(_encode(comment))
    _assert_answered(first)
    assert first.status_code in (200, 202), first.text  # 200: rejected by moderation
    again = sender.post(_encode(comment))
    assert again.status_code == 200 and again.json()["id"] == comment["id"]
    changed = sender.post(_encode({**comment, "text": other}))
    if other == text:
        assert changed.status_code == 200
    else:
        assert changed.status_code == 409 and repr(comment["id"]) in changed.json()["detail"]
