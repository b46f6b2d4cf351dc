"""The store's key layout: every prefix zpipe writes under, in one place.

Images live at their planned key (tasks.content.identity), `<key>.json` beside each is its
sidecar. The folders below hold images on their way to the public (pending, held) and the
records that are not images (names starting with `_`: never public, never listed as images).
"""

from __future__ import annotations

SIDECAR_SUFFIX = ".json"  # `<key>.json` beside `<key>`: no sidecar = not a finished image

# -- images on their way to the public ------------------------------------------------
PENDING = "pending/"  # pending/<key>: waits for a reviewer (the approval gate)
PUBLISHED = "published/"  # published/<key>: a gated image a reviewer approved
HELD = "held/"  # held/<key>: flagged by the QA gate (tasks.qa); never public until released

# -- records (not images) ---------------------------------------------------------------
TRENDS = "_trends"  # _trends/<campaign>/<hour>.json, latest.json, weeks/<week>.json
TRENDS_HTTP_CACHE = f"{TRENDS}/http-cache"  # conditional-GET cache of trend sources
TRENDS_HISTORY = f"{TRENDS}/history"  # the trends each brand used, so the next runs skip them
COMMENTS = "_comments"  # the comment ledger: one record per comment
REVIEWS = "_reviews/"  # one record per suspended run, for the expiry sweep
SHEETS = "_sheets/"  # contact sheets of a run's images
WEBHOOK_OUTBOX = "_webhooks/outbox/"  # webhook deliveries no receiver took yet (tasks.notify)


def held_key(key: str) -> str:
    """`<key>` -> `held/<key>` (gated keys too: `held/pending/<key>`)."""
    return HELD + key


def sidecar_key(key: str) -> str:
    """`<key>` -> `<key>.json`."""
    return key + SIDECAR_SUFFIX


def is_record(key: str) -> bool:
    """Keys under `_...` are zpipe's records, not images."""
    return key.startswith("_")
