"""The comment intake: a signed HTTP endpoint that records comments and emits the reply event.

Prefect's webhooks are Cloud-only, so comments reach zpipe here. A comment is authenticated
(HMAC signature, freshness, replay), validated, rate-limited and moderated, then recorded in
the comment ledger (`tasks.comments.ledger.CommentLedger`) and announced with the Prefect event
`COMMENT_EVENT`, which triggers the comment-reply flow. The event carries only ids: the flow
reads the text from the ledger. Build the app with `create_app(settings)`; run it with `serve`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from math import ceil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from flows.names import COMMENT_EVENT, COMMENT_FLOW, COMMENT_RESOURCE_PREFIX
from tasks.comments.ledger import (
    ID_PATTERN,
    Comment,
    CommentLedger,
    CommentState,
    State,
    content_fingerprint,
    extract_keywords,
    moderate,
    warm_keywords,
)
from tasks.config.schema import BrandConfig, parse_config
from tasks.core.errors import ConfigError, StoreError, ZpipeError
from tasks.core.settings import env_default, env_name, env_raw
from tasks.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError, sign, verify_signature
from tasks.core.yamlio import read_yaml
from tasks.store.objects import ObjectStore, open_store

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("zpipe.intake")

MAX_BODY_BYTES = 64 * 1024  # a comment is at most 10,000 characters: 64 KB holds any valid one
MIN_SECRET_CHARS = 16  # HMAC keys shorter than this are guessable
SECRET_ENV, SECRET_FILE_ENV = env_name("intake_secret"), env_name("intake_secret_file")
PER_MINUTE_ENV = env_name("intake_per_minute")  # overall comments per minute
PER_AUTHOR_ENV = env_name("intake_per_author_per_minute")  # per author within a brand
MAX_QUEUE_ENV = env_name("intake_max_queue")  # replies waiting or running before 503
QUEUE_TTL_S = 1.0  # the queue depth is asked of Prefect at most once a second
RETRY_AFTER_S = 5  # what a saturated intake tells senders to wait
HANDOFF_THREADS = 2  # fast-path hand-offs in flight at once (each is one `.delay()` round trip)
DEFAULT_STORE = "file://./zpipe-out"  # the same default as configs' `store`
EMIT_FAILED = "event not emitted"  # reason prefix of records that a re-send may queue again
# Threads doing ledger I/O at once: botocore keeps 10 S3 connections (max_pool_connections);
# more threads open and discard a connection per call under a burst, at several ms each
STORE_THREADS = 10
REPLAY_CACHE_SIZE = 100_000
# A re-send this soon after the intake recorded or read a comment is answered from memory (its
# state at most this old): platforms re-send within moments, and a ledger read in a thread
# took 300-500 ms under a burst on 2 cores (GIL and run queue), an in-memory answer < 1 ms
RECENT_TTL_S = 2.0
RECENT_CACHE_SIZE = 10_000
MAX_INDEXED_IDS = 2_000_000  # ledger ids in memory (~115 bytes each: ~230 MB); past this all read S3
# Idle keep-alive connections stay open this long: longer than clients' and load balancers'
# own idle limits (httpx 5 s, AWS ALB 60 s), so the server never closes a connection that a
# client is just reusing (the client would see a reset, not an answer). uvicorn's default: 5 s.
KEEP_ALIVE_S = 65  # signatures remembered: ~170 signed requests/s over a 10-minute window
MAX_JSON_DEPTH = 8  # a comment is one flat object of strings; deeper input only tests the parser
MAX_NUMBER_CHARS = 64  # a comment has no numbers at all; a longer one is out of every range
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # brackets inside don't nest

SIGNATURE_DOC = f"""
Every request is signed with the secret shared with the intake (`{SECRET_ENV}`):

* `{TIMESTAMP_HEADER}`: the current time in unix seconds, e.g. `1767225600`;
* `{SIGNATURE_HEADER}`: `sha256=` + hex HMAC-SHA256(secret, `"<timestamp>." + raw body bytes`).

A timestamp more than the tolerance (300 s by default) in the past or future is refused, and
so is a signature already seen (a replay): re-sign every request. Re-sending a comment with
a fresh signature is safe: the answer is the first one's (200 with the current state, at
most {RECENT_TTL_S:g} s old) and no second image is made. The comment id is an idempotency
key: the same id with another brand, author, post_id or text is refused (409). A comment
whose event could not be emitted (503) is queued again when re-sent.

The body is strict JSON (RFC 8259) in UTF-8: `NaN`, `Infinity`, duplicate keys, numbers out
of range and nesting deeper than {MAX_JSON_DEPTH} levels are refused (422).

Answers: **202** queued; **200** already received, or rejected by moderation (`state:
"rejected"` with a `reason`: the request was fine, the comment breaks the brand's reply
policy); **401** bad signature; **404** unknown brand; **409** id already received with other
content; **413** body over 64 KB; **422** not strict JSON, or a bad field (named in `loc`);
**429** rate limited (see `Retry-After`); **503** not queued, retry.
"""


class IntakeSettings(BaseModel):
    """What the intake serves: its secret, the store holding the ledger, brands and limits."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # never echo the secret

    secret: SecretStr = Field(min_length=MIN_SECRET_CHARS, description="HMAC key shared with senders")
    store_url: str = Field(min_length=1, description="file:///dir or s3://bucket/prefix")
    brands: dict[str, BrandConfig] = Field(min_length=1, description="slug -> brand")
    per_author_per_minute: int = Field(default=env_default("intake_per_author_per_minute"), ge=1,
                                        description=f"env {PER_AUTHOR_ENV}")
    overall_per_minute: int = Field(default=env_default("intake_per_minute"), ge=1,
                                     description=f"env {PER_MINUTE_ENV}")
    tolerance_s: int = Field(default=300, ge=1, le=3600, description="accepted clock skew")
    max_queue: int = Field(default=env_default("intake_max_queue"), ge=1,
                           description=f"env {MAX_QUEUE_ENV}: comment replies waiting or running "
                                       "before new comments are answered 503 + Retry-After")
    queue_depth: Callable[[], int] | None = Field(
        default=None, exclude=True,
        description="how many comment replies wait or run. Default: the Prefect API's count of "
                    "comment replies (flow runs, fast-path task runs) not yet finished (with the "
                    "default emitter); none: no cap")
    emit: Callable[..., Any] | None = Field(
        default=None, exclude=True,
        description="event emitter called as emit(event=, resource=, payload=); raises on failure. "
                    "Default: prefect.events.emit_event",
    )
    handoff: Callable[[str, str], Any] | None = Field(
        default=None, exclude=True,
        description="the fast path: called as handoff(comment_id, brand) after the event left, "
                    "off the request thread (e.g. worker_handoff: a resident worker answers at "
                    "once). None: the event's triggered run answers")

    @model_validator(mode="after")
    def _slugs_match(self) -> IntakeSettings:
        for key, brand in self.brands.items():
            if key != brand.slug:
                raise ValueError(f"brands[{key!r}] holds brand {brand.slug!r}: key it by its slug")
        return self


class CommentAnswer(BaseModel):
    """The answer to a POSTed comment."""

    model_config = ConfigDict(extra="forbid")

    id: str
    state: State
    reason: str | None = None
    status_url: str


class CommentStatus(BaseModel):
    """Where a comment is: its state, and the reply image's URL once done."""

    model_config = ConfigDict(extra="forbid")

    id: str
    state: State
    image_url: str | None = None
    flow_run_id: str | None = None
    reason: str | None = None


# -- in-process guards --------------------------------------------------------------


class ReplayGuard:
    """Remembers the signatures seen while their timestamps can still pass the tolerance."""

    def __init__(self, tolerance_s: int):
        from cachetools import TTLCache

        # a timestamp up to `tolerance_s` in the future stays valid for 2 x tolerance
        self._seen: TTLCache[str, bool] = TTLCache(maxsize=REPLAY_CACHE_SIZE, ttl=2 * tolerance_s + 1)
        self._lock = threading.Lock()

    def first_use(self, signature: str) -> bool:
        """True the first time `signature` is seen, False for a replay."""
        key = signature.lower()
        with self._lock:
            if key in self._seen:
                return False
            self._seen[key] = True
            return True


class RateLimits:
    """Per-author (within a brand) and overall limits on comments, moving one-minute windows."""

    def __init__(self, per_author_per_minute: int, overall_per_minute: int):
        from limits import RateLimitItemPerMinute
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._author = RateLimitItemPerMinute(per_author_per_minute)
        self._overall = RateLimitItemPerMinute(overall_per_minute)
        self._lock = threading.Lock()  # test-then-hit both limits as one step

    def _checks(self, brand: str, author: str) -> list[tuple[Any, tuple[str, ...], str]]:
        """Each limit on one comment of `author` for `brand`: the item, its ids and why it refuses."""
        return [
            (self._overall, ("overall",), f"the intake takes at most {self._overall.amount} "
                                          "comments per minute"),
            (self._author, ("author", brand, author), f"author {author!r} may send at most "
                                                      f"{self._author.amount} comments per minute"),
        ]

    def _refusal(self, checks: list[tuple[Any, tuple[str, ...], str]]) -> HTTPException | None:
        """The 429 if a limit of `checks` is used up (with the wait until they all free); lock held."""
        blocked = [(item, ids, why) for item, ids, why in checks if not self._limiter.test(item, *ids)]
        if not blocked:
            return None
        waits = [self._limiter.get_window_stats(item, *ids).reset_time - time.time()
                 for item, ids, _ in blocked]
        retry_after = max(1, ceil(max(waits)))
        return HTTPException(429, f"rate limited: {blocked[0][2]}; retry in {retry_after} s",
                             headers={"Retry-After": str(retry_after)})

    def refusal(self, brand: str, author: str) -> HTTPException | None:
        """The 429 that `acquire` would raise now, or None; counts nothing."""
        with self._lock:
            return self._refusal(self._checks(brand, author))

    def acquire(self, brand: str, author: str) -> None:
        """Count one comment, or raise a 429 HTTPException (with Retry-After) counting nothing."""
        checks = self._checks(brand, author)
        with self._lock:
            refusal = self._refusal(checks)
            if refusal is None:
                for item, ids, _ in checks:
                    self._limiter.hit(item, *ids)
        if refusal is not None:
            raise refusal


# -- the service --------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _answer(record: CommentState) -> CommentAnswer:
    return CommentAnswer(id=record.id, state=record.state, reason=record.reason,
                         status_url=f"/v1/comments/{record.id}")


def _check_same_content(record: CommentState, fingerprint: str) -> None:
    """Raise a 409 HTTPException if `record` was received with other content than `fingerprint`."""
    if record.fingerprint is not None and record.fingerprint != fingerprint:
        raise HTTPException(409, f"comment id {record.id!r} was already received with other content: "
                                 "its brand, author, post_id or text differs from the first submission. "
                                 "A comment id is an idempotency key: re-send the first comment exactly, "
                                 "or send a changed comment under a new id")


def _emit_to_prefect(**event: Any) -> None:
    """prefect.events.emit_event, raising when Prefect did not take the event."""
    from prefect.events import emit_event

    if emit_event(**event) is None:
        raise ZpipeError("Prefect events are off or failed to send (see the log); check PREFECT_API_URL")


def _start_prefect_events() -> None:
    """Start Prefect's events worker (its thread and connection) before the first comment: done
    by the first `emit_event`, it held the GIL long enough to stall a burst's first answers."""
    from prefect.events.worker import EventsWorker

    EventsWorker.instance()


def _require_prefect_api() -> None:
    """Refuse to start without PREFECT_API_URL: Prefect would start a slow ephemeral server."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ZpipeError("the intake emits Prefect events but PREFECT_API_URL is not set; point it at "
                         "the Prefect server, e.g. PREFECT_API_URL=http://127.0.0.1:4200/api")


def prefect_queue_depth(client: Any = None) -> int:
    """Comment replies not finished yet, per the API: comment-reply flow runs (scheduled,
    pending, running, paused) and the fast path's reply task runs on resident workers (queued
    or running; a running one only if it started within `WORKER_TIMEOUT_S`, so that a worker
    killed mid-reply does not hold a place for ever).

    `client`: an open SyncPrefectClient to ask with; None: a new one for this call.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from flows.comment import REPLY_TAG, WORKER_TIMEOUT_S

    if client is None:
        with get_client(sync_client=True) as client:
            return prefect_queue_depth(client)
    waiting = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]
    flows = client.count_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[COMMENT_FLOW])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=waiting))))
    since = (datetime.now(UTC) - timedelta(seconds=WORKER_TIMEOUT_S)).isoformat()
    replies = {"tags": {"all_": [REPLY_TAG]}}
    queued = {**replies, "state": {"type": {"any_": ["SCHEDULED", "PENDING"]}}}
    running = {**replies, "state": {"type": {"any_": ["RUNNING"]}}, "start_time": {"after_": since}}
    return flows + sum(int(client.request("POST", "/task_runs/count", json={"task_runs": runs}).json())
                       for runs in (queued, running))


class PrefectQueueDepth:
    """`prefect_queue_depth` over one Prefect client kept open between calls (not thread-safe:
    the gauge asks one probe at a time). A new client costs tens of ms of CPU (an HTTP client,
    TLS context and version check) while holding the GIL: once a second under a burst, that
    stalled every request in flight."""

    def __init__(self) -> None:
        self._client: Any = None

    def __call__(self) -> int:
        from prefect.client.orchestration import get_client

        if self._client is None:
            self._client = get_client(sync_client=True).__enter__()
        try:
            return prefect_queue_depth(self._client)
        except Exception:  # a broken connection: the next call opens a new client
            self.close()
            raise

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.__exit__(None, None, None)


class QueueGauge:
    """The reply queue's depth, asked of `probe` at most once per `ttl_s`, plus the comments
    this intake queued since (the trigger turns an event into a run a few seconds later) and
    those it is queuing now (places taken with `take`, so that concurrent comments cannot all
    pass the cap at once)."""

    def __init__(self, probe: Callable[[], int] | None, ttl_s: float = QUEUE_TTL_S):
        self.probe, self.ttl_s = probe, ttl_s
        self._lock = threading.Lock()  # the numbers below
        self._probing = threading.Lock()  # one probe at a time
        self._background: ThreadPoolExecutor | None = None
        self._depth, self._since, self._pending, self._at = 0, 0, 0, -math.inf
        self.error: str | None = None  # why the last probe failed (None: it answered)

    def depth(self, wait: bool = True) -> int:
        """Asks the probe again once `ttl_s` has passed. `wait=False` (a comment's admission) asks
        in the background and answers with the last depth meanwhile: the Prefect API takes tens
        of ms, too long to hold a comment for (the very first answer is always waited for)."""
        if self.probe is None:
            return 0
        if self._stale():
            if wait or self._at == -math.inf:
                with self._probing:
                    if self._stale():  # another caller may have just asked
                        self._ask()
            elif self._probing.acquire(blocking=False):
                if self._background is None:
                    self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-probe")
                # in this request's context: Prefect's settings (its API URL) may live there
                self._background.submit(contextvars.copy_context().run, self._ask_and_release)
        with self._lock:
            return self._depth + self._since + self._pending

    def take(self, cap: int) -> int | None:
        """Take a place in the queue for one comment: None if taken, else the depth (at the cap).
        Then call `release(queued=)` once: True when the comment was queued, False when not."""
        self.depth(wait=False)  # asks the probe again when due
        with self._lock:
            depth = self._depth + self._since + self._pending
            if self.probe is not None and depth >= cap:
                return depth
            self._pending += 1
            return None

    def release(self, queued: bool) -> None:
        with self._lock:
            self._pending -= 1
            self._since += queued

    def close(self) -> None:
        """Close the probe's connection, if it keeps one."""
        close = getattr(self.probe, "close", None)
        if close is not None:
            with self._probing:
                close()

    def _stale(self) -> bool:
        return time.monotonic() - self._at >= self.ttl_s

    def _ask_and_release(self) -> None:
        try:
            self._ask()
        finally:
            self._probing.release()

    def _ask(self) -> None:
        try:
            depth, error = self.probe(), None  # type: ignore[misc]
        except Exception as exc:  # the probe is pluggable; unknown depth must not refuse comments
            depth, error = None, f"{type(exc).__name__}: {exc}"
        with self._lock:
            if depth is not None:
                self._depth, self._since = depth, 0
            self.error = error
            self._at = time.monotonic()


class LedgerIds:
    """The comment ids in the ledger, held in memory so that refusing a new comment (429) costs
    no store round trip: under a burst most comments are new and over the rate limit, and a
    ledger read (S3 GET, then HEAD for a missing key) cost more than everything else they do.

    Complete once `load` has listed the ledger; the intake adds an id before it claims it, so
    an id not here is not in the ledger (the intake is the ledger's only writer of new records,
    one process: the replay guard and rate limits assume the same). Until loaded, or past
    `max_ids`, it knows nothing and every comment reads the ledger, as without it.
    """

    def __init__(self, ledger: CommentLedger, max_ids: int = MAX_INDEXED_IDS):
        self.ledger, self.max_ids = ledger, max_ids
        self._ids: set[str] = set()
        self._complete = False
        self._lock = threading.Lock()

    def load(self) -> None:
        """List the ledger's records (S3: one request per 1,000); then the index is complete."""
        folder = self.ledger.prefix + "/"
        try:
            keys = self.ledger.store.list(folder)
        except StoreError as exc:  # the index only saves reads: without it, every comment reads
            logger.warning("comment ids not indexed (every comment reads the ledger): %s", exc)
            return
        ids = {key[len(folder):-len(".json")] for key in keys
               if key.endswith(".json") and "/" not in key[len(folder):]}
        with self._lock:
            self._ids |= ids
            self._complete = len(self._ids) <= self.max_ids
        logger.info("comment ids indexed: %d in the ledger%s", len(ids),
                    "" if self._complete else f", past the index's {self.max_ids}: not used")

    def surely_new(self, comment_id: str) -> bool:
        """True when the ledger has no record of `comment_id`; False when it may have one."""
        with self._lock:
            return self._complete and comment_id not in self._ids

    def add(self, comment_id: str) -> None:
        """Note an id about to be claimed (before the claim: a failed one costs only a read later)."""
        with self._lock:
            self._ids.add(comment_id)
            if len(self._ids) > self.max_ids:
                self._complete = False


class Screened(NamedTuple):
    """A comment's moderation: its cleaned text, why it is rejected (None: it is not), keywords."""

    text: str
    reason: str | None
    keywords: list[str]


class Intake:
    """The intake's state and steps: secret, brands, ledger, guards and the event emitter."""

    def __init__(self, settings: IntakeSettings):
        self.settings = settings
        self.store: ObjectStore = open_store(settings.store_url)
        self.ledger = CommentLedger(self.store)
        self.ids = LedgerIds(self.ledger)
        self.replays = ReplayGuard(settings.tolerance_s)
        from cachetools import TTLCache

        self._recent: TTLCache[str, CommentState] = TTLCache(maxsize=RECENT_CACHE_SIZE, ttl=RECENT_TTL_S)
        self._recent_lock = threading.Lock()
        self.limits = RateLimits(settings.per_author_per_minute, settings.overall_per_minute)
        self.emit: Callable[..., Any] = settings.emit or _emit_to_prefect
        self.handoff = settings.handoff
        self._handoffs = ThreadPoolExecutor(max_workers=HANDOFF_THREADS, thread_name_prefix="handoff")
        probe = settings.queue_depth or (PrefectQueueDepth() if settings.emit is None else None)
        self.queue = QueueGauge(probe)

    def authenticate(self, timestamp: str | None, signature: str | None, body: bytes) -> None:
        """Raise a 401 HTTPException unless the request is signed, fresh and not a replay."""
        try:
            verify_signature(self.settings.secret.get_secret_value().encode(), timestamp, signature,
                             body, now=time.time(), tolerance_s=self.settings.tolerance_s)
            if not self.replays.first_use(signature or ""):
                raise SignatureError("replayed", "replayed: this signature was already used; "
                                                 "sign every request anew")
        except SignatureError as exc:
            logger.warning("refused a comment: %s", exc.reason)
            raise HTTPException(401, f"invalid signature: {exc}") from None

    def brand(self, slug: str) -> BrandConfig:
        """The brand config of `slug`, or a 404 HTTPException listing the known brands."""
        brand = self.settings.brands.get(slug)
        if brand is None:
            known = ", ".join(sorted(self.settings.brands))
            raise HTTPException(404, f"unknown brand {slug!r}; this intake serves: {known}")
        return brand

    def answer_from_memory(self, comment: Comment) -> tuple[int, CommentAnswer] | None:
        """The answer to a re-send moments after the first, decided in memory (no store read,
        no thread): 200, or 409 for other content. None: not one (see `count_if_new`, `admit`)."""
        with self._recent_lock:
            record = self._recent.get(comment.id)
        if record is not None:
            _check_same_content(record, content_fingerprint(comment))
            return 200, _answer(record)
        return None

    def count_if_new(self, comment: Comment) -> bool:
        """Count a comment surely new to the ledger against its rate limits now, on the event
        loop (429 when used up): of a burst's first requests only those the limits let through
        take a thread. False for a possible re-send, which gets its first answer whatever the
        limits (`admit` then decides)."""
        if not self.ids.surely_new(comment.id):
            return False
        self.limits.acquire(comment.brand, comment.author)
        return True

    def _remember(self, record: CommentState) -> CommentAnswer:
        """The answer for `record`, kept for re-sends (not a failed one: a re-send may queue it)."""
        if record.state != "failed":
            with self._recent_lock:
                self._recent[record.id] = record
        return _answer(record)

    def admit(self, comment: Comment, counted: bool = False,
              screened: Screened | None = None) -> tuple[int, CommentAnswer]:
        """Dedupe, rate-limit (unless `counted` already), moderate (unless `screened`), record
        and queue one authenticated comment."""
        # 1. A re-sent id gets the first answer (no second image), unless its event never left;
        #    the same id with other content is another comment under a used key (409)
        fingerprint = content_fingerprint(comment)
        # (a read of a missing record is two store requests: skipped when the index knows better)
        existing = None if self.ids.surely_new(comment.id) else self.ledger.get(comment.id)
        if existing is not None:
            _check_same_content(existing, fingerprint)
        if existing is not None and not (existing.state == "failed"
                                         and (existing.reason or "").startswith(EMIT_FAILED)):
            return 200, self._remember(existing)

        # 2. Rate limits: per author and overall; a saturated reply queue takes nothing new
        if not counted:
            self.limits.acquire(comment.brand, comment.author)
        depth = self.queue.take(self.settings.max_queue)
        if depth is not None:
            raise HTTPException(503, f"busy: {depth} comment replies are waiting or running (cap "
                                     f"{self.settings.max_queue}); nothing was recorded, re-send the "
                                     f"comment after {RETRY_AFTER_S} s",
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        queued = False
        try:
            status, answer = self._record_and_queue(comment, existing, fingerprint, screened)
            queued = status == 202
            return status, answer
        finally:  # the place taken in the queue: kept by a queued comment, freed otherwise
            self.queue.release(queued=queued)

    def screen(self, comment: Comment) -> Screened:
        """Moderation and keywords: CPU only (~4 ms), no I/O. On the event loop, one comment
        after another: in a thread each, a burst's first comments took 70-105 ms for it,
        sharing the GIL with each other and the loop (2 cores, 2026-12-07)."""
        text, reason = moderate(comment.text, self.brand(comment.brand).replies)
        return Screened(text, reason, [] if reason else extract_keywords(text))

    def _record_and_queue(self, comment: Comment, existing: CommentState | None,
                          fingerprint: str, screened: Screened | None) -> tuple[int, CommentAnswer]:
        """Moderate (unless `screened` already), record and emit one admitted comment (its
        place in the queue taken)."""
        # 3. Moderation, before anything is queued
        text, reason, keywords = screened or self.screen(comment)
        fields: dict[str, Any] = {
            "brand": comment.brand, "author": comment.author, "post_id": comment.post_id,
            "text": text, "keywords": keywords, "state": "rejected" if reason else "queued",
            "reason": reason, "image_key": None, "flow_run_id": None, "fingerprint": fingerprint,
        }

        # 4. Record it: of concurrent requests for one id exactly one wins (a conditional put);
        #    a loser whose content differs from the winner's is refused like a later re-send
        if existing is None:
            now = _utcnow()
            self.ids.add(comment.id)
            record, won = self.ledger.claim(
                CommentState(id=comment.id, received_at=now, updated_at=now, **fields))
        else:
            record, won = self.ledger.requeue(existing, **fields)
        if not won:
            _check_same_content(record, fingerprint)
            return 200, self._remember(record)
        logger.info("comment %s for %s: %s", comment.id, comment.brand, record.state)
        if record.state == "rejected":
            return 200, self._remember(record)

        # 5. Queue it: the event triggers comment-reply; if it fails nothing stays queued
        try:
            self.emit(event=COMMENT_EVENT,
                      resource={"prefect.resource.id": COMMENT_RESOURCE_PREFIX + comment.id},
                      payload={"id": comment.id, "brand": comment.brand})
        except Exception as exc:  # the emitter is pluggable: any failure means "not queued"
            logger.exception("comment %s: event not emitted", comment.id)
            self.ledger.update(comment.id, state="failed",
                               reason=f"{EMIT_FAILED} ({type(exc).__name__}); re-send the comment to retry")
            raise HTTPException(503, "not queued: the event could not be emitted; re-send the "
                                     "comment later (it will be queued then)") from None
        if self.handoff is not None:  # off the request thread: the answer does not wait for it
            # in this request's context: Prefect's settings (its API URL) may live there
            self._handoffs.submit(contextvars.copy_context().run, self._hand_off, comment.id, comment.brand)
        return 202, self._remember(record)

    def _hand_off(self, comment_id: str, brand: str) -> None:
        started = time.perf_counter()
        try:
            self.handoff(comment_id, brand)  # type: ignore[misc]
        except Exception:  # a flow run answers it now (or the event's trigger, after a minute)
            logger.exception("comment %s: not handed to a worker", comment_id)
            from flows.comment import start_fallback_run

            start_fallback_run(comment_id, brand)
        else:  # 0.02-0.1 s (see tasks/orchestration/handoff.py)
            logger.info("comment %s: handed to a worker in %.2f s", comment_id, time.perf_counter() - started)

    def warm_store(self) -> None:
        """Write, read and delete one small object in the ledger's folder at start: botocore
        builds each S3 operation at its first call (~200 ms of CPU, holding the GIL the event
        loop needs), which the first comments of a burst would otherwise pay together. It also
        shows at start whether the store takes writes."""
        key = f"{self.ledger.prefix}/.intake-warm-up"  # not a record: the ledger lists *.json
        try:
            self.store.put(key, b"", "text/plain", overwrite=True)
            self.store.get(key)
            self.store.exists(key)
            self.store.delete(key)
        except StoreError as exc:
            logger.error("the comment ledger's store refused a test write at start: %s; comments "
                         "are answered 503 until it takes writes", exc)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready = the ledger's store answers and the reply queue is below its cap."""
        problems = []
        try:
            self.store.exists("_comments/.ready")  # one cheap round trip to the store
        except StoreError as exc:
            problems.append(f"store: {exc}")
        depth = self.queue.depth()
        if self.queue.error:
            problems.append(f"prefect: queue depth unknown ({self.queue.error})")
        if depth >= self.settings.max_queue:
            problems.append(f"queue: {depth} replies waiting or running (cap {self.settings.max_queue})")
        return not problems, {"ready": not problems, "queue_depth": depth,
                              "max_queue": self.settings.max_queue, "problems": problems}

    def status(self, comment_id: str) -> CommentStatus:
        """A comment's state and, once done, a (presigned) URL of its reply image."""
        record = self.ledger.get(comment_id)
        if record is None:
            raise HTTPException(404, f"no comment {comment_id!r}; POST it to /v1/comments first")
        image_url = None
        if record.state == "done" and record.image_key:
            image_url = self.store.url(record.image_key)
        return CommentStatus(id=record.id, state=record.state, image_url=image_url,
                             flow_run_id=record.flow_run_id, reason=record.reason)


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, or a 413 HTTPException as soon as it passes `limit` bytes."""
    too_large = HTTPException(413, f"body larger than {limit} bytes; a comment fits in far less")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class _NotStrictJSON(ValueError):
    """The body is JSON to Python's parser, not to RFC 8259 (or not to this intake)."""


def _refuse_constant(name: str) -> None:
    raise _NotStrictJSON(f"{name} is not JSON (RFC 8259 numbers are finite; NaN and Infinity are a "
                         "JavaScript extension): send the comment's fields as strings")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _NotStrictJSON(f"the number {literal[:32]} is out of range (it would be Infinity): "
                             "send the comment's fields as strings")
    return value


def _bounded_int(literal: str) -> int:
    digits = len(literal.lstrip("-"))
    if digits > MAX_NUMBER_CHARS:
        raise _NotStrictJSON(f"a number with {digits} digits is out of range (at most "
                             f"{MAX_NUMBER_CHARS}): send the comment's fields as strings")
    return int(literal)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:  # parsers disagree on which copy wins: a signed body must mean one thing
            raise _NotStrictJSON(f"duplicate key {key[:64]!r} in a JSON object: send each field once")
        seen.add(key)
    return dict(pairs)


def _nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in `text` (brackets inside strings do not count)."""
    depth = deepest = 0
    for bracket in re.sub(r"[^\[\]{}]", "", _JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _strict_json_problem(body: bytes) -> str | None:
    """Why `body` is not strict JSON (RFC 8259, UTF-8), with the fix; None when it is.

    pydantic's parser (like Python's json) takes NaN, Infinity and 1e400, which no JSON encoder
    can echo back in a 422, and keeps the last of duplicate keys, where other parsers keep the
    first: the same signed bytes would mean two comments.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (f"the body is not UTF-8: byte 0x{body[exc.start]:02x} at position {exc.start} "
                f"({exc.reason}); encode the JSON as UTF-8")
    depth = _nesting_depth(text)
    if depth > MAX_JSON_DEPTH:
        return (f"the JSON nests {depth} levels deep, past the recursion limit of {MAX_JSON_DEPTH}: "
                "a comment is one flat object of strings")
    try:
        json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                   parse_int=_bounded_int, object_pairs_hook=_unique_keys)
    except _NotStrictJSON as exc:
        return str(exc)
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    return None


def _parse_comment(body: bytes) -> Comment:
    """Validate the body as a Comment, or raise FastAPI's 422 naming the problem or the field."""
    problem = _strict_json_problem(body)
    if problem is not None:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": problem}])
    try:
        return Comment.model_validate_json(body)
    except ValidationError as exc:
        errors = []
        for error in exc.errors(include_url=False):
            error = {**error, "loc": ("body", *error["loc"])}
            if isinstance(error.get("input"), bytes):  # undecodable JSON: don't echo raw bytes
                error.pop("input")
            errors.append(error)
        raise RequestValidationError(errors) from None


def create_app(settings: IntakeSettings) -> FastAPI:
    """The intake as a FastAPI app: POST/GET /v1/comments, GET /healthz, docs at /docs."""
    import anyio
    import anyio.to_thread

    if settings.emit is None:
        _require_prefect_api()
    intake = Intake(settings)
    store_threads = anyio.CapacityLimiter(STORE_THREADS)
    admitting: dict[str, asyncio.Future[None]] = {}  # comment id -> its first copy, being admitted

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(warm_keywords)  # the first comment need not wait for it
        # in the background: the ledger's ids (until listed, every comment reads the ledger), the
        # first queue depth, one store round trip of each kind, Prefect's events worker and the
        # hand-off's client (the first comments need not wait for them)
        warm = [("ledger-ids", intake.ids.load), ("queue-depth", intake.queue.depth),
                ("store", intake.warm_store)]
        if settings.emit is None:
            warm.append(("prefect-events", _start_prefect_events))
        if (warm_handoff := getattr(settings.handoff, "warm", None)) is not None:
            warm.append(("worker-handoff", warm_handoff))
        for name, work in warm:
            threading.Thread(target=contextvars.copy_context().run, args=(work,), name=name,
                             daemon=True).start()
        yield
        intake.queue.close()
        if (close_handoff := getattr(settings.handoff, "close", None)) is not None:
            close_handoff()

    app = FastAPI(
        title="zpipe comment intake",
        description="Receives signed user comments, moderates them and queues reply images "
                    "(the Prefect event `" + COMMENT_EVENT + "` triggers the comment-reply flow).",
        version="1",
        lifespan=lifespan,
    )
    app.state.intake = intake

    @app.exception_handler(StoreError)
    async def store_unavailable(_: Request, exc: StoreError) -> JSONResponse:
        logger.error("object store error: %s", exc)
        return JSONResponse({"detail": "the comment ledger's object store is unavailable; retry later"},
                            status_code=503)

    @app.post(
        "/v1/comments",
        summary="Receive a signed comment",
        description=SIGNATURE_DOC,
        status_code=202,
        response_model=CommentAnswer,
        responses={200: {"model": CommentAnswer, "description": "already received, or rejected"},
                   401: {"description": "signature missing, malformed, stale, wrong or replayed"},
                   404: {"description": "unknown brand"},
                   409: {"description": "id already received with other content"},
                   413: {"description": "body over 64 KB"},
                   422: {"description": "not strict JSON (UTF-8, no NaN/Infinity, no duplicate keys), "
                                        "or a bad field"},
                   429: {"description": "rate limited; see Retry-After"},
                   503: {"description": "not queued (reply queue full, or the event could not be "
                                        "emitted); retry, see Retry-After"}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": Comment.model_json_schema()}}}},
    )
    async def receive_comment(
        request: Request,
        x_zpipe_timestamp: Annotated[str | None, Header(description="unix seconds")] = None,
        x_zpipe_signature: Annotated[str | None, Header(description="sha256=<hex>")] = None,
    ) -> JSONResponse:
        # 1. The raw bytes, capped: the signature covers exactly these
        body = await _read_body(request, MAX_BODY_BYTES)
        # 2. Authenticate before parsing anything
        intake.authenticate(x_zpipe_timestamp, x_zpipe_signature, body)
        # 3. Validate the fields (422) and the brand (404)
        comment = _parse_comment(body)
        intake.brand(comment.brand)
        # 4. A re-send moments after the first, or a new comment over its rate limit, is answered
        #    here in memory: under a burst most comments are one or the other. A re-send while its
        #    first copy is still being admitted waits for that copy's answer (no thread, no read)
        while (first := admitting.get(comment.id)) is not None:
            await asyncio.shield(first)
        known = intake.answer_from_memory(comment)
        if known is not None:
            return JSONResponse(known[1].model_dump(mode="json"), status_code=known[0])
        counted = intake.count_if_new(comment)
        screened = intake.screen(comment) if counted else None  # CPU only: here (see `screen`)
        # 5. Ledger and emitter do blocking I/O: keep them off the event loop
        admitting[comment.id] = asyncio.get_running_loop().create_future()
        try:
            status, answer = await anyio.to_thread.run_sync(intake.admit, comment, counted, screened,
                                                            limiter=store_threads)
        finally:
            admitting.pop(comment.id).set_result(None)
        return JSONResponse(answer.model_dump(mode="json"), status_code=status)

    @app.get("/v1/comments/{comment_id}", summary="A comment's state", response_model=CommentStatus)
    async def comment_status(comment_id: Annotated[str, PathParam(pattern=ID_PATTERN)]) -> CommentStatus:
        """The comment's state, reason, flow run and (once done) a presigned image URL."""
        return await anyio.to_thread.run_sync(intake.status, comment_id, limiter=store_threads)

    @app.get("/ready", summary="Readiness: store reachable, reply queue below its cap",
             responses={503: {"description": "not ready; see problems and Retry-After"}})
    async def ready() -> JSONResponse:
        """200 when comments would be queued now; 503 + Retry-After with the problems otherwise."""
        ok, body = await anyio.to_thread.run_sync(intake.readiness, limiter=store_threads)
        return JSONResponse(body, status_code=200 if ok else 503,
                            headers=None if ok else {"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/healthz", summary="Liveness")
    def healthz() -> dict[str, bool]:
        """Always {"ok": true} while the process serves."""
        return {"ok": True}

    return app


# -- settings and running -----------------------------------------------------------


def _read_secret() -> str:
    """The intake secret from ZPIPE_INTAKE_SECRET or the file named by ZPIPE_INTAKE_SECRET_FILE."""
    how = (f"set {SECRET_ENV}, or {SECRET_FILE_ENV} to a file holding it, to a random string of at "
           f"least {MIN_SECRET_CHARS} characters, e.g. from "
           "`python -c 'import secrets; print(secrets.token_hex(32))'`")
    value, path = env_raw("intake_secret"), env_raw("intake_secret_file")
    if value and path:
        raise ConfigError("environment", SECRET_ENV, f"both {SECRET_ENV} and {SECRET_FILE_ENV} are set; "
                                                     "keep one")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(path, None,
                              f"cannot read the intake secret ({SECRET_FILE_ENV}): {why}") from None
    if not value:
        raise ConfigError("environment", SECRET_ENV, f"the intake secret is not set; {how}")
    if len(value) < MIN_SECRET_CHARS:
        raise ConfigError("environment", SECRET_ENV,
                          f"the intake secret is too short ({len(value)} characters); {how}")
    return value


def load_brands(brands_dir: Path) -> dict[str, BrandConfig]:
    """Every `*.yaml` of kind brand in `brands_dir`, by slug (paths inside are not resolved)."""
    brands_dir = Path(brands_dir)
    if not brands_dir.is_dir():
        raise ConfigError(str(brands_dir), None, "not a directory; pass the folder of brand YAML files")
    brands: dict[str, BrandConfig] = {}
    where: dict[str, Path] = {}
    for path in sorted(brands_dir.glob("*.yaml")):
        data = read_yaml(path)
        if data.get("kind") != "brand":
            continue
        brand = parse_config(path, data, expect="brand")
        assert isinstance(brand, BrandConfig)
        if brand.slug in brands:
            raise ConfigError(str(path), "slug", f"already used by {where[brand.slug]}", brand.slug)
        brands[brand.slug], where[brand.slug] = brand, path
    if not brands:
        raise ConfigError(str(brands_dir), None, "no brand YAML (`kind: brand`) in this folder")
    return brands


def _read_limits() -> dict[str, int]:
    """Rate limits given in the environment (`zpipe up` passes them on to the intake)."""
    limits = {}
    for env, field, variable in ((PER_MINUTE_ENV, "overall_per_minute", "intake_per_minute"),
                                 (PER_AUTHOR_ENV, "per_author_per_minute", "intake_per_author_per_minute"),
                                 (MAX_QUEUE_ENV, "max_queue", "intake_max_queue")):
        value = (env_raw(variable) or "").strip()
        if not value:
            continue
        if not value.isdigit() or int(value) < 1:
            raise ConfigError("environment", env, "must be a whole number of comments per minute, "
                                                  "at least 1 (unset it for the default)", value)
        limits[field] = int(value)
    return limits


def load_intake_settings(brands_dir: Path, store_url: str) -> IntakeSettings:
    """Intake settings from the environment (secret, rate limits) and the brand files in `brands_dir`."""
    return IntakeSettings(secret=SecretStr(_read_secret()), store_url=store_url,
                          brands=load_brands(brands_dir), **_read_limits())


def worker_handoff(brands_dir: Path, store_url: str, settings: str | None) -> Callable[[str, str], Any]:
    """The fast path: hand a comment straight to a resident `zpipe worker`, which answers it on
    its loaded engine (`flows.comment.reply_on_worker`) instead of a new flow-run process."""
    from flows.comment import reply_on_worker
    from flows.services.handoff import WorkerHandoff

    return WorkerHandoff(reply_on_worker, str(brands_dir.resolve()), store_url, settings)


def serve(
    host: str = "127.0.0.1",
    port: int = 8787,
    brands_dir: Path = Path("configs/brands"),
    store_url: str = DEFAULT_STORE,
    log_level: str = "info",
    fast_path: bool = False,
    settings: str | None = None,
) -> None:
    """Run the intake with uvicorn until interrupted (behind `zpipe intake`).

    `fast_path`: also hand each accepted comment to a resident worker (`worker_handoff`), with
    `settings` (the workers' settings file) for its reply flow.
    """
    import uvicorn

    intake_settings = load_intake_settings(brands_dir, store_url)
    if fast_path:
        intake_settings.handoff = worker_handoff(brands_dir, store_url, settings)
    app = create_app(intake_settings)
    handler = logging.StreamHandler()  # beside uvicorn's own lines: one line per comment decision
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    for ours in (logger, logging.getLogger("zpipe.handoff")):  # decisions, and the hand-off's retries
        ours.addHandler(handler)
        ours.setLevel(log_level.upper())
        ours.propagate = False
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False,
                timeout_keep_alive=KEEP_ALIVE_S)


def post_comment(
    url: str,
    secret: str | bytes,
    comment: dict[str, Any],
    timestamp: int | str | None = None,
    client: httpx.Client | None = None,
) -> httpx.Response:
    """Sign `comment` and POST it to the intake whose base URL is `url` (e.g. http://127.0.0.1:8787)."""
    import httpx

    body = json.dumps(comment, ensure_ascii=False).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    key = secret.encode() if isinstance(secret, str) else secret
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: stamp,
               SIGNATURE_HEADER: sign(key, stamp, body)}
    endpoint = url.rstrip("/") + "/v1/comments"
    if client is not None:
        return client.post(endpoint, content=body, headers=headers)
    return httpx.post(endpoint, content=body, headers=headers, timeout=30)
