"""Trend ingestion against real-format feeds served from a loopback HTTP server."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from pydantic import ValidationError

from tasks.core.errors import ConfigError, SourceError
from tasks.steps.trends import ingest_trends
from tasks.store.objects import LocalStore
from tasks.trends.sources import (
    CachedResponse,
    JsonMapping,
    MemoryHttpCache,
    SourceFile,
    StoreHttpCache,
    Trend,
    TrendReport,
    TrendSource,
    decode_body,
    dedupe_trends,
    fetch,
    fetch_source,
    ingest,
    load_source,
    parse_csv,
    parse_json,
    parse_rss,
    parse_yaml,
    read_source,
    trend_key,
)

REPO = Path(__file__).resolve().parents[3]
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "trends"
HOT_MAPPING = JsonMapping(
    items="data.realtime", title="word", score="num", url="url", published="onboard_time"
)
FAST = {"backoff_s": 0.01}  # retry quickly in tests
LAST_MODIFIED = "Sun, 22 Nov 2026 02:00:00 GMT"
TYPES = {".xml": "application/rss+xml", ".rdf": "application/rdf+xml", ".json": "application/json",
         ".csv": "text/csv", ".yaml": "application/yaml"}


class _Handler(BaseHTTPRequestHandler):
    """Routes:
    /fixtures/<file>[?ct=<Content-Type>]      the file (Content-Type by suffix unless ct= is given)
    /flaky/<tag>/<n>/<file>                    HTTP 500 for the first n requests, then the file
    /limited/<tag>/<seconds>/<file>            HTTP 429 with Retry-After: <seconds> once, then the file
    /etag/<file>, /lastmod/<file>              validators; 304 when the request's one matches
    /status/<code>, /slow, /big, /big-declared, /redirect, /ua
    """

    server: _Server

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        with self.server.lock:
            self.server.log.append((path, dict(self.headers.items())))
            self.server.hits[path] = hits = self.server.hits.get(path, 0) + 1
        if path.startswith("/fixtures/"):
            name = path.removeprefix("/fixtures/")
            self._send(200, (FIXTURES / name).read_bytes(), query.get("ct", [self._type(name)])[0])
        elif path.startswith("/flaky/"):
            _, _, failures, name = path.split("/", 4)[1:]
            if hits <= int(failures):
                self._send(500, b"<html>try again</html>")
            else:
                self._send(200, (FIXTURES / name).read_bytes(), self._type(name))
        elif path.startswith("/limited/"):
            _, _, seconds, name = path.split("/", 4)[1:]
            if hits == 1:
                self._send(429, b"slow down", headers={"Retry-After": seconds})
            else:
                self._send(200, (FIXTURES / name).read_bytes(), self._type(name))
        elif path.startswith("/etag/"):
            body = (FIXTURES / path.removeprefix("/etag/")).read_bytes()
            etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
            if self.headers.get("If-None-Match") == etag:
                self._send(304, b"", headers={"ETag": etag})
            else:
                self._send(200, body, "application/rss+xml; charset=utf-8", {"ETag": etag})
        elif path.startswith("/lastmod/"):
            body = (FIXTURES / path.removeprefix("/lastmod/")).read_bytes()
            if self.headers.get("If-Modified-Since") == LAST_MODIFIED:
                self._send(304, b"")
            else:
                self._send(200, body, "application/json", {"Last-Modified": LAST_MODIFIED})
        elif path.startswith("/status/"):
            self._send(int(path.removeprefix("/status/")), b"<html>upstream error</html>")
        elif path == "/slow":
            self.server.release.wait(timeout=5)  # released at teardown so the thread ends
            self._send(200, (FIXTURES / "rss2.xml").read_bytes())
        elif path == "/big":  # no Content-Length: only counting the streamed body catches it
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml")
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"<!-- padding -->" * 64)
        elif path == "/big-declared":
            self._send(200, b" " * 50_000)
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/fixtures/rss2.xml")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/ua":
            agent = self.headers.get("User-Agent", "")
            self._send(200, f'{{"data": {{"realtime": [{{"word": "{agent}"}}]}}}}'.encode())
        else:
            self._send(404, b"not found")

    @staticmethod
    def _type(name: str) -> str:
        return TYPES.get(Path(name).suffix, "application/octet-stream")

    def _send(self, status: int, body: bytes, content_type: str | None = None,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 304:
            # the client may have given up already (a timeout test): nothing to answer then
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    release: threading.Event
    lock: threading.Lock
    log: list[tuple[str, dict[str, str]]]
    hits: dict[str, int]


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    """A loopback HTTP server on a free port serving the fixtures and failure modes."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.release = threading.Event()
    server.lock = threading.Lock()
    server.log = []
    server.hits = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def base_url(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def _requests(server: _Server, path: str) -> list[dict[str, str]]:
    """The headers of every request the server saw for `path`."""
    with server.lock:
        return [headers for seen, headers in server.log if seen == path]


def _rss(name: str, url: str, **kw: object) -> TrendSource:
    return TrendSource(name=name, kind="rss", url=url, **kw)


def _hot(name: str, url: str, **kw: object) -> TrendSource:
    return TrendSource(name=name, kind="json", url=url, mapping=HOT_MAPPING, **kw)


# ---------------------------------------------------------------------------------------------
# The whole ingest run


def test_ingest_reports_broken_sources_and_keeps_good_ones(base_url: str) -> None:
    sources = [
        _rss("google", f"{base_url}/fixtures/rss2.xml"),
        _rss("picks", f"{base_url}/fixtures/atom.xml"),
        _hot("weibo", f"{base_url}/fixtures/hot.json"),
        _rss("night", f"{base_url}/fixtures/rss1.rdf"),
        TrendSource(name="calendar", kind="csv", url=f"{base_url}/fixtures/calendar.csv"),
        _rss("down", f"{base_url}/status/500", **FAST),
        _rss("broken-xml", f"{base_url}/fixtures/malformed.xml"),
        _hot("wrong-shape", f"{base_url}/fixtures/wrong-shape.json"),
        _hot("wrong-title", f"{base_url}/fixtures/wrong-title.json"),
        _rss("huge", f"{base_url}/big", max_bytes=1000),
        _rss("slow", f"{base_url}/slow", timeout_s=0.3, retries=0),
        _rss("binary", f"{base_url}/fixtures/gzipped.xml"),
        _rss("off", f"{base_url}/status/500", enabled=False),
    ]
    started = time.monotonic()
    report = ingest(sources)
    assert time.monotonic() - started < 3

    reasons = {f.source: f.reason for f in report.failures}
    assert list(reasons) == ["down", "broken-xml", "wrong-shape", "wrong-title", "huge", "slow",
                             "binary"]
    assert "HTTP 500" in reasons["down"] and f"{base_url}/status/500" in reasons["down"]
    assert "gave up after 3 attempts" in reasons["down"]
    assert "not well-formed" in reasons["broken-xml"]
    assert "'data.realtime'" in reasons["wrong-shape"]
    assert "found dict" in reasons["wrong-shape"]
    assert "mapping.title 'word' found no title in any of the 2 items" in reasons["wrong-title"]
    assert "keys: note, hot" in reasons["wrong-title"]
    assert "larger than 1000 bytes" in reasons["huge"]
    assert "timed out" in reasons["slow"] and "0.3 s" in reasons["slow"]
    assert "cannot decode the body" in reasons["binary"] and "1f 8b" in reasons["binary"]

    titles = [t.title for t in report.trends]
    assert {"Matcha latte season", "Winter skincare", "夜市 美食", "初雪限定饮品",
            "双十一预热"} <= set(titles)
    assert {t.source for t in report.trends} == {"google", "picks", "weibo", "night", "calendar"}


def test_ingest_dedupes_across_sources_and_keeps_max_score(base_url: str) -> None:
    sources = [
        _rss("google", f"{base_url}/fixtures/rss2.xml"),  # "Citywalk 路线", 20,000+
        _rss("picks", f"{base_url}/fixtures/atom.xml", tags=["picks"]),  # "CITYWALK路线!", no score
        _hot("weibo", f"{base_url}/fixtures/hot.json"),  # "#citywalk路线#", 1,204,881
    ]
    report = ingest(sources)
    citywalk = [t for t in report.trends if t.key == "citywalk路线"]
    assert len(citywalk) == 1
    assert citywalk[0].title == "Citywalk 路线"  # the first occurrence wins...
    assert citywalk[0].source == "google"
    assert citywalk[0].score == 1_204_881  # ...with the highest score seen
    assert citywalk[0].also_in == ["picks", "weibo"]  # ...and knows who else listed it
    assert citywalk[0].sources == ["google", "picks", "weibo"]
    assert citywalk[0].tags == ["picks"]
    assert report.failures == []


def test_ingest_orders_by_score_then_source_then_rank(base_url: str) -> None:
    picks = _rss("picks", f"{base_url}/fixtures/atom.xml")
    report = ingest([picks, _hot("weibo", f"{base_url}/fixtures/hot.json")])
    scores = [t.score for t in report.trends]
    scored = [s for s in scores if s is not None]
    assert scored == sorted(scored, reverse=True)
    assert scores[len(scored):] == [None] * (len(scores) - len(scored))  # no score comes last
    unscored = [(t.source, t.rank) for t in report.trends if t.score is None]
    assert unscored == [("picks", 1), ("weibo", 4)]


def test_ingest_weight_scales_ranking_not_the_score(base_url: str) -> None:
    report = ingest(
        [
            _rss("google", f"{base_url}/fixtures/rss2.xml"),
            _hot("weibo", f"{base_url}/fixtures/hot.json", weight=0.001),
        ]
    )
    # Citywalk keeps google's weight 1 (its first source) with weibo's score 1,204,881;
    # 5,000 × 1 beats weibo's 2,846,193 × 0.001, which beats 1,000 × 1.
    top = [t.title for t in report.trends[:4]]
    assert top == ["Citywalk 路线", "露营 咖啡 & 手冲", "初雪限定饮品", "Winter skincare"]
    assert next(t for t in report.trends if t.title == "初雪限定饮品").score == 2_846_193


def test_ingest_uses_a_given_client(base_url: str) -> None:
    with httpx.Client() as client:
        report = ingest([_rss("google", f"{base_url}/redirect")], client=client)
    assert [t.title for t in report.trends][:1] == ["Citywalk 路线"]


# ---------------------------------------------------------------------------------------------
# Fetch: limits, retries, conditional GET


def test_fetch_sends_user_agent_and_follows_redirects(base_url: str) -> None:
    trends = read_source(_hot("ua", f"{base_url}/ua"))
    assert trends[0].title == "zpipe/0.1"
    assert fetch_source(_rss("r", f"{base_url}/redirect")).startswith(b"<?xml")


def test_fetch_rejects_a_declared_oversized_body(base_url: str) -> None:
    with pytest.raises(SourceError, match="response larger than 1000 bytes"):
        fetch_source(_rss("big", f"{base_url}/big-declared", max_bytes=1000))


def test_fetch_names_status_and_url_and_does_not_retry_a_404(server: _Server, base_url: str) -> None:
    with pytest.raises(SourceError, match=r"HTTP 404 Not Found") as err:
        fetch_source(_rss("gone", f"{base_url}/status/404", **FAST))
    assert f"{base_url}/status/404" in str(err.value)
    assert "gave up" not in str(err.value)


def test_fetch_reports_connection_refused() -> None:
    with pytest.raises(SourceError, match="ConnectError") as err:
        fetch_source(_rss("nobody", "http://127.0.0.1:9/feed.xml", timeout_s=1, retries=0))
    assert "gave up after 1 attempt" in str(err.value)


def test_http_500_recovers_through_retries(server: _Server, base_url: str) -> None:
    path = "/flaky/recover/2/rss2.xml"
    trends = read_source(_rss("flaky", base_url + path, retries=2, **FAST))
    assert trends[0].title == "Citywalk 路线"
    assert server.hits[path] == 3  # two 500s, then the feed

    path = "/flaky/give-up/5/rss2.xml"
    with pytest.raises(SourceError, match=r"HTTP 500 .*gave up after 2 attempts"):
        read_source(_rss("flaky", base_url + path, retries=1, **FAST))
    assert server.hits[path] == 2


def test_backoff_doubles_between_attempts(base_url: str) -> None:
    waits: list[float] = []
    source = _rss("flaky", f"{base_url}/flaky/backoff/3/rss2.xml", retries=3, backoff_s=0.5)
    fetched = fetch(source, sleep=waits.append)
    assert fetched.body.startswith(b"<?xml")
    assert waits == [0.5, 1.0, 2.0]


def test_timeouts_are_retried(server: _Server, base_url: str) -> None:
    before = server.hits.get("/slow", 0)
    with pytest.raises(SourceError, match=r"timed out after 0.2 s .*gave up after 2 attempts"):
        fetch_source(_rss("slow", f"{base_url}/slow", timeout_s=0.2, retries=1, **FAST))
    assert server.hits["/slow"] - before == 2


def test_retry_after_is_honoured_up_to_its_cap(server: _Server, base_url: str) -> None:
    waits: list[float] = []
    source = _hot("limited", f"{base_url}/limited/ok/0.25/hot.json", backoff_s=5)
    assert fetch(source, sleep=waits.append).body.startswith(b"{")
    assert waits == [0.25]  # the server's Retry-After, not the 5 s backoff

    path = "/limited/too-long/3600/hot.json"
    with pytest.raises(SourceError, match=r"HTTP 429 .*retry after 3600 s, longer than "
                                          r"retry_after_cap_s=30; skipped this run"):
        fetch_source(_hot("limited", base_url + path, retry_after_cap_s=30))
    assert server.hits[path] == 1  # no retry against the server's wish


def test_etag_conditional_get_reuses_the_cached_body(server: _Server, base_url: str,
                                                     tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    cache = StoreHttpCache(store)
    source = _rss("google", f"{base_url}/etag/rss2.xml")

    first = ingest([source], cache=cache)
    assert store.list("_trends/http-cache/") == [cache.key(source.url)]
    second = ingest([source], cache=cache)

    requests = _requests(server, "/etag/rss2.xml")
    assert "If-None-Match" not in requests[-2]
    assert requests[-1]["If-None-Match"] == cache.get(source.url).etag  # type: ignore[union-attr]
    assert second.trends == first.trends
    assert first.notes == []
    assert [n.message for n in second.notes] == [
        "not modified since the last fetch (HTTP 304); reused the cached body"
    ]


def test_last_modified_conditional_get(server: _Server, base_url: str) -> None:
    cache = MemoryHttpCache()
    source = _hot("weibo", f"{base_url}/lastmod/hot.json")
    assert fetch(source, cache=cache).from_cache is False
    again = fetch(source, cache=cache)
    assert again.from_cache is True and again.content_type == "application/json"
    assert _requests(server, "/lastmod/hot.json")[-1]["If-Modified-Since"] == LAST_MODIFIED
    assert [t.title for t in read_source(source, cache=cache)][:1] == ["初雪限定饮品"]


def test_an_unreadable_cache_entry_costs_only_the_conditional_get(base_url: str,
                                                                   tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    cache = StoreHttpCache(store)
    source = _rss("google", f"{base_url}/etag/rss2.xml")
    store.put(cache.key(source.url), b"{not json", overwrite=True)
    report = ingest([source], cache=cache)
    assert report.failures == [] and report.trends[0].title == "Citywalk 路线"
    assert "HTTP cache entry unreadable" in report.notes[0].message
    assert isinstance(cache.get(source.url), CachedResponse)  # rewritten by the full fetch


def test_file_sources_resolve_against_the_config_dir() -> None:
    source = _rss("local", "rss2.xml").resolve_against(FIXTURES)
    assert source.url == str(FIXTURES / "rss2.xml")
    assert read_source(source)[0].title == "Citywalk 路线"
    absolute = _rss("abs", str(FIXTURES / "atom.xml"))
    assert absolute.resolve_against(Path("/elsewhere")) == absolute
    remote = _rss("remote", "https://example.com/feed.xml")
    assert remote.resolve_against(FIXTURES) == remote


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.xml"
    with pytest.raises(SourceError, match="does not exist") as err:
        fetch_source(_rss("local", str(missing)))
    assert str(missing) in str(err.value)
    report = ingest([_rss("local", str(missing)), _rss("ok", str(FIXTURES / "rss1.rdf"))])
    assert [f.source for f in report.failures] == ["local"]
    assert [t.title for t in report.trends] == ["夜市 美食"]


def test_max_items_truncates() -> None:
    trends = read_source(_hot("hot", str(FIXTURES / "hot.json"), max_items=2))
    assert [t.title for t in trends] == ["初雪限定饮品", "#citywalk路线#"]


# ---------------------------------------------------------------------------------------------
# Encodings


GBK_TITLES = ["秋冬围巾穿搭", "围炉煮茶", "夜市美食"]


@pytest.mark.parametrize("content_type", ["application/rss+xml", "text/xml; charset=GBK"])
def test_gbk_feed_decodes_by_its_declared_charset(base_url: str, content_type: str) -> None:
    url = f"{base_url}/fixtures/gbk.xml?ct={quote(content_type)}"
    report = ingest([_rss("gbk", url)])
    assert [t.title for t in report.trends] == GBK_TITLES
    assert [t.score for t in report.trends] == [200_000, 50_000, 20_000]
    assert report.notes == []  # declared right: nothing to say


def test_body_invalid_in_its_declared_charset_falls_back(base_url: str) -> None:
    url = f"{base_url}/fixtures/gbk-undeclared.xml?ct={quote('application/rss+xml; charset=utf-8')}"
    report = ingest([_rss("mislabelled", url)])
    assert [t.title for t in report.trends] == GBK_TITLES
    assert report.notes[0].message.startswith("the body is not valid in its declared charset 'utf-8'")
    assert report.notes[0].message.endswith("read as gb18030")


def test_utf8_body_declared_as_gb2312_is_read_as_utf8(base_url: str) -> None:
    report = ingest([_rss("mislabelled", f"{base_url}/fixtures/utf8-declared-gb2312.xml")])
    assert [t.title for t in report.trends] == GBK_TITLES
    assert "declared charset 'gb2312' but the body is UTF-8" in report.notes[0].message


def test_gbk_json_with_a_charset_header(base_url: str) -> None:
    url = f"{base_url}/fixtures/hot-gbk.json?ct={quote('application/json; charset=GBK')}"
    report = ingest([_hot("gbk-api", url)])
    assert [(t.title, t.score) for t in report.trends] == [("秋冬围巾穿搭", 1_930_577),
                                                           ("宠物友好咖啡馆", 653_000)]


def test_a_configured_encoding_wins_and_is_checked() -> None:
    path = str(FIXTURES / "gbk-undeclared.xml")
    assert [t.title for t in read_source(_rss("forced", path, encoding="gbk"))] == GBK_TITLES
    with pytest.raises(SourceError, match=r"not valid utf-8 \(the source's `encoding`\) at byte"):
        read_source(_rss("forced", path, encoding="utf-8"))
    with pytest.raises(ValidationError, match="unknown encoding 'klingon'"):
        _rss("forced", path, encoding="klingon")


def test_decode_body_bom_and_undecodable() -> None:
    assert decode_body("\ufeff夜市".encode("utf-16-le"), "s").text == "夜市"
    assert decode_body(b"\xef\xbb\xbfplain", "s").text == "plain"
    with pytest.raises(SourceError, match=r"'binary': cannot decode the body as text: not valid "
                                          r"UTF-8 \(byte 0x8b at offset 1\)"):
        decode_body((FIXTURES / "gzipped.xml").read_bytes(), "binary")


# ---------------------------------------------------------------------------------------------
# Parse


def test_parse_rss2_with_google_trends_traffic() -> None:
    trends = parse_rss((FIXTURES / "rss2.xml").read_bytes(), "google")
    assert [t.title for t in trends] == ["Citywalk 路线", "露营 咖啡 & 手冲", "Winter skincare"]
    assert [t.score for t in trends] == [20_000, 5_000, 1_000]
    assert [t.rank for t in trends] == [1, 2, 3]
    assert trends[0].published == datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    assert trends[0].url == "https://trends.example.com/topic/citywalk"
    assert trends[0].source == "google"


def test_parse_rss_custom_namespace_count_and_categories(base_url: str) -> None:
    data = (FIXTURES / "rss-custom-ns.xml").read_bytes()
    assert [t.score for t in parse_rss(data, "city")] == [None, None]  # unknown element...
    trends = parse_rss(data, "city", score_field="hs_heat")  # ...named in the source config
    assert [(t.title, t.score, t.tags) for t in trends] == [
        ("秋冬 围巾 穿搭攻略", 12_000, ["穿搭", "fashion"]),
        ("夜市 美食", 8_500, ["food"]),
    ]
    assert trends[0].published == datetime(2026, 11, 22, 0, 30, tzinfo=UTC)  # dc:date

    source = _rss("city", f"{base_url}/fixtures/rss-custom-ns.xml", score_field="hs_heat",
                  tags=["city", "food"])
    assert read_source(source)[1].tags == ["city", "food"]  # the source's first, no repeats
    with pytest.raises(ValidationError, match="score_field is for rss feeds only"):
        _hot("x", "hot.json", score_field="num")


def test_parse_atom_and_rss1() -> None:
    atom = parse_rss((FIXTURES / "atom.xml").read_bytes(), "picks")
    assert atom[0].title == "Matcha latte season"  # HTML stripped
    assert atom[0].published == datetime(2026, 11, 22, 1, 30, tzinfo=UTC)  # published first
    assert atom[1].published == datetime(2026, 11, 21, 18, 0, tzinfo=UTC)  # else updated
    assert all(t.score is None for t in atom)
    rdf = parse_rss((FIXTURES / "rss1.rdf").read_bytes(), "night")
    assert [(t.title, t.published) for t in rdf] == [
        ("夜市 美食", datetime(2026, 11, 21, 12, 0, tzinfo=UTC))
    ]


def test_parse_rss_rejects_a_non_feed() -> None:
    with pytest.raises(SourceError, match=r"'html-page'.*not an RSS or Atom feed"):
        parse_rss(b"<html><body>502 Bad Gateway</body></html>", "html-page")


def test_parse_rss_never_treats_bytes_as_a_path() -> None:
    path = str(FIXTURES / "rss2.xml").encode()
    with pytest.raises(SourceError):
        parse_rss(path, "path-bytes")


def test_parse_json_fields() -> None:
    trends = parse_json((FIXTURES / "hot.json").read_bytes(), HOT_MAPPING, "weibo")
    by_title = {t.title: t for t in trends}
    assert list(by_title) == ["初雪限定饮品", "#citywalk路线#", "宠物友好咖啡馆", "手作陶艺体验"]
    assert [t.rank for t in trends] == [1, 2, 3, 4]  # the untitled item is skipped
    assert by_title["#citywalk路线#"].score == 1_204_881  # "1,204,881"
    assert by_title["宠物友好咖啡馆"].score == 653_000  # "65.3万"
    assert by_title["手作陶艺体验"].score is None  # "n/a"
    assert by_title["初雪限定饮品"].published == datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
    assert by_title["#citywalk路线#"].published == datetime(2026, 11, 22, 1, 0, tzinfo=UTC)
    assert by_title["宠物友好咖啡馆"].published is None


def test_json_api_of_another_shape_needs_only_a_mapping(base_url: str) -> None:
    mapping = JsonMapping(items="data.cards[0].content", title="word", score="hotScore", url="url",
                          published="timestamp", tags="hotTag")
    source = TrendSource(name="search", kind="json", url=f"{base_url}/fixtures/api.json",
                         mapping=mapping)
    trends = read_source(source)
    assert [(t.title, t.score, t.tags) for t in trends] == [
        ("秋冬围巾穿搭", 4_821_903, ["热", "穿搭"]),
        ("初雪限定饮品", 3_310_022, ["新"]),
        ("网络赌博新套路", 2_200_000, []),
    ]
    assert trends[0].published == datetime(2026, 11, 22, 2, 0, tzinfo=UTC)  # milliseconds


def test_parse_json_bad_json_names_line_and_column() -> None:
    with pytest.raises(SourceError, match=r"'weibo': invalid JSON at line 2, column 5"):
        parse_json(b'{"data":\n    oops}', HOT_MAPPING, "weibo")


def test_parse_json_missing_path() -> None:
    with pytest.raises(SourceError, match=r"'data\.realtime' must select a list, found null"):
        parse_json(b'{"result": []}', HOT_MAPPING, "weibo")
    assert parse_json(b'{"data": {"realtime": []}}', HOT_MAPPING, "weibo") == []  # empty is fine


def test_parse_csv_calendar() -> None:
    trends = parse_csv((FIXTURES / "calendar.csv").read_bytes(), "calendar")
    assert [(t.title, t.score, t.tags) for t in trends] == [
        ("双十一预热", 90, ["promo", "shopping"]),
        ("初雪限定饮品上新", 80, ["launch", "seasonal"]),
        ("Year-end member week", None, ["promo", "members"]),
    ]
    assert [t.published for t in trends] == [
        datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC),
        datetime(2026, 12, 26, tzinfo=UTC),
    ]
    assert [t.url for t in trends] == ["https://brand.example.com/1111", None,
                                       "https://brand.example.com/members"]


def test_parse_csv_with_own_column_names_and_errors() -> None:
    mapping = JsonMapping(items="@", title='"话题"', score='"热度"', published='"日期"')
    trends = parse_csv((FIXTURES / "calendar-zh.csv").read_bytes(), "zh", mapping)
    assert [(t.title, t.score, t.published) for t in trends] == [
        ("冬至暖心热饮", 70, datetime(2026, 12, 21, tzinfo=UTC)),
        ("圣诞节门店装饰", 65, datetime(2026, 12, 20, tzinfo=UTC)),
    ]
    with pytest.raises(SourceError, match=r"'zh': the CSV has no 'title' column \(columns: 话题, 热度"):
        parse_csv((FIXTURES / "calendar-zh.csv").read_bytes(), "zh")
    assert parse_csv(b"Title,Score\n", "empty") == []  # a header alone is an empty calendar


def test_parse_yaml_calendar() -> None:
    trends = parse_yaml((FIXTURES / "calendar.yaml").read_bytes(), "plan")
    assert [(t.title, t.score, t.tags, t.rank) for t in trends] == [
        ("围炉煮茶", None, [], 1),
        ("冬至暖心热饮", 70, ["festival", "seasonal"], 2),
        ("圣诞节门店装饰", None, ["festival", "store"], 3),
    ]
    assert trends[1].published == datetime(2026, 12, 21, tzinfo=UTC)
    assert [t.title for t in parse_yaml("- 双十一预热\n- 冬至\n", "list")] == ["双十一预热", "冬至"]
    with pytest.raises(SourceError, match=r"'plan': invalid YAML at line 3, column 1: expected ','"):
        parse_yaml(b"trends:\n  - [unclosed\n", "plan")


# ---------------------------------------------------------------------------------------------
# Source files


def _write(tmp_path: Path, text: str, name: str = "src.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_source_files_in_configs() -> None:
    folder = REPO / "configs" / "sources"
    loaded = {path.name: load_source(path) for path in sorted(folder.glob("*.yaml"))}
    feed = loaded["sample-feed.yaml"]
    assert (feed.name, feed.kind, feed.tags) == ("sample-feed", "rss", ["lifestyle"])
    assert feed.url == str(REPO / "configs" / "trends" / "sample-feed.xml")
    assert loaded["sample-hot.yaml"].mapping is not None
    calendar = loaded["brand-calendar.yaml"]
    assert (calendar.kind, calendar.weight) == ("csv", 1.5)
    example = loaded["google-trends-example.yaml"]
    assert example.is_http and example.enabled is False

    report = ingest(list(loaded.values()))
    assert report.failures == []
    assert {"sample-feed", "sample-hot", "brand-calendar"} == {t.source for t in report.trends}


def test_load_source_errors_name_file_field_and_value(tmp_path: Path) -> None:
    cases = {
        "kind: rss\nname: x\nurl: https://e.com/f.xml\n": ("kind", "`format: rss`"),
        "kind: source\nname: x\nurl: https://e.com/f.xml\n": ("format", "Field required"),
        "kind: source\nname: x\nformat: atom\nurl: https://e.com/f\n": ("format", "'atom'"),
        "kind: source\nname: x\nformat: rss\nurl: https://e.com/f\nretry: 3\n": ("retry", "unknown field"),
        "kind: source\nname: x\nformat: json\nurl: https://e.com/f\nmapping: {items: 'a[', title: t}\n": (
            "mapping.items", "not a valid JMESPath"),
        "kind: source\nname: x\nformat: csv\nurl: missing.csv\n": ("url", "'missing.csv'"),
    }
    for text, (field, message) in cases.items():
        path = _write(tmp_path, text)
        with pytest.raises(ConfigError) as err:
            load_source(path)
        assert err.value.file == str(path) and err.value.field == field, str(err.value)
        assert message in str(err.value)
    disabled = _write(tmp_path, "kind: source\nname: x\nformat: csv\nurl: missing.csv\nenabled: false\n")
    assert load_source(disabled).enabled is False  # a disabled source may point nowhere yet


def test_source_file_model_maps_format_to_kind() -> None:
    model = SourceFile.model_validate({"kind": "source", "name": "n", "format": "yaml", "url": "a.yaml"})
    assert model.to_source() == TrendSource(name="n", kind="yaml", url="a.yaml")


# ---------------------------------------------------------------------------------------------
# Models, keys and dedupe


def test_source_validation() -> None:
    with pytest.raises(ValidationError, match="no mapping"):
        TrendSource(name="hot", kind="json", url="hot.json")
    with pytest.raises(ValidationError, match="remove the mapping"):
        TrendSource(name="feed", kind="rss", url="feed.xml", mapping=HOT_MAPPING)
    with pytest.raises(ValidationError, match="unsupported scheme 'ftp'"):
        TrendSource(name="feed", kind="rss", url="ftp://example.com/feed.xml")
    with pytest.raises(ValidationError, match="extra"):
        TrendSource(name="feed", kind="rss", url="feed.xml", retry=3)  # type: ignore[call-arg]
    assert TrendSource(name="c", kind="csv", url="c.csv", tags=[" a ", "a", ""]).tags == ["a"]


def test_mapping_rejects_bad_jmespath() -> None:
    with pytest.raises(ValidationError, match=r"mapping\.score: 'num\[' is not a valid JMESPath"):
        JsonMapping(items="data.realtime", title="word", score="num[")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("秋冬围巾穿搭", "#秋冬 围巾穿搭#"),
        ("Citywalk 路线", "CITYWALK路线!"),
        ("【露营咖啡】", "露营，咖啡。"),
        ("ＡＢＣ　咖啡", "abc咖啡"),  # full-width letters and space (NFKC)
        ("Straße", "STRASSE"),  # casefold
        ("围炉\u200b煮茶", "围炉煮茶"),  # zero-width space
    ],
)
def test_trend_key_ignores_spacing_punctuation_and_case(a: str, b: str) -> None:
    assert trend_key(a) == trend_key(b)


def test_trend_key_keeps_distinct_titles_apart() -> None:
    assert trend_key("露营咖啡") != trend_key("露营茶")
    assert trend_key("!!!") == "!!!"  # nothing but punctuation still gets a key


def test_dedupe_keeps_first_with_max_score_in_stable_order() -> None:
    def t(title: str, score: float | None, source: str = "s", rank: int = 1,
          tags: list[str] | None = None) -> Trend:
        return Trend(title=title, score=score, source=source, rank=rank, tags=tags or [])

    out = dedupe_trends(
        [t("A b", None, tags=["x"]), t("C", 3), t("a-B", 7, "other", 2, ["y", "x"]), t("c", 1),
         t("#AB#", 5, "third")]
    )
    assert [(x.title, x.score, x.source) for x in out] == [("A b", 7, "s"), ("C", 3, "s")]
    assert (out[0].tags, out[0].also_in) == (["x", "y"], ["other", "third"])
    assert out[1].also_in == []  # the same source twice is not agreement


def test_trend_published_is_utc() -> None:
    naive = Trend(title="x", source="s", rank=1, published=datetime(2026, 11, 23, 8, 0))
    assert naive.published == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    aware = Trend(title="x", source="s", rank=1, published="2026-11-23T08:00:00+08:00")
    assert aware.published is not None and aware.published.utcoffset().total_seconds() == 0
    assert aware.published.hour == 0


def test_report_reads_json_written_before_notes_existed() -> None:
    report = TrendReport.model_validate({"trends": [{"title": "x", "source": "s", "rank": 1}],
                                         "failures": []})
    assert report.notes == [] and report.trends[0].tags == [] and report.trends[0].also_in == []


# ---------------------------------------------------------------------------------------------
# Shipped samples and the Prefect wrapper


def test_sample_files_in_configs_parse() -> None:
    base = REPO / "configs" / "trends"
    sources = [
        _rss("sample-feed", "sample-feed.xml").resolve_against(base),
        _hot("sample-hot", "sample-hot.json").resolve_against(base),
    ]
    feed = read_source(sources[0])
    hot = read_source(sources[1])
    assert len(feed) == 8 and len(hot) == 8
    assert all(t.score is not None and t.published is not None for t in feed + hot)
    assert {"秋冬围巾穿搭", "Citywalk", "露营咖啡"} <= {t.title for t in feed}

    report = ingest(sources)
    assert report.failures == []
    assert len(report.trends) == 15  # "#秋冬 围巾穿搭#" folds into the feed's "秋冬围巾穿搭"
    scarf = next(t for t in report.trends if t.key == trend_key("秋冬围巾穿搭"))
    assert (scarf.title, scarf.source, scarf.score) == ("秋冬围巾穿搭", "sample-feed", 1_930_577)
    assert scarf.also_in == ["sample-hot"]


def test_task_wrapper_settings() -> None:
    assert ingest_trends.name == "ingest-trends"
    assert ingest_trends.retries == 1
