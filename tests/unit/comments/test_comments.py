"""Comment functions: cleaning, moderation, keywords, signatures and the ledger (local + S3)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from tasks.comments.ledger import (
    CommentLedger,
    CommentState,
    LedgerError,
    clean_text,
    extract_keywords,
    moderate,
)
from tasks.config.schema import ReplyPolicy, load_config
from tasks.core.signing import SignatureError, sign, verify_signature
from tasks.prompts.templates import PromptLibrary, render_prompt
from tasks.store.objects import LocalStore, ObjectStore, S3Store

SECRET = b"test-secret-0123456789abcdef"
POLICY = ReplyPolicy(max_chars=40, blocklist=["加微信", "spam-link.example", "代购"])


# --- clean_text ------------------------------------------------------------------------


def test_clean_text_removes_invisible_and_control_characters():
    hidden = ("加\u200b微\u200d信"        # zero-width space and joiner
              "\u202eevil\u202c"           # bidi override + pop
              "\ufeff\u2066x\u2069"        # BOM, bidi isolate
              "\U000e0041\U000e007f"       # tag characters
              "\ufe0f\u3164\u034f\u00ad"   # variation selector, Hangul filler, CGJ, soft hyphen
              "\x00\x07\x1b[31m")          # NUL, BEL, ESC (the '[31m' stays as text)
    assert clean_text(hidden) == "加微信evilx[31m"


def test_clean_text_nfkc_and_whitespace():
    assert clean_text("  Ｌａｔｔｅ\u3000拿铁\t\n\r  ﬁne ") == "Latte 拿铁 fine"
    assert clean_text("line one\nline two") == "line one line two"
    assert clean_text("\u200b \u200c\t") == ""


def test_template_syntax_stays_literal_text():
    text = "{{ 7*7 }} {% for x in y %}{{ x }}{% endfor %}"
    assert clean_text(text) == text
    cleaned, reason = moderate(text, ReplyPolicy(max_chars=200))
    assert (cleaned, reason) == (text, None)
    # keywords are data for the sandboxed templates: rendering never evaluates them
    library = load_config("configs/prompts/library.yaml", expect="prompts")
    assert isinstance(library, PromptLibrary)
    prompt = render_prompt(library.get("trend-reply"),
                           {"comment": {"keywords": ["{{ 7*7 }}", "latte"]},
                            "brand": {"name": "Dawnlight", "style_zh": "暖色", "style_en": "warm",
                                      "palette": []}},
                           language="en")
    assert "{{ 7*7 }}" in prompt.text and "49" not in prompt.text


# --- moderate --------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "请加微信领取优惠",
    "请 加 微 信",
    "加·微·信 有惊喜",
    "加\u200b微\u200b信",
    "ＳＰＡＭ-LINK.example 了解一下",
    "see spam link example",
])
def test_moderate_blocklist_catches_variants(text):
    cleaned, reason = moderate(text, POLICY)
    assert reason is not None and "blocked term" in reason
    assert "加微信" in reason or "spam-link.example" in reason
    assert cleaned == clean_text(text)


def test_moderate_accepts_clean_text():
    assert moderate("  这杯拿铁\u200b真好喝  ", POLICY) == ("这杯拿铁真好喝", None)


def test_moderate_length_cap_names_length_and_limit():
    cleaned, reason = moderate("好" * 41, POLICY)
    assert len(cleaned) == 41
    assert reason is not None and "41" in reason and "40" in reason
    assert moderate("好" * 40, POLICY)[1] is None
    # invisible characters do not count towards the limit
    assert moderate("好\u200b" * 40, POLICY)[1] is None


def test_moderate_rejects_empty_after_cleaning():
    cleaned, reason = moderate("\u200b\u202e \x00\t", POLICY)
    assert cleaned == ""
    assert reason is not None and "empty" in reason


# --- keywords --------------------------------------------------------------------------


def test_keywords_chinese():
    keywords = extract_keywords("这杯拿铁的奶泡太绵密了，想要一张秋天咖啡馆的海报", limit=5)
    assert len(keywords) == 5
    assert {"奶泡", "咖啡馆", "海报"} <= set(keywords)
    assert not {"的", "了", "这", "一张"} & set(keywords)


def test_keywords_english_without_stopwords():
    keywords = extract_keywords("I really love the autumn latte art at Dawnlight coffee, "
                                "please make a poster of the latte!", limit=5)
    assert keywords[0] == "latte"  # said twice
    assert {"autumn", "Dawnlight"} <= set(keywords)
    assert not {"the", "I", "at", "of", "please", "make", "a"} & set(keywords)


def test_keywords_mixed_limit_and_noise():
    keywords = extract_keywords("周末带着猫咪去露营 camping vibes {{ 7*7 }} " + "x" * 60, limit=3)
    assert len(keywords) == 3
    assert all(any(ch.isalpha() for ch in k) and len(k) <= 32 for k in keywords)
    assert extract_keywords("{{ 7*7 }} !!! 123", limit=5) == []
    assert extract_keywords("拿铁", limit=0) == []


# --- signatures ------------------------------------------------------------------------


def test_sign_and_verify():
    body = b'{"id":"c1"}'
    signature = sign(SECRET, "1700000000", body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    verify_signature(SECRET, "1700000000", signature, body, now=1700000100)
    verify_signature(SECRET, "1700000000", signature.upper().replace("SHA256=", "sha256="), body,
                     now=1700000000)


@pytest.mark.parametrize(("timestamp", "signature", "body", "now", "reason", "words"), [
    (None, "sha256=" + "0" * 64, b"{}", 1700000000, "missing", "X-Zpipe-Timestamp"),
    ("1700000000", None, b"{}", 1700000000, "missing", "X-Zpipe-Signature"),
    ("17000x0000", "sha256=" + "0" * 64, b"{}", 1700000000, "malformed", "unix seconds"),
    ("1700000000", "md5=abc", b"{}", 1700000000, "malformed", "64 hex"),
    ("1700000000", "sha256=" + "0" * 63, b"{}", 1700000000, "malformed", "64 hex"),
    ("1700000000", None, b"{}", 1700000301, "stale", "301 s old"),
    ("1700000000", None, b"{}", 1699999699, "future", "301 s in the future"),
    ("1700000000", None, b'{"tampered": 1}', 1700000000, "mismatch", "mismatch"),
])
def test_verify_signature_errors(timestamp, signature, body, now, reason, words):
    if signature is None and timestamp is not None and reason != "missing":
        signature = sign(SECRET, timestamp, b"{}")
    with pytest.raises(SignatureError) as info:
        verify_signature(SECRET, timestamp, signature, body, now=now, tolerance_s=300)
    assert info.value.reason == reason
    assert words in str(info.value)
    assert SECRET.decode() not in str(info.value)


def test_verify_rejects_another_secret():
    body = b"{}"
    signature = sign(b"another-secret-0123456789", "1700000000", body)
    with pytest.raises(SignatureError, match="mismatch"):
        verify_signature(SECRET, "1700000000", signature, body, now=1700000000)


# --- ledger ----------------------------------------------------------------------------


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, tmp_path) -> ObjectStore:
    """A fresh store of each kind; S3 credentials come from the environment."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    monkeypatch = request.getfixturevalue("monkeypatch")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return S3Store(bucket, prefix="zpipe")


def _state(comment_id: str, author: str = "ann", state: str = "queued") -> CommentState:
    now = datetime.now(UTC)
    return CommentState(id=comment_id, brand="demo", author=author, post_id="p1", text="拿铁",
                        keywords=["拿铁"], state=state, received_at=now, updated_at=now)


def test_ledger_claim_twice_returns_first_record(store: ObjectStore):
    ledger = CommentLedger(store)
    first = _state("c-1", author="first")
    assert ledger.claim(first) == (first, True)
    assert store.exists("_comments/c-1.json")
    record, won = ledger.claim(_state("c-1", author="second"))
    assert won is False
    assert record == first
    assert ledger.get("c-1") == first
    assert ledger.get("c-2") is None


def test_ledger_concurrent_claims_have_one_winner(store: ObjectStore):
    ledger = CommentLedger(store)
    barrier = threading.Barrier(8)
    results: list[tuple[CommentState, bool]] = []

    def claim(n: int) -> None:
        barrier.wait()
        results.append(ledger.claim(_state("same:id", author=f"a{n}")))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [state for state, won in results if won]
    assert len(results) == 8 and len(winners) == 1
    assert all(state == winners[0] for state, _ in results)
    assert ledger.get("same:id") == winners[0]
    assert store.list("_comments/") == ["_comments/same:id.json"]


def test_ledger_update_and_requeue(store: ObjectStore):
    ledger = CommentLedger(store)
    first, _ = ledger.claim(_state("c-9"))
    done = ledger.update("c-9", state="done", image_key="demo/replies/c-9.png", flow_run_id="run-1")
    assert (done.state, done.image_key, done.flow_run_id) == ("done", "demo/replies/c-9.png", "run-1")
    assert done.updated_at > first.updated_at and done.received_at == first.received_at
    assert ledger.get("c-9") == done
    with pytest.raises(LedgerError, match="no comment 'nope'"):
        ledger.update("nope", state="done")
    with pytest.raises(LedgerError, match="invalid change"):
        ledger.update("c-9", state="exploded")
    with pytest.raises(LedgerError, match="invalid comment id"):
        ledger.get("../etc/passwd")

    failed = ledger.update("c-9", state="failed", reason="event not emitted")
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def requeue() -> None:
        barrier.wait()
        results.append(ledger.requeue(failed, state="queued", reason=None)[1])

    threads = [threading.Thread(target=requeue) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    assert ledger.get("c-9").state == "queued"
    with pytest.raises(LedgerError, match="not failed"):
        ledger.requeue(ledger.get("c-9"), state="queued")


def test_warm_up_replies_loads_keywords_and_the_nsfw_model_once(monkeypatch):
    from tasks.comments import reply
    from tasks.qa import QASettings

    loaded = []
    monkeypatch.setattr(reply, "warm_keywords", lambda: loaded.append("keywords"))
    monkeypatch.setattr(reply.models, "nudenet", lambda threads: loaded.append(f"nudenet x{threads}"))
    reply.warm_up_replies(QASettings(threads=2))
    assert loaded == ["keywords", "nudenet x2"]
    loaded.clear()
    reply.warm_up_replies(QASettings(enabled=False))  # no gate: no NSFW model to load
    assert loaded == ["keywords"]
