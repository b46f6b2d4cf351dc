"""Trend ingestion against real-format feeds served from a loopback HTTP server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from tasks.errors import SourceError
from tasks.trends import (
    JsonMapping,
    Trend,
    TrendSource,
    dedupe_trends,
    fetch_source,
    ingest,
    ingest_trends,
    parse_json,
    parse_rss,
    read_source,
    trend_key,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "trends"
HOT_MAPPING = JsonMapping(
    items="data.realtime", title="word", score="num", url="url", published="onboard_time"
)


class _Handler(BaseHTTPRequestHandler):
    """Routes: /fixtures/<file>, /status/<code>, /slow, /big, /big-declared, /redirect, /ua."""

    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path.startswith("/fixtures/"):
            self._send(200, (FIXTURES / path.removeprefix("/fixtures/")).read_bytes())
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

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    release: threading.Event


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """A loopback HTTP server on a free port serving the fixtures and failure modes."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


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
        _rss("down", f"{base_url}/status/500"),
        _rss("broken-xml", f"{base_url}/fixtures/malformed.xml"),
        _hot("wrong-shape", f"{base_url}/fixtures/wrong-shape.json"),
        _rss("huge", f"{base_url}/big", max_bytes=1000),
        _rss("slow", f"{base_url}/slow", timeout_s=0.3),
        _rss("off", f"{base_url}/status/500", enabled=False),
    ]
    started = time.monotonic()
    report = ingest(sources)
    assert time.monotonic() - started < 3

    reasons = {f.source: f.reason for f in report.failures}
    assert list(reasons) == ["down", "broken-xml", "wrong-shape", "huge", "slow"]
    assert "HTTP 500" in reasons["down"] and f"{base_url}/status/500" in reasons["down"]
    assert "not well-formed" in reasons["broken-xml"]
    assert "'data.realtime'" in reasons["wrong-shape"]
    assert "found dict" in reasons["wrong-shape"]
    assert "larger than 1000 bytes" in reasons["huge"]
    assert "timed out" in reasons["slow"] and "0.3 s" in reasons["slow"]

    titles = [t.title for t in report.trends]
    assert {"Matcha latte season", "Winter skincare", "夜市 美食", "初雪限定饮品"} <= set(titles)
    assert {t.source for t in report.trends} == {"google", "picks", "weibo", "night"}


def test_ingest_dedupes_across_sources_and_keeps_max_score(base_url: str) -> None:
    sources = [
        _rss("google", f"{base_url}/fixtures/rss2.xml"),  # "Citywalk 路线", 20,000+
        _rss("picks", f"{base_url}/fixtures/atom.xml"),  # "CITYWALK路线!", no score
        _hot("weibo", f"{base_url}/fixtures/hot.json"),  # "#citywalk路线#", 1,204,881
    ]
    report = ingest(sources)
    citywalk = [t for t in report.trends if t.key == "citywalk路线"]
    assert len(citywalk) == 1
    assert citywalk[0].title == "Citywalk 路线"  # the first occurrence wins...
    assert citywalk[0].source == "google"
    assert citywalk[0].score == 1_204_881  # ...with the highest score seen
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
# Fetch


def test_fetch_sends_user_agent_and_follows_redirects(base_url: str) -> None:
    trends = read_source(_hot("ua", f"{base_url}/ua"))
    assert trends[0].title == "zpipe/0.1"
    assert fetch_source(_rss("r", f"{base_url}/redirect")).startswith(b"<?xml")


def test_fetch_rejects_a_declared_oversized_body(base_url: str) -> None:
    with pytest.raises(SourceError, match="response larger than 1000 bytes"):
        fetch_source(_rss("big", f"{base_url}/big-declared", max_bytes=1000))


def test_fetch_names_status_and_url(base_url: str) -> None:
    with pytest.raises(SourceError, match=r"HTTP 404 Not Found") as err:
        fetch_source(_rss("gone", f"{base_url}/status/404"))
    assert f"{base_url}/status/404" in str(err.value)


def test_fetch_reports_connection_refused() -> None:
    with pytest.raises(SourceError, match="ConnectError"):
        fetch_source(_rss("nobody", "http://127.0.0.1:9/feed.xml", timeout_s=1))


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
# Parse


def test_parse_rss2_with_google_trends_traffic() -> None:
    trends = parse_rss((FIXTURES / "rss2.xml").read_bytes(), "google")
    assert [t.title for t in trends] == ["Citywalk 路线", "露营 咖啡 & 手冲", "Winter skincare"]
    assert [t.score for t in trends] == [20_000, 5_000, 1_000]
    assert [t.rank for t in trends] == [1, 2, 3]
    assert trends[0].published == datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    assert trends[0].url == "https://trends.example.com/topic/citywalk"
    assert trends[0].source == "google"


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


def test_parse_json_bad_json_names_line_and_column() -> None:
    with pytest.raises(SourceError, match=r"'weibo': invalid JSON at line 2, column 5"):
        parse_json(b'{"data":\n    oops}', HOT_MAPPING, "weibo")


def test_parse_json_missing_path() -> None:
    with pytest.raises(SourceError, match=r"'data\.realtime' must select a list, found null"):
        parse_json(b'{"result": []}', HOT_MAPPING, "weibo")


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
        TrendSource(name="feed", kind="rss", url="feed.xml", retries=3)  # type: ignore[call-arg]


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
    def t(title: str, score: float | None, source: str = "s", rank: int = 1) -> Trend:
        return Trend(title=title, score=score, source=source, rank=rank)

    out = dedupe_trends(
        [t("A b", None), t("C", 3), t("a-B", 7, "other", 2), t("c", 1), t("#AB#", 5)]
    )
    assert [(x.title, x.score, x.source) for x in out] == [("A b", 7, "s"), ("C", 3, "s")]


def test_trend_published_is_utc() -> None:
    naive = Trend(title="x", source="s", rank=1, published=datetime(2026, 11, 23, 8, 0))
    assert naive.published == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    aware = Trend(title="x", source="s", rank=1, published="2026-11-23T08:00:00+08:00")
    assert aware.published is not None and aware.published.utcoffset().total_seconds() == 0
    assert aware.published.hour == 0


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


def test_task_wrapper_settings() -> None:
    assert ingest_trends.name == "ingest-trends"
    assert ingest_trends.retries == 1
