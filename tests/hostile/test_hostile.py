"""Hostile input suite: every case is refused with an error that names the field or value and
the fix, or is carried as plain data. Never a traceback, a hang, or a write outside the prefix.

Each table has one row per case: (id, input, expected error fragment). Real parts throughout:
the config loader on files in a temp dir, feedparser on local feed files, the intake over HTTP
(uvicorn on loopback), a LocalStore, the tiny model for the one campaign that is written.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image

from flows.services.intake import IntakeSettings, create_app
from tasks.comments.ledger import moderate
from tasks.config.schema import EngineSettings, ReplyPolicy, load_campaign, load_config, load_library
from tasks.core.errors import ConfigError, PromptError, StoreError
from tasks.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tasks.prompts.templates import PromptTemplate, render_prompt
from tasks.store.objects import LocalStore
from tasks.trends.sources import MAX_TITLE_CHARS, TrendSource, ingest
from tests.integration.test_intake import BRANDS, SECRET, Recorder, serving

REPO = Path(__file__).resolve().parents[2]
SECRET_TEXT = "TOP-SECRET-7f3a-do-not-leak"  # content of a local file that XXE would try to read


# --- shared helpers ---------------------------------------------------------------------------


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A private copy of configs/ (brand, campaigns, prompt library, logo, trend files)."""
    root = tmp_path / "configs"
    shutil.copytree(REPO / "configs", root)
    return root


def _set(data: Any, dotted: str, value: Any) -> None:
    """Set `a.b.0.c` in nested dicts/lists."""
    *parents, last = dotted.split(".")
    for part in parents:
        data = data[int(part)] if isinstance(data, list) else data[part]
    if isinstance(data, list):
        data[int(last)] = value
    else:
        data[last] = value


def _edit(path: Path, dotted: str, value: Any) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    _set(data, dotted, value)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


def _assert_clean_error(error: BaseException, *fragments: str) -> None:
    """A zpipe error (never a bare traceback type) whose message holds every fragment."""
    message = str(error)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


def _walk(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# --- 1. YAML config files ---------------------------------------------------------------------

_BOMB = "kind: settings\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
) + "store: *i\n"

YAML_CASES = [
    # (id, file bytes, expected fragments)
    ("alias-bomb", _BOMB.encode(), ["more than 100000 values", "alias bomb"]),
    ("deep-nesting", ("kind: settings\nstore: " + "[" * 3000 + "]" * 3000).encode(),
     ["nested more than 64 levels"]),
    ("recursive-alias", b"kind: settings\nstore: &loop [*loop]\n", ["recursive structure"]),
    ("duplicate-key", b"kind: settings\nstore: ./a\nstore: ./b\n",
     ["line 3", "duplicate key 'store'", "keep only one"]),
    ("python-object-tag", b"kind: settings\nstore: !!python/object/apply:os.system [id]\n",
     ["python/object/apply:os.system", "remove the tag"]),
    ("empty-file", b"", ["the file is empty", "kind:"]),
    ("list-at-top", b"- kind: settings\n", ["must be a YAML mapping", "not a list"]),
    ("huge-file", b"kind: settings\n#" + b"x" * (1024 * 1024 + 10) + b"\n", ["1 MiB"]),
    ("binary-png", (REPO / "configs/brands/demo-logo.png").read_bytes(), ["not UTF-8", "binary"]),
    ("latin1-text", "kind: settings\nstore: café\n".encode("latin-1"), ["not UTF-8 text", "byte 25"]),
    ("nul-character", b"kind: settings\nstore: a\x00b\n", ["unacceptable character #x0000"]),
    ("unknown-key", b"kind: settings\nstorage: s3://x\n", ["storage", "unknown field"]),
    ("wrong-type", b"kind: settings\ntrends_max_age_s: [1, 2]\n",
     ["trends_max_age_s", "valid integer"]),
    ("missing-kind", b"store: ./out\n", ["kind", "must be one of"]),
    ("unknown-kind", b"kind: evil\n", ["kind", "must be one of", "'evil'"]),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in YAML_CASES],
                         ids=[c[0] for c in YAML_CASES])
def test_hostile_yaml_is_refused_by_name(tmp_path: Path, data: bytes, expected: list[str]):
    path = tmp_path / "settings.yaml"
    path.write_bytes(data)
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    _assert_clean_error(info.value, str(path), *expected)
    assert time.monotonic() - started < 20, "the limits must keep the reader fast"


CLI_CASES = [
    # (id, file text, the value that must come out verbatim)
    ("markup-close-tag", 'kind: "[/x]"\n', "(got '[/x]')"),
    ("markup-style", 'kind: "[red]RED[/red]"\n', "(got '[red]RED[/red]')"),
    ("alias-bomb", _BOMB, "alias bomb"),
]


@pytest.mark.parametrize(("text", "shown"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_zpipe_validate_prints_hostile_values_verbatim(tmp_path: Path, text: str, shown: str):
    from typer.testing import CliRunner

    from flows.cli.app import app

    path = tmp_path / "settings.yaml"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(app, ["validate", str(path)], terminal_width=400)
    assert result.exit_code == 2, result.output  # 1 with a traceback (rich MarkupError) before
    assert shown in " ".join(result.output.split()), result.output  # rich wraps long lines


# --- 2. names that end up in object keys ------------------------------------------------------

NAME_CASES = [
    # (id, file, dotted field, value, expected fragments)
    ("slug-traversal", "brands/demo.yaml", "slug", "../evil", ["slug", "character '.'", "autumn-latte"]),
    ("slug-absolute", "brands/demo.yaml", "slug", "/etc", ["slug", "character '/'"]),
    ("slug-nul", "brands/demo.yaml", "slug", "de\x00mo", ["slug", "U+0000"]),
    ("slug-backslash", "brands/demo.yaml", "slug", "de\\mo", ["slug", "U+005C REVERSE SOLIDUS"]),
    ("slug-rtl-override", "brands/demo.yaml", "slug", "demo\u202egpj",
     ["slug", "RIGHT-TO-LEFT OVERRIDE"]),
    ("slug-zero-width", "brands/demo.yaml", "slug", "de\u200bmo", ["slug", "ZERO WIDTH SPACE"]),
    ("slug-cyrillic-a", "brands/demo.yaml", "slug", "dаta", ["slug", "U+0430 CYRILLIC SMALL LETTER A"]),
    ("slug-overlong", "brands/demo.yaml", "slug", "a" * 64, ["slug", "64 characters long"]),
    ("slug-empty", "brands/demo.yaml", "slug", "", ["slug", "empty"]),
    ("slug-upper", "brands/demo.yaml", "slug", "Demo", ["slug", "LATIN CAPITAL LETTER D"]),
    ("campaign-traversal", "campaigns/weekly-demo.yaml", "name", "../../etc", ["name", "character '.'"]),
    ("campaign-homoglyph", "campaigns/weekly-demo.yaml", "name", "weekly-dеmo",
     ["name", "CYRILLIC SMALL LETTER IE"]),
    ("format-traversal", "campaigns/weekly-demo.yaml", "formats", ["../1:1"],
     ["formats", "unknown format '../1:1'"]),
    ("variant-axis-traversal", "campaigns/ab-demo.yaml", "variants.axes",
     {"../x": ["a", "b"]}, ["variants.axes", "axis name '../x'"]),
    ("rule-name-traversal", "campaigns/weekly-demo.yaml", "rules.0.name", "../x",
     ["rules.0.name", "pattern"]),
    ("template-name-newline", "prompts/library.yaml", "templates.0.name", "daily-poster\n",
     ["templates.0.name", "must be a slug"]),
    ("template-name-traversal", "prompts/library.yaml", "templates.0.name", "../../x",
     ["templates.0.name", "must be a slug"]),
    ("colour-trailing-newline", "brands/demo.yaml", "colours.primary", "#C8102E\n",
     ["colours", "must be #RRGGBB"]),
]


@pytest.mark.parametrize(("file", "field", "value", "expected"), [c[1:] for c in NAME_CASES],
                         ids=[c[0] for c in NAME_CASES])
def test_hostile_names_are_refused_at_load(tree: Path, file: str, field: str, value: Any,
                                           expected: list[str]):
    _edit(tree / file, field, value)
    campaign = tree / ("campaigns/ab-demo.yaml" if "ab-demo" in file else "campaigns/weekly-demo.yaml")
    with pytest.raises(ConfigError) as info:
        load_campaign(campaign)
    _assert_clean_error(info.value, *expected)


KEY_CASES = [
    # (id, key, expected fragment)
    ("traversal", "demo/../../outside.jpg", "'..' path segment"),
    ("absolute", "/tmp/outside.jpg", "starts with '/'"),
    ("nul", "demo/a\x00b.jpg", "control character U+0000"),
    ("backslash", "demo\\..\\outside.jpg", "backslash"),
    ("rtl-override", "demo/gpj.\u202eexe", "RIGHT-TO-LEFT OVERRIDE"),
    ("zero-width", "de\u200bmo/a.jpg", "ZERO WIDTH SPACE"),
    ("bom", "\ufeffdemo/a.jpg", "ZERO WIDTH NO-BREAK SPACE"),
    ("line-separator", "demo/a\u2028b.jpg", "LINE SEPARATOR"),
    ("overlong-segment", "demo/" + "x" * 300 + ".jpg", "at most 255"),
    ("overlong-key", "demo/" + "x/" * 600, "longer than 1024 bytes"),
    ("empty", "", "it is empty"),
    ("empty-segment", "demo//a.jpg", "empty, '.' or '..' path segment"),
]


@pytest.mark.parametrize(("key", "expected"), [c[1:] for c in KEY_CASES], ids=[c[0] for c in KEY_CASES])
def test_hostile_keys_write_nothing(tmp_path: Path, key: str, expected: str):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(StoreError) as info:
        store.put(key, b"payload")
    _assert_clean_error(info.value, "invalid object key", expected)
    assert _walk(tmp_path) == []  # not inside the store, not beside it
    with pytest.raises(StoreError, match="invalid object key"):
        store.get(key)


# --- 3. Jinja: data stays data, templates stay in the sandbox -----------------------------

INJECTIONS = ["{{ 7*7 }}", "{{ ''.__class__.__mro__ }}", "{% for x in range(3) %}X{% endfor %}",
              "{{ config }}", "{{ lipsum.__globals__ }}"]


@pytest.fixture(scope="module")
def library():
    return load_library(REPO / "configs/prompts/library.yaml")


@pytest.mark.parametrize("text", INJECTIONS, ids=["arith", "mro", "for-loop", "config", "globals"])
def test_injected_text_comes_out_literally(library, text: str):
    # as a comment keyword (comment-reply), a trend title and config strings (daily-poster)
    reply = render_prompt(library.get("trend-reply"), {
        "brand": {"name": text, "style_zh": text, "style_en": text, "palette": []},
        "comment": {"keywords": [text, "咖啡"]}, "format": "9:16"}, "bilingual")
    assert reply.text.count(text) >= 3, reply.text  # keywords and brand name, in zh and en
    poster = render_prompt(library.get("daily-poster"), {
        "theme": {"zh": text, "en": text, "colour": None},
        "brand": {"name": text, "style_zh": text, "style_en": text, "palette": [], "fragments": {}},
        "day": {"weekday": "mon", "date": "2026-11-23", "weekday_zh": "周一", "weekday_en": "Monday"},
        "trend": {"title": text, "source": "feed", "score": 1.0, "tags": []},
        "format": "1:1", "variant": 1, "festivals": [], "festival": None, "copy": None,
        "headline_overlay": False, "axes": {}, "mapping": {}},
        "bilingual", additions={"scene": {"zh": [text], "en": [text]}})
    assert poster.text.count(text) >= 6, poster.text
    assert "49" not in poster.text and "<class" not in poster.text and "XXX" not in poster.text


TEMPLATE_CASES = [
    # (id, template source of one part, expected fragment)
    ("class-mro", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "blocked by the sandbox"),
    ("globals", "{{ lipsum.__globals__.os }}", "blocked by the sandbox"),
    ("cycler-init", "{{ cycler.__init__.__globals__ }}", "blocked by the sandbox"),
    ("attr-filter", "{{ theme.zh | attr('__class__') }}", "blocked by the sandbox"),
    ("mutate-list", "{% set x = [1] %}{{ x.append(2) }}", "blocked by the sandbox"),
    ("config-name", "{{ config.items() }}", "undefined variable 'config'"),
    ("range-bomb", "{% for i in range(10**9) %}x{% endfor %}", "Range too big"),
    ("string-bomb", "{{ 'a' * 10**9 }}", "exceeds 4000 items"),
    ("list-bomb", "{{ [1] * 10**9 }}", "exceeds 4000 items"),
    ("power-bomb", "{{ 9 ** 999999999 }}", "too large a number"),
    ("nested-loops", "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}",
     "renders to more than 4000 characters"),
]


def _template(subject: str) -> PromptTemplate:
    parts = {"subject": subject, "action": "a", "scene": "s", "lighting": "l", "style": "st"}
    return PromptTemplate(name="hostile", version="1.0.0", zh=parts, en=parts)


@pytest.mark.parametrize(("source", "expected"), [c[1:] for c in TEMPLATE_CASES],
                         ids=[c[0] for c in TEMPLATE_CASES])
def test_hostile_template_fails_cleanly(source: str, expected: str):
    template = _template(source)  # compiles: constant folding of `**` and `*` is off
    with pytest.raises(PromptError) as info:
        render_prompt(template, {"theme": {"zh": "秋天", "en": "autumn"}}, "zh")
    _assert_clean_error(info.value, "prompt template 'hostile' v1.0.0, zh.subject", expected)


def test_template_syntax_error_names_the_part(tree: Path):
    _edit(tree / "prompts/library.yaml", "templates.0.zh.subject", "{% for %}")
    with pytest.raises(ConfigError) as info:
        load_campaign(tree / "campaigns/weekly-demo.yaml")
    _assert_clean_error(info.value, "templates.0", "zh.subject: Jinja2 syntax error", "fix the template")


# --- 4. trend feeds: XML bombs, XXE, malformed JSON/YAML ----------------------------------

_LAUGHS = "\n".join(
    f' <!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
FEED_CASES = [
    # (id, file name, content (str: {secret} is the secret file's path), expected failure fragment)
    ("billion-laughs", "feed.xml",
     f'<?xml version="1.0"?>\n<!DOCTYPE rss [\n <!ENTITY l0 "lol">\n{_LAUGHS}\n]>\n'
     '<rss version="2.0"><channel><item><title>&l9;</title></item></channel></rss>',
     "declares an XML entity"),
    ("quadratic-blowup", "feed.xml",
     '<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY a "' + "A" * 50_000 + '">\n]>\n'
     '<rss version="2.0"><channel><item><title>' + "&a;" * 5000 + "</title></item></channel></rss>",
     "declares an XML entity"),
    ("xxe-file", "feed.xml",
     '<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY x SYSTEM "file://{secret}">\n]>\n'
     '<rss version="2.0"><channel><item><title>leak &x;</title></item></channel></rss>',
     "XXE"),
    ("xxe-parameter", "feed.xml",
     '<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY % p SYSTEM "file://{secret}"> %p;]>'
     '<rss version="2.0"><channel><item><title>ok</title></item></channel></rss>',
     "line 1"),
    ("xxe-lowercase", "feed.xml",
     '<?xml version="1.0"?>\n<!doctype rss [\n<!entity x SYSTEM "file://{secret}">\n]>\n'
     '<rss version="2.0"><channel><item><title>leak &x;</title></item></channel></rss>',
     "declares an XML entity"),
    ("not-xml", "feed.xml", "\x89PNG\r\n\x1a\n binary garbage \x00\x01", "not"),
    ("json-deep", "hot.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("json-huge-int", "hot.json", '{"data": [{"word": "x", "num": ' + "9" * 5000 + "}]}",
     "unreadable JSON value"),
    ("json-not-json", "hot.json", "{'word': x}", "invalid JSON at line 1"),
    ("yaml-alias-bomb", "trends.yaml", "trends: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)),
     "alias bomb"),
    ("yaml-python-tag", "trends.yaml", "- !!python/object/apply:os.system [id]\n", "constructor"),
]
_KINDS = {"feed.xml": ("rss", None),
          "hot.json": ("json", {"items": "data", "title": "word", "score": "num"}),
          "trends.yaml": ("yaml", None)}


@pytest.mark.parametrize(("name", "content", "expected"), [c[1:] for c in FEED_CASES],
                         ids=[c[0] for c in FEED_CASES])
def test_hostile_feed_is_skipped_with_its_reason(tmp_path: Path, name: str, content: str, expected: str):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET_TEXT, encoding="utf-8")
    path = tmp_path / name
    path.write_bytes(content.replace("{secret}", str(secret)).encode("utf-8", "surrogateescape"))
    kind, mapping = _KINDS[name]
    report = ingest([TrendSource(name="hostile", kind=kind, url=str(path), mapping=mapping)])
    assert report.trends == []
    [failure] = report.failures
    assert failure.source == "hostile" and expected in failure.reason, failure.reason
    assert SECRET_TEXT not in report.model_dump_json()


def test_external_dtd_is_never_fetched(tmp_path: Path):
    """A DOCTYPE that names a local file as its DTD: parsed, the file never read."""
    secret = tmp_path / "secret.dtd"
    secret.write_text(SECRET_TEXT, encoding="utf-8")
    path = tmp_path / "feed.xml"
    path.write_text(f'<?xml version="1.0"?>\n<!DOCTYPE rss SYSTEM "file://{secret}">\n'
                    '<rss version="2.0"><channel><item><title>秋冬围巾 &amp; 手套</title></item>'
                    "</channel></rss>", encoding="utf-8")
    report = ingest([TrendSource(name="dtd", kind="rss", url=str(path))])
    assert [t.title for t in report.trends] == ["秋冬围巾 & 手套"]
    assert SECRET_TEXT not in report.model_dump_json()


TITLE_CASES = [
    # (id, raw title, title as stored)
    ("template-text", "{{ 7*7 }} {% for x in y %}", "{{ 7*7 }} {% for x in y %}"),
    ("traversal-text", "../../etc/passwd", "../../etc/passwd"),
    ("bidi-override", "sale\u202e%09 txt.exe", "sale%09 txt.exe"),
    ("zero-width", "秋\u200b冬\u200d围巾", "秋冬围巾"),
    ("controls", "a\x07b\x1b[0mc\r\nd", "ab[0mc d"),
    ("overlong", "热" * 100_000, "热" * MAX_TITLE_CHARS),
]


@pytest.mark.parametrize(("raw", "stored"), [c[1:] for c in TITLE_CASES], ids=[c[0] for c in TITLE_CASES])
def test_hostile_titles_are_cleaned_data(tmp_path: Path, raw: str, stored: str):
    path = tmp_path / "hot.json"
    path.write_text(json.dumps({"data": [{"word": raw, "num": 5}]}, ensure_ascii=False), encoding="utf-8")
    report = ingest([TrendSource(name="hot", kind="json", url=str(path), mapping=_KINDS["hot.json"][1])])
    assert not report.failures
    assert [t.title for t in report.trends] == [stored]


# --- 5. logo files ------------------------------------------------------------------------


def _png_header_bomb(width: int, height: int) -> bytes:
    """A real, valid 1-bit PNG of width x height, all zeros: tiny file, huge image."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "JPEG")
    return buf.getvalue()


LOGO_CASES: list[tuple[str, Callable[[], bytes], str]] = [
    # (id, logo bytes, expected fragment)
    ("decompression-bomb", lambda: _png_header_bomb(15000, 15000), "decompression bomb"),
    ("too-many-pixels", lambda: _png_header_bomb(5000, 5000), "5000x5000 pixels"),
    ("truncated-png", lambda: _truncated((REPO / "configs/brands/demo-logo.png").read_bytes()),
     "truncated or corrupt"),
    ("truncated-jpeg", lambda: _truncated(_jpeg()), "truncated or corrupt"),
    ("not-an-image", lambda: b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not a PNG, JPEG, WEBP image"),
    ("empty-file", lambda: b"", "empty file"),
    ("huge-file", lambda: b"\x89PNG\r\n\x1a\n" + os.urandom(11 * 1024 * 1024),
     "over the 10485760-byte limit"),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in LOGO_CASES], ids=[c[0] for c in LOGO_CASES])
def test_hostile_logo_fails_at_load(tree: Path, make: Callable[[], bytes], expected: str):
    (tree / "brands/demo-logo.png").write_bytes(make())
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(tree / "brands/demo.yaml")
    _assert_clean_error(info.value, "demo.yaml: logo.path", expected)
    assert time.monotonic() - started < 20


# --- 6. comment text (moderation) ---------------------------------------------------------

POLICY = ReplyPolicy(max_chars=280, blocklist=["加微信", "代购", "wechat", "spam link"])
COMMENT_CASES = [
    # (id, text, cleaned text (prefix), rejection fragment or None)
    ("control-chars", "好\x00喝\x07的\x1b拿铁", "好喝的拿铁", None),
    ("bidi-override", "latte \u202eetal\u202c please", "latte etal please", None),
    ("zero-width", "秋\u200b天\u200d咖\ufeff啡", "秋天咖啡", None),
    ("only-emoji", "😍😍🔥☕", "😍😍🔥☕", None),
    ("only-invisible", "\u200b\u200d\u202e\ufeff", "", "no visible text"),
    ("100k-chars", "好" * 100_000, "好" * 280, "too long: 100000 characters"),
    ("zwj-hidden-chinese", "请加\u200d微\u200d信", "请加微信", "'加微信'"),
    ("spaced-chinese", "代 · 购 便宜", "代 · 购", "'代购'"),
    ("fullwidth-latin", "ｗｅｃｈａｔ ｍｅ", "wechat me", "'wechat'"),
    ("zero-width-latin", "w\u200be\u200bC\u200bhat", "weChat", "'wechat'"),
    ("ideographic-space", "ｓｐａｍ\u3000ｌｉｎｋ", "spam link", "'spam link'"),
    ("template-text", "{{ 7*7 }} 拿铁", "{{ 7*7 }} 拿铁", None),
]


@pytest.mark.parametrize(("text", "cleaned", "reason"), [c[1:] for c in COMMENT_CASES],
                         ids=[c[0] for c in COMMENT_CASES])
def test_hostile_comment_text_is_cleaned_or_rejected(text: str, cleaned: str, reason: str | None):
    got, why = moderate(text, POLICY)
    assert got.startswith(cleaned), got[:60]
    if reason is None:
        assert why is None
    else:
        assert why is not None and reason in why, why


# --- 7. the intake over HTTP --------------------------------------------------------------


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Recorder, Path]]:
    """One real intake (uvicorn on loopback, LocalStore ledger) for every HTTP row."""
    store = tmp_path_factory.mktemp("intake-store")
    recorder = Recorder()
    settings = IntakeSettings(secret=SECRET, store_url=str(store), brands=BRANDS, emit=recorder,
                              per_author_per_minute=1000, overall_per_minute=1000)
    with serving(create_app(settings)) as url:
        yield url, recorder, store


_sent = itertools.count()


def _post(url: str, body: bytes, *, secret: str = SECRET, skew: int = 0,
          headers: dict[str, str] | None = None, drop: str | None = None) -> httpx.Response:
    # a distinct recent timestamp per request, so replay protection never mixes rows
    stamp = str(int(time.time()) - next(_sent) % 120 + skew)
    sent = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(secret.encode(), stamp, body),
            "Content-Type": "application/json", **(headers or {})}
    if drop:
        sent.pop(drop)
    return httpx.post(f"{url}/v1/comments", content=body, headers=sent, timeout=30)


def _comment(**changes: Any) -> bytes:
    fields = {"id": "h-1", "author": "ann", "text": "秋天的拿铁", "post_id": "p-1", "brand": "demo"}
    return json.dumps({**fields, **changes}, ensure_ascii=False).encode()


def _replayed(url: str) -> httpx.Response:
    body = _comment(id="h-replay")
    stamp = str(int(time.time()))
    headers = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(SECRET.encode(), stamp, body)}
    assert httpx.post(f"{url}/v1/comments", content=body, headers=headers).status_code == 202
    return httpx.post(f"{url}/v1/comments", content=body, headers=headers)


INTAKE_CASES: list[tuple[str, Callable[[str], httpx.Response], int, str]] = [
    # (id, request, expected status, expected fragment of the JSON body)
    ("oversized-body", lambda u: _post(u, _comment(text="好" * 30_000)), 413, "body larger than 65536"),
    ("invalid-utf8", lambda u: _post(u, b'{"id": "h-2", "text": "\xff\xfe"}'), 422, "json_invalid"),
    ("not-json", lambda u: _post(u, b"id=h-3&text=hi"), 422, "json_invalid"),
    ("json-array", lambda u: _post(u, b"[]"), 422, "model_type"),
    ("json-deep", lambda u: _post(u, b"[" * 20_000 + b"]" * 20_000), 422, "recursion limit"),
    ("id-wrong-type", lambda u: _post(u, _comment(id=123)), 422, '"loc":["body","id"]'),
    ("text-wrong-type", lambda u: _post(u, _comment(text=["a"])), 422, '"loc":["body","text"]'),
    ("extra-field", lambda u: _post(u, _comment(admin=True)), 422, "extra_forbidden"),
    ("id-traversal", lambda u: _post(u, _comment(id="../../etc/passwd")), 422, '"loc":["body","id"]'),
    ("id-nul", lambda u: _post(u, _comment(id="h\x00x")), 422, '"loc":["body","id"]'),
    ("id-rtl", lambda u: _post(u, _comment(id="h-\u202e1")), 422, '"loc":["body","id"]'),
    ("id-overlong", lambda u: _post(u, _comment(id="h" * 129)), 422, '"loc":["body","id"]'),
    ("brand-homoglyph", lambda u: _post(u, _comment(brand="dеmo")), 422, '"loc":["body","brand"]'),
    ("brand-traversal", lambda u: _post(u, _comment(brand="../demo")), 422, '"loc":["body","brand"]'),
    ("brand-unknown", lambda u: _post(u, _comment(brand="other")), 404, "unknown brand 'other'"),
    ("text-empty", lambda u: _post(u, _comment(text="")), 422, '"loc":["body","text"]'),
    ("author-rtl", lambda u: _post(u, _comment(author="ann\u202egnp")), 422, "U+202E at position 3"),
    ("author-nul", lambda u: _post(u, _comment(author="ann\x00")), 422, '"loc":["body","author"]'),
    ("post-id-zero-width", lambda u: _post(u, _comment(post_id="p\u200b1")), 422, "U+200B"),
    ("forged-signature", lambda u: _post(u, _comment(), secret="not-the-shared-secret"), 401,
     "signature mismatch"),
    ("stale-timestamp", lambda u: _post(u, _comment(), skew=-3600), 401, "stale timestamp"),
    ("future-timestamp", lambda u: _post(u, _comment(), skew=3600), 401, "in the future"),
    ("malformed-timestamp", lambda u: _post(u, _comment(), headers={TIMESTAMP_HEADER: "1e9"}), 401,
     "malformed X-Zpipe-Timestamp"),
    ("malformed-signature", lambda u: _post(u, _comment(), headers={SIGNATURE_HEADER: "md5=abc"}), 401,
     "malformed X-Zpipe-Signature"),
    ("missing-timestamp", lambda u: _post(u, _comment(), drop=TIMESTAMP_HEADER), 401,
     "missing X-Zpipe-Timestamp"),
    ("missing-signature", lambda u: _post(u, _comment(), drop=SIGNATURE_HEADER), 401,
     "missing X-Zpipe-Signature"),
    ("replayed-signature", _replayed, 401, "replayed"),
    ("status-traversal", lambda u: httpx.get(f"{u}/v1/comments/..%2F..%2Fetc%2Fpasswd"), 404, "Not Found"),
    ("status-bad-id", lambda u: httpx.get(f"{u}/v1/comments/a%00b"), 422, "string_pattern_mismatch"),
]


@pytest.mark.parametrize(("request_", "status", "expected"), [c[1:] for c in INTAKE_CASES],
                         ids=[c[0] for c in INTAKE_CASES])
def test_hostile_request_is_4xx_with_a_json_error(intake, request_: Callable[[str], httpx.Response],
                                                  status: int, expected: str):
    url, recorder, store = intake
    before = len(recorder.events)
    response = request_(url)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = json.dumps(response.json(), separators=(",", ":"), ensure_ascii=False)
    assert expected in body, body
    assert SECRET not in response.text
    assert len(recorder.events) == before + (1 if request_ is _replayed else 0)  # nothing queued
    assert all(k.startswith("_comments/") for k in _walk(store))  # only ledger records


# --- 8. a whole campaign from hostile data: every file lands under its prefix ------------------

HOSTILE_FEED = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>hostile</title>
<item><title>../../../../tmp/zpipe-pwned {{ 7*7 }} \u202egpj.exe</title></item>
</channel></rss>
"""


@pytest.mark.slow
def test_hostile_campaign_writes_only_under_its_prefix(tree: Path, tmp_path: Path, zpipe_cache):
    from tasks.content.plan import brand_fingerprint, plan_week
    from tasks.generation.engine import generate_images
    from tasks.publish.batch import publish_batch
    from tasks.store.spool import URL_SUFFIX, Spool

    # 1. Hostile but valid data: template text in the brand name, themes, rule additions and trend
    (tree / "trends/hostile.xml").write_text(HOSTILE_FEED, encoding="utf-8")
    brand_file, campaign_file = tree / "brands/demo.yaml", tree / "campaigns/weekly-demo.yaml"
    _edit(brand_file, "name", "{{ 7*7 }} Coffee")
    _edit(campaign_file, "name", "hostile-week")
    _edit(campaign_file, "formats", ["1:1"])
    _edit(campaign_file, "days",
          {"mon": {"zh": "{{ config }} 周一", "en": "{% for x in range(3) %}X{% endfor %}"}})
    _edit(campaign_file, "trends",
          {"sources": [{"name": "hostile", "kind": "rss", "url": "../trends/hostile.xml"}]})
    _edit(campaign_file, "rules", [{"name": "inject", "when": {"weekday": ["mon"]}, "then": {"add": {
        "part": "scene", "zh": ["{{ ''.__class__ }}"], "en": ["{{ lipsum.__globals__ }}"]}}}])
    bundle = load_campaign(campaign_file)
    report = ingest(bundle.campaign.trends.sources)
    assert not report.failures and len(report.trends) == 1

    # 2. Plan, generate (tiny model), label, publish into a LocalStore
    engine = EngineSettings(model="tiny", preview_scale=0.25, max_batch=4)  # as test_flow: one engine
    jobs = plan_week(bundle, "2026-W48", date(2026, 11, 23), report.trends, engine, brand_fingerprint(bundle))
    assert len(jobs) == 1
    store = LocalStore(tmp_path / "out")
    [result] = generate_images(jobs, engine)
    spool = Spool(tmp_path / "spool", store.describe())  # emptied once the store has the image
    outcome = publish_batch(store, jobs, [result], bundle.brand, spool, patience_s=0)
    assert [p.key for p in outcome.published] == [jobs[0].key] and not outcome.failed

    # 3. Every file is under demo/hostile-week/2026-W48/; nothing else was written anywhere
    written = [p for p in _walk(tmp_path) if not p.startswith("configs/")]
    record = f"spool/{spool.dir.name}{URL_SUFFIX}"  # the spool's note of its store (for a worker's drain)
    assert record in written and (tmp_path / record).read_text(encoding="utf-8") == store.describe()
    written.remove(record)
    assert len(written) == 2 and all(p.startswith("out/demo/hostile-week/2026-W48/mon/") for p in written)
    assert not Path("/tmp/zpipe-pwned").exists()
    sidecar = json.loads(store.get(jobs[0].sidecar_key))
    for literal in ("{{ 7*7 }} Coffee", "{{ config }} 周一", "{% for x in range(3) %}X{% endfor %}",
                    "{{ ''.__class__ }}", "{{ lipsum.__globals__ }}",
                    "../../../../tmp/zpipe-pwned {{ 7*7 }}"):
        assert literal in sidecar["prompt"], literal
    assert "\u202e" not in sidecar["prompt"] and "\u202e" not in sidecar["trend"]
