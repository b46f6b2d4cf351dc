"""Trend ingestion: read RSS/Atom feeds and JSON hot lists into one ranked, deduplicated list."""

from __future__ import annotations

import calendar
import io
import json
import math
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Literal

import feedparser
import httpx
import jmespath
import jmespath.exceptions
from prefect import get_run_logger, task
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tasks.errors import SourceError

USER_AGENT = "zpipe/0.1"

# Entry fields that carry a numeric popularity in the feeds we know of. feedparser names a
# namespaced element `<prefix>_<name>`: Google Trends' `<ht:approx_traffic>` -> `ht_approx_traffic`.
RSS_SCORE_FIELDS = ("ht_approx_traffic", "score", "traffic", "heat")

# Suffixes that hot lists use for large counts ("1.2万", "3亿", "15K", "2M").
_SCORE_SUFFIXES = {"万": 1e4, "亿": 1e8, "k": 1e3, "m": 1e6, "b": 1e9}
_SCORE_RE = re.compile(r"^([-+]?\d+(?:\.\d+)?)\s*(万|亿|[kmb])?\+?$", re.IGNORECASE)

# A unix timestamp above this is in milliseconds (1e11 s is the year 5138).
_MAX_UNIX_SECONDS = 1e11


class JsonMapping(BaseModel):
    """JMESPath expressions that locate a JSON source's item list and each item's fields."""

    model_config = ConfigDict(extra="forbid")

    items: str
    title: str
    score: str | None = None
    url: str | None = None
    published: str | None = None

    @field_validator("items", "title", "score", "url", "published")
    @classmethod
    def _compiles(cls, expression: str | None, info: ValidationInfo) -> str | None:
        """Reject an expression that JMESPath cannot compile."""
        if expression is None:
            return None
        try:
            jmespath.compile(expression)
        except jmespath.exceptions.JMESPathError as err:
            raise ValueError(
                f"mapping.{info.field_name}: {expression!r} is not a valid JMESPath expression "
                f"({err}). Fix it, e.g. 'data.realtime' for items or 'word' for a field."
            ) from err
        return expression


class TrendSource(BaseModel):
    """One configured trend feed: an RSS/Atom feed or a JSON hot list, over HTTP(S) or a file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: Literal["rss", "json"]
    url: str = Field(min_length=1)  # http(s) URL or a file path
    mapping: JsonMapping | None = None
    enabled: bool = True
    timeout_s: float = Field(default=10.0, gt=0)
    max_items: int = Field(default=50, ge=1)
    max_bytes: int = Field(default=5_000_000, ge=1)
    weight: float = Field(default=1.0, ge=0)  # scales this source's scores when ranking

    @field_validator("url")
    @classmethod
    def _http_or_path(cls, url: str) -> str:
        """Accept an http(s) URL or a file path; reject other schemes."""
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
        if scheme and scheme.group(1).lower() not in ("http", "https"):
            raise ValueError(
                f"url {url!r} uses the unsupported scheme {scheme.group(1)!r}; "
                "use an http(s):// URL or a plain file path"
            )
        return url

    @model_validator(mode="after")
    def _mapping_matches_kind(self) -> TrendSource:
        """A json source needs a mapping; an rss source must not have one."""
        if self.kind == "json" and self.mapping is None:
            raise ValueError(
                f"source {self.name!r} has kind 'json' but no mapping; add "
                "mapping: {items: <JMESPath to the list>, title: <JMESPath to the title>}"
            )
        if self.kind == "rss" and self.mapping is not None:
            raise ValueError(
                f"source {self.name!r} has kind 'rss' but also a mapping; feeds need none: "
                "remove the mapping or set kind: json"
            )
        return self

    @property
    def is_http(self) -> bool:
        """True when the source is fetched over HTTP(S) rather than read from a file."""
        return _is_http(self.url)

    def resolve_against(self, base_dir: Path) -> TrendSource:
        """Return a copy whose relative file path is made absolute against `base_dir`."""
        if self.is_http or Path(self.url).expanduser().is_absolute():
            return self
        return self.model_copy(update={"url": str((base_dir / self.url).resolve())})


class Trend(BaseModel):
    """One trending topic as read from a source."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1)
    url: str | None = None
    score: float | None = None
    published: datetime | None = None  # tz-aware UTC
    source: str
    rank: int = Field(ge=1)  # 1-based position in its source

    @field_validator("published")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """Store times in UTC; a naive time is taken to be UTC already."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @property
    def key(self) -> str:
        """The title normalized for dedupe: NFKC, casefolded, no spaces or punctuation."""
        return trend_key(self.title)


class SourceFailure(BaseModel):
    """A source that was skipped, and why."""

    model_config = ConfigDict(extra="forbid")

    source: str
    reason: str


class TrendReport(BaseModel):
    """What one ingestion run produced: ranked trends plus the sources that failed."""

    model_config = ConfigDict(extra="forbid")

    trends: list[Trend]
    failures: list[SourceFailure]


# ---------------------------------------------------------------------------------------------
# Helpers


def _is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def trend_key(title: str) -> str:
    """Normalize a title for dedupe: NFKC, casefold, drop whitespace, punctuation and controls."""
    text = unicodedata.normalize("NFKC", title).casefold()
    # P* covers ASCII and CJK punctuation (，。【】「」·) and the hashtag mark '#';
    # Z* and C* cover every kind of space and the zero-width/format characters.
    kept = "".join(ch for ch in text if unicodedata.category(ch)[0] not in "PZC")
    return kept or text.strip()


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)


def _plain_text(value: str) -> str:
    """Strip HTML tags, decode entities and collapse whitespace."""
    extractor = _TextExtractor()
    extractor.feed(value)
    extractor.close()
    return _collapse("".join(extractor.chunks))


def _collapse(value: str) -> str:
    return " ".join(value.split())


def _to_score(value: Any) -> float | None:
    """Coerce 12, "12.5", "20,000+", "1.2万", "15K" to a float; anything else to None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        match = _SCORE_RE.match(value.strip().replace(",", "").replace("，", ""))
        if not match:
            return None
        number = float(match.group(1)) * _SCORE_SUFFIXES.get((match.group(2) or "").lower(), 1)
    else:
        return None
    return number if math.isfinite(number) else None


def _to_datetime(value: Any) -> datetime | None:
    """Parse ISO-8601 text or unix seconds (milliseconds too) into a UTC datetime."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value):
        seconds = value / 1000 if abs(value) > _MAX_UNIX_SECONDS else value
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _struct_to_datetime(value: time.struct_time | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(calendar.timegm(value), tz=UTC)


# ---------------------------------------------------------------------------------------------
# Fetch and parse


def fetch_source(source: TrendSource, client: httpx.Client | None = None) -> bytes:
    """Return the raw bytes of a source: read its file, or GET its URL within the limits."""
    if not source.is_http:
        return _read_file(source)
    if client is not None:
        return _download(client, source)
    with httpx.Client() as own_client:
        return _download(own_client, source)


def _read_file(source: TrendSource) -> bytes:
    path = Path(source.url).expanduser()
    try:
        size = path.stat().st_size
        if size > source.max_bytes:
            raise SourceError(
                f"trend source {source.name!r}: file {path} is {size} bytes, larger than "
                f"max_bytes={source.max_bytes}; raise max_bytes or trim the file"
            )
        return path.read_bytes()
    except FileNotFoundError as err:
        raise SourceError(
            f"trend source {source.name!r}: file {path} does not exist; fix the url "
            "(relative paths resolve against the config file's folder)"
        ) from err
    except OSError as err:
        raise SourceError(f"trend source {source.name!r}: cannot read file {path}: {err}") from err


def _download(client: httpx.Client, source: TrendSource) -> bytes:
    """GET the source's URL, following redirects, stopping past max_bytes or timeout_s."""
    deadline = time.monotonic() + source.timeout_s
    where = f"trend source {source.name!r}: GET {source.url}"
    try:
        with client.stream(
            "GET",
            source.url,
            headers={"User-Agent": USER_AGENT},
            timeout=source.timeout_s,  # per connect/read; the deadline below bounds the total
            follow_redirects=True,
        ) as response:
            if response.status_code >= 400:
                raise SourceError(
                    f"{where} returned HTTP {response.status_code} {response.reason_phrase}; "
                    "check the URL or set enabled: false until the source is back"
                )
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > source.max_bytes:
                raise SourceError(
                    f"{where}: response larger than {source.max_bytes} bytes "
                    f"(Content-Length {declared}); raise max_bytes if this is expected"
                )
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > source.max_bytes:
                    raise SourceError(
                        f"{where}: response larger than {source.max_bytes} bytes; "
                        "raise max_bytes if this is expected"
                    )
                if time.monotonic() > deadline:
                    raise SourceError(
                        f"{where}: timed out, the body took longer than {source.timeout_s} s; "
                        "raise timeout_s if the source is just slow"
                    )
            return bytes(body)
    except httpx.TimeoutException as err:
        raise SourceError(
            f"{where}: timed out after {source.timeout_s} s ({type(err).__name__}); "
            "raise timeout_s if the source is just slow"
        ) from err
    except (httpx.HTTPError, httpx.InvalidURL) as err:
        raise SourceError(f"{where} failed: {type(err).__name__}: {err}") from err


def parse_rss(data: bytes, source_name: str) -> list[Trend]:
    """Parse an RSS 2.0, RSS 1.0 or Atom document into trends, in feed order."""
    # A BytesIO, never raw bytes: feedparser would try to open bytes that look like a path.
    feed = feedparser.parse(io.BytesIO(data))
    trends: list[Trend] = []
    for entry in feed.entries:
        title = _plain_text(entry.get("title", ""))
        if not title:
            continue
        score = next(
            (s for f in RSS_SCORE_FIELDS if (s := _to_score(entry.get(f))) is not None), None
        )
        published = _struct_to_datetime(
            entry.get("published_parsed") or entry.get("updated_parsed")
        )
        trends.append(
            Trend(
                title=title,
                url=entry.get("link") or None,
                score=score,
                published=published,
                source=source_name,
                rank=len(trends) + 1,
            )
        )
    if not trends and feed.get("bozo"):
        reason = feed.get("bozo_exception")
        raise SourceError(
            f"trend source {source_name!r}: not a readable feed: {reason} "
            "(feedparser found no entries); check that the URL serves RSS or Atom"
        )
    if not trends and not feed.get("version"):
        raise SourceError(
            f"trend source {source_name!r}: the document is not an RSS or Atom feed "
            "(feedparser recognised no feed format); check the URL or use kind: json"
        )
    return trends


def parse_json(data: bytes, mapping: JsonMapping, source_name: str) -> list[Trend]:
    """Parse a JSON hot list into trends using the source's JMESPath mapping."""
    # 1. Decode
    try:
        document = json.loads(data)
    except json.JSONDecodeError as err:
        raise SourceError(
            f"trend source {source_name!r}: invalid JSON at line {err.lineno}, "
            f"column {err.colno}: {err.msg}"
        ) from err
    except UnicodeDecodeError as err:
        raise SourceError(f"trend source {source_name!r}: JSON is not valid UTF-8: {err}") from err

    # 2. Locate the item list
    items = jmespath.search(mapping.items, document)
    if not isinstance(items, list):
        found = "null (nothing at that path)" if items is None else type(items).__name__
        raise SourceError(
            f"trend source {source_name!r}: mapping.items {mapping.items!r} must select a list, "
            f"found {found}; fix the expression to match the document"
        )

    # 3. Read each item's fields
    title_expr = jmespath.compile(mapping.title)
    score_expr = jmespath.compile(mapping.score) if mapping.score else None
    url_expr = jmespath.compile(mapping.url) if mapping.url else None
    published_expr = jmespath.compile(mapping.published) if mapping.published else None
    trends: list[Trend] = []
    for item in items:
        raw_title = title_expr.search(item)
        if isinstance(raw_title, int | float) and not isinstance(raw_title, bool):
            raw_title = str(raw_title)
        title = _collapse(raw_title) if isinstance(raw_title, str) else ""
        if not title:
            continue
        url = url_expr.search(item) if url_expr else None
        trends.append(
            Trend(
                title=title,
                url=url if isinstance(url, str) and url.strip() else None,
                score=_to_score(score_expr.search(item)) if score_expr else None,
                published=_to_datetime(published_expr.search(item)) if published_expr else None,
                source=source_name,
                rank=len(trends) + 1,
            )
        )
    return trends


def read_source(source: TrendSource, client: httpx.Client | None = None) -> list[Trend]:
    """Fetch and parse one source, keeping at most `max_items` trends."""
    data = fetch_source(source, client)
    if source.kind == "rss":
        trends = parse_rss(data, source.name)
    else:
        assert source.mapping is not None  # guaranteed by TrendSource's validator
        trends = parse_json(data, source.mapping, source.name)
    return trends[: source.max_items]


# ---------------------------------------------------------------------------------------------
# Combine


def dedupe_trends(trends: Iterable[Trend]) -> list[Trend]:
    """Drop repeated titles (by `Trend.key`), keeping the first but with the highest score."""
    kept: dict[str, Trend] = {}
    for trend in trends:
        first = kept.get(trend.key)
        if first is None:
            kept[trend.key] = trend
        elif trend.score is not None and (first.score is None or trend.score > first.score):
            kept[trend.key] = first.model_copy(update={"score": trend.score})
    return list(kept.values())


def ingest(sources: Sequence[TrendSource], client: httpx.Client | None = None) -> TrendReport:
    """Read every enabled source; failed sources are reported, never fatal."""
    # 1. Read each source; a failure skips only that source
    order = {source.name: i for i, source in reversed(list(enumerate(sources)))}
    weights = {source.name: source.weight for source in sources}
    collected: list[Trend] = []
    failures: list[SourceFailure] = []
    for source in sources:
        if not source.enabled:
            continue
        try:
            collected.extend(read_source(source, client))
        except (SourceError, httpx.HTTPError, httpx.InvalidURL) as err:
            failures.append(SourceFailure(source=source.name, reason=str(err)))

    # 2. Dedupe, then rank: weighted score desc (no score last), then source order, then rank
    def sort_key(trend: Trend) -> tuple[bool, float, int, int]:
        weighted = (trend.score or 0.0) * weights.get(trend.source, 1.0)
        return (trend.score is None, -weighted, order.get(trend.source, 0), trend.rank)

    return TrendReport(trends=sorted(dedupe_trends(collected), key=sort_key), failures=failures)


# ---------------------------------------------------------------------------------------------
# Prefect wrapper


@task(name="ingest-trends", retries=1, retry_delay_seconds=10)
def ingest_trends(sources: list[TrendSource]) -> TrendReport:
    """Read the trend sources; log each skipped source as a warning."""
    report = ingest(sources)
    logger = get_run_logger()
    for failure in report.failures:
        logger.warning("trend source %r skipped: %s", failure.source, failure.reason)
    logger.info("%d trends from %d sources", len(report.trends), len(sources))
    return report
