"""Signed outbound webhooks: tell a brand's own systems when something happened.

Three events, declared per brand (`webhooks:` in the brand YAML):
- `campaign.week_finished` — a campaign run ended (counts, held and failed keys, contact sheet);
- `image.held` — the QA gate kept images off the public prefix for a reviewer;
- `comment.replied` — a comment's reply image is published.

Each delivery is a JSON POST signed like the intake's requests (HMAC-SHA256 over
`"<timestamp>." + body`, headers `X-Zpipe-Timestamp` / `X-Zpipe-Signature`), with an
idempotent `X-Zpipe-Delivery` id that stays the same over every retry and redelivery: a
receiver that has seen the id answers 2xx and does nothing. The secret comes from the
environment variable the brand names (`secret_env`), never from YAML.

A receiver that is down, times out, or answers 408/429/5xx is tried again with exponential
backoff for `patience_s`; a delivery still not taken then is written to the store's outbox
(`tasks.store.keys.WEBHOOK_OUTBOX`: `_webhooks/outbox/`) and delivered again by the next campaign run or by
`zpipe webhooks redeliver`. Nothing is lost. Plain functions: no Prefect here.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.core.errors import ZpipeError
from tasks.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tasks.store.keys import WEBHOOK_OUTBOX as OUTBOX  # + <delivery id>-<url hash>.json
from tasks.store.objects import ObjectStore

Event = Literal["campaign.week_finished", "image.held", "comment.replied"]
EVENTS: tuple[Event, ...] = ("campaign.week_finished", "image.held", "comment.replied")
DELIVERY_HEADER = "X-Zpipe-Delivery"
EVENT_HEADER = "X-Zpipe-Event"
USER_AGENT = "zpipe-webhooks/1"
_RETRY_STATUS = frozenset({408, 425, 429})  # and every 5xx: the receiver may take it later


class WebhookError(ZpipeError):
    """A webhook declaration that cannot be used (e.g. its secret is not in the environment)."""


class WebhookSpec(BaseModel):
    """One receiver of a brand's events (brand YAML `webhooks:`)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s) URL that receives the signed JSON POSTs")
    events: list[Event] = Field(default_factory=lambda: list(EVENTS), min_length=1)
    secret_env: str = Field(pattern=r"^[A-Z][A-Z0-9_]{2,}$",
                            description="name of the environment variable holding the shared "
                                        "secret (secrets never live in YAML)")
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="one request's timeout")
    patience_s: float = Field(default=30.0, ge=0, le=3600,
                              description="how long to retry before the delivery goes to the outbox")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parsed = httpx.URL(value)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"webhook url must be http(s)://host/..., got {value!r}")
        return value


class Delivery(BaseModel):
    """One event for one receiver: what is sent, and what happened so far."""

    model_config = ConfigDict(extra="forbid")

    id: str  # the idempotency key, the same on every attempt
    event: Event
    url: str
    secret_env: str
    body: str  # the exact JSON that is signed and sent
    attempts: int = 0
    status: Literal["pending", "delivered", "failed"] = "pending"
    last_error: str | None = None
    created_at: datetime
    delivered_at: datetime | None = None
    timeout_s: float = 5.0
    patience_s: float = 30.0

    @property
    def outbox_key(self) -> str:
        return f"{OUTBOX}{self.id}-{hashlib.sha256(self.url.encode()).hexdigest()[:8]}.json"


def delivery_id(event: str, subject: str) -> str:
    """The idempotency key of `event` about `subject` (e.g. a campaign run, a comment id)."""
    return hashlib.sha256(f"{event}\n{subject}".encode()).hexdigest()[:32]


def make_deliveries(specs: Iterable[WebhookSpec], event: Event, subject: str,
                    data: Mapping[str, Any], now: datetime | None = None) -> list[Delivery]:
    """One delivery per receiver that asked for `event`; the body names the event and its id."""
    now = now or datetime.now(UTC)
    ident = delivery_id(event, subject)
    body = json.dumps({"id": ident, "event": event, "occurred_at": now.isoformat(), "data": dict(data)},
                      ensure_ascii=False, sort_keys=True, default=str)
    return [Delivery(id=ident, event=event, url=spec.url, secret_env=spec.secret_env, body=body,
                     created_at=now, timeout_s=spec.timeout_s, patience_s=spec.patience_s)
            for spec in specs if event in spec.events]


def _secret(name: str, env: Mapping[str, str]) -> bytes:
    value = env.get(name, "")
    if not value:
        raise WebhookError(f"webhook secret: environment variable {name} is not set; export the "
                           "secret shared with the receiver under that name")
    return value.encode()


def _attempt(delivery: Delivery, secret: bytes, client: httpx.Client) -> tuple[bool, bool, str]:
    """POST once: (delivered, worth retrying, what happened)."""
    stamp = str(int(time.time()))
    body = delivery.body.encode()
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(secret, stamp, body),
               DELIVERY_HEADER: delivery.id, EVENT_HEADER: delivery.event}
    try:
        response = client.post(delivery.url, content=body, headers=headers, timeout=delivery.timeout_s)
    except httpx.HTTPError as exc:  # refused, reset, timed out: the receiver may come back
        return False, True, f"{type(exc).__name__}: {exc}"
    if response.is_success:
        return True, False, f"HTTP {response.status_code}"
    retry = response.status_code in _RETRY_STATUS or response.status_code >= 500
    return False, retry, f"HTTP {response.status_code}: {response.text[:200]}"


def deliver(delivery: Delivery, env: Mapping[str, str] | None = None,
            sleep: Callable[[float], None] = time.sleep,
            log: Callable[[str], None] | None = None) -> Delivery:
    """Send one delivery, retrying with backoff (0.5, 1, 2 … 8 s) for its `patience_s`.

    Returns it updated: `delivered`, or `failed` with `last_error` (a 4xx other than
    408/425/429 is not retried: the receiver refused it). Raises nothing for the receiver's
    failures; a missing secret is a `failed` delivery too, naming the variable.
    """
    try:
        secret = _secret(delivery.secret_env, os.environ if env is None else env)
    except WebhookError as exc:
        return delivery.model_copy(update={"status": "failed", "last_error": str(exc)})
    deadline = time.monotonic() + delivery.patience_s
    wait, attempts = 0.5, delivery.attempts
    with httpx.Client(follow_redirects=False) as client:
        while True:
            attempts += 1
            ok, retry, what = _attempt(delivery, secret, client)
            if ok:
                return delivery.model_copy(update={"status": "delivered", "attempts": attempts,
                                                   "last_error": None, "delivered_at": datetime.now(UTC)})
            if not retry or time.monotonic() + wait > deadline:
                return delivery.model_copy(update={"status": "failed", "attempts": attempts,
                                                   "last_error": what})
            if log:
                log(f"webhook {delivery.event} to {delivery.url}: {what}; again in {wait:.1f} s")
            sleep(wait)
            wait = min(wait * 2, 8.0)


def notify(store: ObjectStore, specs: Iterable[WebhookSpec], event: Event, subject: str,
           data: Mapping[str, Any], env: Mapping[str, str] | None = None,
           log: Callable[[str], None] | None = None) -> list[Delivery]:
    """Deliver `event` to every receiver that asked for it; what fails waits in the outbox."""
    results = []
    for delivery in make_deliveries(specs, event, subject, data):
        done = deliver(delivery, env, log=log)
        if done.status != "delivered":
            store.put(done.outbox_key, done.model_dump_json(indent=2).encode(), "application/json",
                      overwrite=True)
            if log:
                log(f"webhook {event} to {done.url} not delivered ({done.last_error}); kept in "
                    f"{done.outbox_key} for `zpipe webhooks redeliver` or the next run")
        results.append(done)
    return results


def pending(store: ObjectStore) -> list[Delivery]:
    """Deliveries in the outbox, oldest first."""
    found = [Delivery.model_validate_json(store.get(key)) for key in store.list(OUTBOX)
             if key.endswith(".json")]
    return sorted(found, key=lambda d: d.created_at)


def redeliver(store: ObjectStore, env: Mapping[str, str] | None = None, patience_s: float | None = None,
              log: Callable[[str], None] | None = None) -> list[Delivery]:
    """Try every delivery in the outbox again (same id, same body); delivered ones leave it."""
    results = []
    for delivery in pending(store):
        if patience_s is not None:
            delivery = delivery.model_copy(update={"patience_s": patience_s})
        done = deliver(delivery, env, log=log)
        if done.status == "delivered":
            store.delete(done.outbox_key)
        else:
            store.put(done.outbox_key, done.model_dump_json(indent=2).encode(), "application/json",
                      overwrite=True)
        results.append(done)
    return results

