"""Trend ingestion: read RSS/Atom feeds, JSON hot lists and hand-made CSV/YAML calendars into
one deduplicated list of trends.

A source is fetched (a file, or HTTP with timeouts, retries, conditional GET and a size cap),
decoded (declared charset, else detected), parsed by its kind and normalized into `Trend`s.
A source that fails is skipped and reported with its reason; it never fails the run.
Scoring, near-duplicates, brand safety and reuse history live in `tasks.trends.ranking`.
"""

from __future__ import annotations

import calendar
import codecs
import csv
import hashlib
import io
import json
import math
import re
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import feedparser
import httpx
import jmespath
import jmespath.exceptions
import regex
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from tasks.core.errors import ConfigError, SourceError, StoreError
from tasks.core.yamlio import from_validation_error, load_yaml_text, read_yaml
from tasks.store.keys import TRENDS_HTTP_CACHE

if TYPE_CHECKING:
    from tasks.store.objects import ObjectStore

USER_AGENT = "zpipe/0.1"

# Entry fields that carry a numeric popularity in the feeds we know of. feedparser names a
# namespaced element `<prefix>_<name>`: Google Trends' `<ht:approx_traffic>` -> `ht_approx_traffic`.
RSS_SCORE_FIELDS = ("ht_approx_traffic", "score", "traffic", "heat")

# Suffixes that hot lists use for large counts ("1.2万", "3亿", "15K", "2M").
_SCORE_SUFFIXES = {"万": 1e4, "亿": 1e8, "k": 1e3, "m": 1e6, "b": 1e9}
_SCORE_RE = re.compile(r"^([-+]?\d+(?:\.\d+)?)\s*(万|亿|[kmb])?\+?$", re.IGNORECASE)

# A unix timestamp above this is in milliseconds (1e11 s is the year 5138).
_MAX_UNIX_SECONDS = 1e11

# Hand-made calendars write dates as 2026/11/11 as often as 2026-11-11.
_SLASH_DATE = re.compile(r"^(\d{4})/(\d{1,2})/(\d{1,2})")

# Tags in one CSV cell or YAML string: "promo; 双十一 | seasonal, 上新、冬季".
_TAG_SPLIT = re.compile(r"[;,|、，；]")

# Exponential backoff never waits longer than this between two attempts.
MAX_BACKOFF_S = 30.0

# When a body is not valid in its declared charset (or UTF-8 when none is declared), these are
# tried in order before generic detection: most mislabelled Chinese feeds are UTF-8 or GBK, and
# charset-normalizer alone guesses short GBK text wrongly (Thai, Korean).
FALLBACK_ENCODINGS = ("utf-8", "gb18030")

# Legacy Chinese charsets as declared, decoded with their superset (what browsers do too).
_CHARSET_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030"}

_BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_XML_DECL_ENCODING = re.compile(rb"""^\s*<\?xml\b[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")
_XML_DECL_ENCODING_TEXT = re.compile(r"""^(\s*<\?xml\b[^>]*?)\s+encoding\s*=\s*(["'])[^"']*\2""")
_CHARSET_PARAM = re.compile(r"""charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)

# Titles become prompt text, sidecar fields and history keys: longer is not a trend title.
MAX_TITLE_CHARS = 200

# Control, format (zero-width, bidi overrides, BOM), surrogate, private-use and other
# default-ignorable characters: they draw nothing, reorder text or hide words from filters.
_INVISIBLE = regex.compile(r"[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Default_Ignorable_Code_Point}]")

# An XML entity declaration. Real feeds never declare entities; hostile ones do, to expand a
# few bytes into gigabytes ("billion laughs", quadratic blowup) or to read local files (XXE).
_ENTITY_DECLARATION = re.compile(r"<!ENTITY", re.IGNORECASE)

SourceKind = Literal["rss", "json", "csv", "yaml"]


class JsonMapping(BaseModel):
    """JMESPath expressions that locate a source's item list and each item's fields.

    Used by json sources (required) and by csv/yaml sources (optional: the default reads the
    columns or keys title, score, url, published, tags).
    """

    model_config = ConfigDict(extra="forbid")

    items: str
    title: str
    score: str | None = None
    url: str | None = None
    published: str | None = None
    tags: str | None = None  # a list of strings, or one string split on ; , | 、

    @field_validator("items", "title", "score", "url", "published", "tags")
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


# What a csv or yaml source reads without a mapping: a list of rows (or `trends:`/`items:`
# holding one) with the keys title, score, url, published and tags.
TABLE_MAPPING = JsonMapping(
    items="trends || items || @", title="title", score="score", url="url",
    published="published", tags="tags",
)


class TrendSource(BaseModel):
    """One configured trend source: a feed, a JSON API, or a CSV/YAML list; HTTP(S) or a file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: SourceKind
    url: str = Field(min_length=1)  # http(s) URL or a file path
    mapping: JsonMapping | None = None
    enabled: bool = True
    tags: list[str] = Field(default_factory=list, description="added to every trend of this source")
    timeout_s: float = Field(default=10.0, gt=0)
    max_items: int = Field(default=50, ge=1)
    max_bytes: int = Field(default=5_000_000, ge=1)
    weight: float = Field(default=1.0, ge=0)  # scales this source's scores when ranking
    retries: int = Field(default=2, ge=0, le=10, description="extra attempts after a transient error")
    backoff_s: float = Field(default=1.0, ge=0, description="first wait; doubles each retry")
    retry_after_cap_s: float = Field(default=30.0, ge=0,
                                     description="longest Retry-After honoured; longer skips the run")
    encoding: str | None = Field(default=None, description="force a charset, e.g. gbk")
    score_field: str | None = Field(
        default=None, description="rss: feedparser key of a namespaced count, e.g. ht_approx_traffic")

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

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        """Reject a charset name Python does not know."""
        if value is not None and _codec_name(value) is None:
            raise ValueError(f"unknown encoding {value!r}; use e.g. utf-8, gbk, gb18030 or big5")
        return value

    @field_validator("tags")
    @classmethod
    def _clean_tags(cls, value: list[str]) -> list[str]:
        return _unique(tag.strip() for tag in value if tag.strip())

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
        if self.kind != "rss" and self.score_field is not None:
            raise ValueError(
                f"source {self.name!r}: score_field is for rss feeds only; for kind "
                f"{self.kind!r} put the score's path in mapping.score"
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


class SourceFile(TrendSource):
    """A `configs/sources/*.yaml` file: `kind: source`, the source's own kind in `format:`.

    Every other field is a `TrendSource` field. `load_source` reads one into a `TrendSource`.
    """

    kind: SourceKind = Field(validation_alias="format")

    @model_validator(mode="before")
    @classmethod
    def _file_kind(cls, data: Any) -> Any:
        """Drop the file's `kind: source` marker; the source's kind is read from `format`."""
        if isinstance(data, dict) and "kind" in data:
            if data["kind"] != "source":
                raise ValueError(
                    f"a trend source file has `kind: source` (got kind {data['kind']!r}); "
                    f"write the source's kind as `format: {data['kind']}`"
                )
            data = {key: value for key, value in data.items() if key != "kind"}
        return data

    def to_source(self) -> TrendSource:
        """The plain `TrendSource` this file describes."""
        return TrendSource.model_validate(self.model_dump())


class Trend(BaseModel):
    """One trending topic as read from a source."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1)
    url: str | None = None
    score: float | None = None
    published: datetime | None = None  # tz-aware UTC
    source: str
    rank: int = Field(ge=1)  # 1-based position in its source
    tags: list[str] = Field(default_factory=list)  # the source's tags, then the item's own
    also_in: list[str] = Field(default_factory=list)  # other sources that listed the same title

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

    @property
    def sources(self) -> list[str]:
        """Every source that listed this title: its own first."""
        return _unique([self.source, *self.also_in])


class SourceFailure(BaseModel):
    """A source that was skipped, and why."""

    model_config = ConfigDict(extra="forbid")

    source: str
    reason: str


class SourceNote(BaseModel):
    """Something worth knowing about a source that still worked (cache hit, charset fallback)."""

    model_config = ConfigDict(extra="forbid")

    source: str
    message: str


class TrendReport(BaseModel):
    """What one ingestion run produced: ranked trends plus the sources that failed."""

    model_config = ConfigDict(extra="forbid")

    trends: list[Trend]
    failures: list[SourceFailure]
    notes: list[SourceNote] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Helpers


def _is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _unique(values: Iterable[str]) -> list[str]:
    """Drop repeats, keeping the first of each in order."""
    return list(dict.fromkeys(values))


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


def _clean_title(value: str) -> str:
    """One line of visible text: whitespace collapsed, invisible and bidi characters dropped,
    cut to MAX_TITLE_CHARS."""
    text = _collapse(_INVISIBLE.sub(lambda m: " " if m.group().isspace() else "", value))
    return text[:MAX_TITLE_CHARS].rstrip()


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
    """Parse ISO-8601 text, 2026/11/11 dates, dates, or unix seconds (or ms) into a datetime."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):  # YAML reads 2026-11-11 as a date
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = _SLASH_DATE.sub(lambda m: f"{m[1]}-{int(m[2]):02d}-{int(m[3]):02d}", value.strip())
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


def _to_tags(value: Any) -> list[str]:
    """A list of tags, or one string of tags split on ; , | 、, into clean unique strings."""
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, str):
        parts: list[Any] = _TAG_SPLIT.split(value)
    elif isinstance(value, list):
        parts = value
    else:
        parts = [value]
    return _unique(
        text for part in parts
        if isinstance(part, str | int | float) and not isinstance(part, bool)
        and (text := _collapse(str(part)))
    )


def _struct_to_datetime(value: time.struct_time | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(calendar.timegm(value), tz=UTC)


# ---------------------------------------------------------------------------------------------
# Source files


def load_source(path: str | Path) -> TrendSource:
    """Read a `configs/sources/*.yaml` file into a `TrendSource`, its file url made absolute.

    Errors are `ConfigError`s naming the file, the field and the bad value.
    """
    path = Path(path).expanduser().resolve()
    data = read_yaml(path)
    if data.get("kind") != "source":
        hint = f"`format: {data['kind']}`" if data.get("kind") in ("rss", "json", "csv", "yaml") else (
            "`format: rss|json|csv|yaml`")
        raise ConfigError(str(path), "kind",
                          f"a trend source file starts with `kind: source`; the source's own kind "
                          f"goes in {hint}", data.get("kind"))
    try:
        source = SourceFile.model_validate(data).to_source()
    except ValidationError as exc:
        raise from_validation_error(path, exc) from None
    source = source.resolve_against(path.parent)
    if source.enabled and not source.is_http and not Path(source.url).is_file():
        raise ConfigError(str(path), "url", "trend file not found (relative paths resolve against "
                          "the source file's folder)", data.get("url"))
    return source


# ---------------------------------------------------------------------------------------------
# HTTP cache (conditional GET)


class CachedResponse(BaseModel):
    """A 200 response kept so that a later 304 Not Modified can reuse its body."""

    model_config = ConfigDict(extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    url: str
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    fetched_at: datetime
    body: bytes


class HttpCache(ABC):
    """Validators (ETag / Last-Modified) and bodies per URL, for conditional GETs."""

    @abstractmethod
    def get(self, url: str) -> CachedResponse | None:
        """The cached response for `url`, or None."""

    @abstractmethod
    def put(self, entry: CachedResponse) -> None:
        """Keep `entry` for its URL, replacing any older one."""


class MemoryHttpCache(HttpCache):
    """An in-process cache (one CLI run, tests)."""

    def __init__(self) -> None:
        self._entries: dict[str, CachedResponse] = {}

    def get(self, url: str) -> CachedResponse | None:
        return self._entries.get(url)

    def put(self, entry: CachedResponse) -> None:
        self._entries[entry.url] = entry


class StoreHttpCache(HttpCache):
    """One JSON object per URL in an ObjectStore (S3, or a local directory via LocalStore)."""

    def __init__(self, store: ObjectStore, prefix: str = TRENDS_HTTP_CACHE) -> None:
        self.store = store
        self.prefix = prefix.strip("/")

    def key(self, url: str) -> str:
        """The object key for `url`: a hash, so any URL makes a safe key."""
        return f"{self.prefix}/{hashlib.sha256(url.encode('utf-8')).hexdigest()[:40]}.json"

    def get(self, url: str) -> CachedResponse | None:
        key = self.key(url)
        if not self.store.exists(key):
            return None
        entry = CachedResponse.model_validate_json(self.store.get(key))
        return entry if entry.url == url else None

    def put(self, entry: CachedResponse) -> None:
        self.store.put(self.key(entry.url), entry.model_dump_json().encode("utf-8"),
                       "application/json", overwrite=True)


# ---------------------------------------------------------------------------------------------
# Fetch


@dataclass(frozen=True)
class Fetched:
    """A source's raw body, its declared Content-Type, and how it was obtained."""

    body: bytes
    content_type: str | None = None
    from_cache: bool = False
    notes: tuple[str, ...] = ()


class _TransientError(SourceError):
    """A failure worth retrying: connect error, timeout, HTTP 5xx or 429."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def fetch_source(source: TrendSource, client: httpx.Client | None = None,
                 cache: HttpCache | None = None) -> bytes:
    """Return the raw bytes of a source: read its file, or GET its URL within the limits."""
    return fetch(source, client, cache).body


def fetch(source: TrendSource, client: httpx.Client | None = None, cache: HttpCache | None = None,
          sleep: Callable[[float], None] = time.sleep) -> Fetched:
    """Read a file source, or GET an HTTP one with retries and (given a cache) conditional GET."""
    if not source.is_http:
        return Fetched(_read_file(source))
    with ExitStack() as stack:
        client = client or stack.enter_context(httpx.Client())
        return _download_with_retries(client, source, cache, sleep)


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


def _download_with_retries(client: httpx.Client, source: TrendSource, cache: HttpCache | None,
                           sleep: Callable[[float], None]) -> Fetched:
    """GET with exponential backoff on transient errors; Retry-After wins when the server sends it."""
    # 1. What the cache knows about this URL (a broken cache only costs the conditional GET)
    notes: list[str] = []
    cached = None
    if cache is not None:
        try:
            cached = cache.get(source.url)
        except (StoreError, ValidationError, ValueError) as err:
            notes.append(f"HTTP cache entry unreadable, fetched in full: {type(err).__name__}: {err}")

    # 2. Attempts
    exponential = wait_exponential(multiplier=source.backoff_s, max=MAX_BACKOFF_S)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _TransientError) and error.retry_after is not None:
            return error.retry_after  # at most retry_after_cap_s: _download stops otherwise
        return exponential(state)

    attempts = source.retries + 1
    retrying = Retrying(stop=stop_after_attempt(attempts), wait=wait, sleep=sleep, reraise=True,
                        retry=retry_if_exception_type(_TransientError))
    try:
        fetched = retrying(_download, client, source, cached)
    except _TransientError as err:
        tries = f"{attempts} attempts" if attempts > 1 else "1 attempt, retries: 0"
        raise SourceError(f"{err} (gave up after {tries})") from err

    # 3. Keep a fresh body for the next conditional GET
    if cache is not None and fetched.cache_entry is not None:
        try:
            cache.put(fetched.cache_entry)
        except StoreError as err:
            notes.append(f"HTTP cache not updated: {err}")
    note = "not modified since the last fetch (HTTP 304); reused the cached body"
    notes += [note] if fetched.from_cache else []
    return Fetched(fetched.body, fetched.content_type, fetched.from_cache, tuple(notes))


@dataclass(frozen=True)
class _Attempt:
    body: bytes
    content_type: str | None
    from_cache: bool
    cache_entry: CachedResponse | None


def _download(client: httpx.Client, source: TrendSource, cached: CachedResponse | None) -> _Attempt:
    """One GET, following redirects, stopping past max_bytes or timeout_s."""
    deadline = time.monotonic() + source.timeout_s
    where = f"trend source {source.name!r}: GET {source.url}"
    headers = {"User-Agent": USER_AGENT}
    if cached is not None and cached.etag:
        headers["If-None-Match"] = cached.etag
    if cached is not None and cached.last_modified:
        headers["If-Modified-Since"] = cached.last_modified
    try:
        with client.stream(
            "GET",
            source.url,
            headers=headers,
            timeout=source.timeout_s,  # per connect/read; the deadline below bounds the total
            follow_redirects=True,
        ) as response:
            status = response.status_code
            if status == 304:
                if cached is None:
                    raise SourceError(f"{where} answered 304 Not Modified to a request that was "
                                      "not conditional; the server is misbehaving")
                return _Attempt(cached.body, cached.content_type, True, None)
            if status == 429 or status >= 500:
                wait = _retry_after(response.headers.get("Retry-After"))
                message = f"{where} returned HTTP {status} {response.reason_phrase}"
                if wait is not None and wait > source.retry_after_cap_s:
                    raise SourceError(
                        f"{message} and asks to retry after {wait:.0f} s, longer than "
                        f"retry_after_cap_s={source.retry_after_cap_s:g}; skipped this run"
                    )
                raise _TransientError(
                    f"{message}; check the URL or set enabled: false until the source is back",
                    retry_after=wait,
                )
            if status >= 400:
                raise SourceError(
                    f"{where} returned HTTP {status} {response.reason_phrase}; "
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
                    raise _TransientError(
                        f"{where}: timed out, the body took longer than {source.timeout_s} s; "
                        "raise timeout_s if the source is just slow"
                    )
            content_type = response.headers.get("Content-Type")
            etag = response.headers.get("ETag")
            last_modified = response.headers.get("Last-Modified")
            entry = None
            if etag or last_modified:
                entry = CachedResponse(url=source.url, etag=etag, last_modified=last_modified,
                                       content_type=content_type, fetched_at=datetime.now(UTC),
                                       body=bytes(body))
            return _Attempt(bytes(body), content_type, False, entry)
    except httpx.TimeoutException as err:
        raise _TransientError(
            f"{where}: timed out after {source.timeout_s} s ({type(err).__name__}); "
            "raise timeout_s if the source is just slow"
        ) from err
    except httpx.TransportError as err:
        raise _TransientError(f"{where} failed: {type(err).__name__}: {err}") from err
    except (httpx.HTTPError, httpx.InvalidURL) as err:
        raise SourceError(f"{where} failed: {type(err).__name__}: {err}") from err


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


# ---------------------------------------------------------------------------------------------
# Decode


@dataclass(frozen=True)
class Decoded:
    """A body as text, the charset that decoded it, and a note when that was not the declared one."""

    text: str
    encoding: str
    note: str | None = None


def _codec_name(name: str) -> str | None:
    """Python's canonical codec name for a charset label, legacy GB charsets as gb18030."""
    label = name.strip().strip("\"'").lower()
    label = _CHARSET_SUPERSETS.get(label, label)
    try:
        canonical = codecs.lookup(label).name
    except LookupError:
        return None
    return _CHARSET_SUPERSETS.get(canonical, canonical)


def _declared_charset(data: bytes, content_type: str | None, xml: bool) -> str | None:
    """The charset named by the Content-Type header, else (XML) by the XML declaration."""
    if content_type and (match := _CHARSET_PARAM.search(content_type)):
        return match.group(1)
    if xml and (match := _XML_DECL_ENCODING.match(data[:512])):
        return match.group(1).decode("ascii")
    return None


def decode_body(data: bytes, source_name: str, content_type: str | None = None,
                encoding: str | None = None, xml: bool = False) -> Decoded:
    """Decode a body: forced encoding, else BOM, else declared charset, else detection.

    A body that is valid UTF-8 is read as UTF-8 even when it declares another charset (a
    common mislabel; legacy CJK text is practically never valid UTF-8).
    """
    where = f"trend source {source_name!r}"
    # 1. The source's configured encoding wins
    if encoding:
        codec = _codec_name(encoding) or encoding
        try:
            return Decoded(data.decode(codec), codec)
        except UnicodeDecodeError as err:
            raise SourceError(
                f"{where}: the body is not valid {encoding} (the source's `encoding`) at byte "
                f"{err.start}; fix or remove `encoding:` to let zpipe detect the charset"
            ) from err

    # 2. A byte-order mark
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return Decoded(data[len(bom):].decode(codec), codec)
            except UnicodeDecodeError:
                break  # a lying BOM: detect below

    # 3. The declared charset (UTF-8 when none is declared)
    label = _declared_charset(data, content_type, xml)
    declared = _codec_name(label) if label else None
    unknown = f"unknown charset {label!r} declared; " if label and declared is None else ""
    if declared and not declared.startswith("utf-") and not data.isascii():
        try:
            return Decoded(data.decode("utf-8"), "utf-8",
                           f"declared charset {label!r} but the body is UTF-8; read as UTF-8")
        except UnicodeDecodeError:
            pass  # really not UTF-8: trust the declaration
    first = declared or "utf-8"
    try:
        return Decoded(data.decode(first), first, f"{unknown}read as UTF-8" if unknown else None)
    except UnicodeDecodeError as err:
        wanted = f"in its declared charset {label!r}" if declared else "UTF-8"
        failure = f"not valid {wanted} (byte 0x{data[err.start]:02x} at offset {err.start})"

    # 4. Fallbacks: the usual suspects, then generic detection
    for candidate in FALLBACK_ENCODINGS:
        if candidate == first:
            continue
        try:
            text = data.decode(candidate)
        except UnicodeDecodeError:
            continue
        return Decoded(text, candidate, f"{unknown}the body is {failure}; read as {candidate}")
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is not None and best.encoding:
        return Decoded(str(best), best.encoding,
                       f"{unknown}the body is {failure}; detected and read as {best.encoding}")
    raise SourceError(
        f"{where}: cannot decode the body as text: {failure}, not "
        f"{' or '.join(c for c in FALLBACK_ENCODINGS if c != first)} either, and no charset could be "
        f"detected (it starts with {data[:8].hex(' ')}: compressed or binary?); check the URL, or "
        "set `encoding:` if you know the charset"
    )


def _utf8_xml(text: str) -> bytes:
    """UTF-8 bytes of decoded XML, its declaration's `encoding=` removed so parsers agree."""
    return _XML_DECL_ENCODING_TEXT.sub(r"\1", text.lstrip("\ufeff"), count=1).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Parse


def parse_rss(data: bytes | str, source_name: str, content_type: str | None = None,
              score_field: str | None = None) -> list[Trend]:
    """Parse an RSS 2.0, RSS 1.0 or Atom document into trends, in feed order.

    `data` is raw bytes (decoded here) or text already decoded by `decode_body`.
    """
    if isinstance(data, bytes):
        data = decode_body(data, source_name, content_type, xml=True).text
    if declared := _ENTITY_DECLARATION.search(data):
        line = data.count("\n", 0, declared.start()) + 1
        raise SourceError(
            f"trend source {source_name!r}: the feed declares an XML entity (<!ENTITY on line "
            f"{line}); zpipe refuses such feeds, since entities can expand into gigabytes or read "
            "local files (XXE). Use a feed without a DOCTYPE internal subset"
        )
    # A BytesIO, never raw bytes or str: feedparser would try to open text that looks like a path.
    feed = feedparser.parse(io.BytesIO(_utf8_xml(data)))
    score_fields = (score_field, *RSS_SCORE_FIELDS) if score_field else RSS_SCORE_FIELDS
    trends: list[Trend] = []
    for entry in feed.entries:
        title = _clean_title(_plain_text(entry.get("title", "")))
        if not title:
            continue
        score = next(
            (s for f in score_fields if (s := _to_score(entry.get(f))) is not None), None
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
                tags=_to_tags([tag.get("term") for tag in entry.get("tags", [])]),
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


def parse_json(data: bytes | str, mapping: JsonMapping, source_name: str,
               content_type: str | None = None) -> list[Trend]:
    """Parse a JSON hot list into trends using the source's JMESPath mapping."""
    # 1. Decode
    if isinstance(data, bytes):
        data = decode_body(data, source_name, content_type).text
    try:
        document = json.loads(data)
    except json.JSONDecodeError as err:
        raise SourceError(
            f"trend source {source_name!r}: invalid JSON at line {err.lineno}, "
            f"column {err.colno}: {err.msg}"
        ) from err
    except RecursionError:
        raise SourceError(f"trend source {source_name!r}: the JSON is nested too deeply to read; "
                          "check that the URL serves the hot list") from None
    except ValueError as err:  # e.g. an integer over Python's 4300-digit limit
        raise SourceError(f"trend source {source_name!r}: unreadable JSON value: {err}") from None

    # 2. Locate the items and read their fields
    return _mapped_trends(document, mapping, source_name)


def parse_csv(data: bytes | str, source_name: str, mapping: JsonMapping | None = None,
              content_type: str | None = None) -> list[Trend]:
    """Parse a hand-made CSV list (header row: title, score, url, published, tags) into trends."""
    if isinstance(data, bytes):
        data = decode_body(data, source_name, content_type).text
    reader = csv.DictReader(io.StringIO(data.lstrip("\ufeff"), newline=""))
    try:
        header = [name.strip() for name in reader.fieldnames or []]
        if mapping is None:
            header = [name.casefold() for name in header]
        reader.fieldnames = header
        rows = [{k: v for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as err:
        raise SourceError(f"trend source {source_name!r}: invalid CSV at line {reader.line_num}: "
                          f"{err}") from err
    if mapping is None and rows and "title" not in header:
        raise SourceError(
            f"trend source {source_name!r}: the CSV has no 'title' column (columns: "
            f"{', '.join(header)}); name the columns title, score, url, published, tags or add a "
            "mapping"
        )
    return _mapped_trends(rows, mapping or TABLE_MAPPING, source_name)


def parse_yaml(data: bytes | str, source_name: str, mapping: JsonMapping | None = None,
               content_type: str | None = None) -> list[Trend]:
    """Parse a hand-made YAML list (of titles, or of {title, score, url, published, tags})."""
    if isinstance(data, bytes):
        data = decode_body(data, source_name, content_type).text
    try:
        document = load_yaml_text(data)  # safe, and bounded: no alias bombs, no deep nesting
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or err
        raise SourceError(f"trend source {source_name!r}: invalid YAML{at}: {problem}") from err
    return _mapped_trends(document, mapping or TABLE_MAPPING, source_name, plain_titles=mapping is None)


def _mapped_trends(document: Any, mapping: JsonMapping, source_name: str,
                   plain_titles: bool = False) -> list[Trend]:
    """Read trends out of a parsed document with a JMESPath mapping.

    With `plain_titles`, an item that is a bare string (or number) is that item's title.
    """
    # 1. Locate the item list
    items = jmespath.search(mapping.items, document)
    if not isinstance(items, list):
        found = "null (nothing at that path)" if items is None else type(items).__name__
        raise SourceError(
            f"trend source {source_name!r}: mapping.items {mapping.items!r} must select a list, "
            f"found {found}; fix the expression to match the document"
        )

    # 2. Read each item's fields
    title_expr = jmespath.compile(mapping.title)
    score_expr = jmespath.compile(mapping.score) if mapping.score else None
    url_expr = jmespath.compile(mapping.url) if mapping.url else None
    published_expr = jmespath.compile(mapping.published) if mapping.published else None
    tags_expr = jmespath.compile(mapping.tags) if mapping.tags else None
    trends: list[Trend] = []
    for item in items:
        if plain_titles and isinstance(item, str | int | float) and not isinstance(item, bool):
            item = {"title": item}
        raw_title = title_expr.search(item)
        if isinstance(raw_title, int | float) and not isinstance(raw_title, bool):
            raw_title = str(raw_title)
        title = _clean_title(raw_title) if isinstance(raw_title, str) else ""
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
                tags=_to_tags(tags_expr.search(item)) if tags_expr else [],
            )
        )

    # 3. Items but not one title: the mapping does not fit the document
    if items and not trends:
        first = items[0]
        keys = f" (the first item's keys: {', '.join(map(str, first))})" if isinstance(first, dict) else ""
        raise SourceError(
            f"trend source {source_name!r}: mapping.title {mapping.title!r} found no title in any "
            f"of the {len(items)} items{keys}; fix the expression to match the document"
        )
    return trends


def read_source(source: TrendSource, client: httpx.Client | None = None,
                cache: HttpCache | None = None) -> list[Trend]:
    """Fetch and parse one source, keeping at most `max_items` trends."""
    return _read(source, client, cache)[0]


def _read(source: TrendSource, client: httpx.Client | None,
          cache: HttpCache | None) -> tuple[list[Trend], list[str]]:
    """Fetch, decode and parse one source; returns its trends and notes worth reporting."""
    # 1. Fetch
    fetched = fetch(source, client, cache)
    notes = list(fetched.notes)

    # 2. Decode
    decoded = decode_body(fetched.body, source.name, fetched.content_type, source.encoding,
                          xml=source.kind == "rss")
    if decoded.note:
        notes.append(decoded.note)

    # 3. Parse (a parse error after a charset fallback says which charset was used)
    try:
        if source.kind == "rss":
            trends = parse_rss(decoded.text, source.name, score_field=source.score_field)
        elif source.kind == "json":
            assert source.mapping is not None  # guaranteed by TrendSource's validator
            trends = parse_json(decoded.text, source.mapping, source.name)
        elif source.kind == "csv":
            trends = parse_csv(decoded.text, source.name, source.mapping)
        else:
            trends = parse_yaml(decoded.text, source.name, source.mapping)
    except SourceError as err:
        if decoded.note:
            raise SourceError(f"{err} ({decoded.note})") from err
        raise

    # 4. Keep max_items, add the source's tags
    trends = trends[: source.max_items]
    if source.tags:
        trends = [t.model_copy(update={"tags": _unique([*source.tags, *t.tags])}) for t in trends]
    return trends, notes


# ---------------------------------------------------------------------------------------------
# Combine


def dedupe_trends(trends: Iterable[Trend]) -> list[Trend]:
    """Drop repeated titles (by `Trend.key`), keeping the first but with the highest score.

    The kept trend gains the dropped ones' tags, and their sources in `also_in`.
    """
    kept: dict[str, Trend] = {}
    for trend in trends:
        first = kept.get(trend.key)
        if first is None:
            kept[trend.key] = trend
            continue
        update: dict[str, Any] = {
            "tags": _unique([*first.tags, *trend.tags]),
            "also_in": [s for s in _unique([*first.also_in, *trend.sources]) if s != first.source],
        }
        if trend.score is not None and (first.score is None or trend.score > first.score):
            update["score"] = trend.score
        kept[trend.key] = first.model_copy(update=update)
    return list(kept.values())


def ingest(sources: Sequence[TrendSource], client: httpx.Client | None = None,
           cache: HttpCache | None = None) -> TrendReport:
    """Read every enabled source; failed sources are reported, never fatal."""
    # 1. Read each source; a failure skips only that source
    order = {source.name: i for i, source in reversed(list(enumerate(sources)))}
    weights = {source.name: source.weight for source in sources}
    collected: list[Trend] = []
    failures: list[SourceFailure] = []
    notes: list[SourceNote] = []
    with ExitStack() as stack:
        if client is None and any(s.enabled and s.is_http for s in sources):
            client = stack.enter_context(httpx.Client())  # one connection pool for the run
        for source in sources:
            if not source.enabled:
                continue
            try:
                trends, messages = _read(source, client, cache)
            except (SourceError, httpx.HTTPError, httpx.InvalidURL) as err:
                failures.append(SourceFailure(source=source.name, reason=str(err)))
                continue
            collected.extend(trends)
            notes.extend(SourceNote(source=source.name, message=m) for m in messages)

    # 2. Dedupe, then rank: weighted score desc (no score last), then source order, then rank
    def sort_key(trend: Trend) -> tuple[bool, float, int, int]:
        weighted = (trend.score or 0.0) * weights.get(trend.source, 1.0)
        return (trend.score is None, -weighted, order.get(trend.source, 0), trend.rank)

    return TrendReport(trends=sorted(dedupe_trends(collected), key=sort_key), failures=failures,
                       notes=notes)
