"""Normalized trends kept in the object store, so scheduled campaigns read what the hourly
ingestion flow found instead of fetching every source again."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.storage import ObjectStore
from tasks.trends import TrendReport

TRENDS_PREFIX = "_trends"


class StoredTrends(TrendReport):
    """A trend report plus when it was fetched."""

    fetched_at: datetime


def save_trends(store: ObjectStore, campaign: str, report: TrendReport, now: datetime) -> str:
    """Write the report as `_trends/<campaign>/<hour>.json` and `latest.json`; returns the key."""
    stored = StoredTrends(**report.model_dump(), fetched_at=now)
    body = stored.model_dump_json(indent=2).encode("utf-8")
    key = f"{TRENDS_PREFIX}/{campaign}/{now.astimezone(UTC):%Y%m%dT%H}.json"
    store.put(key, body, "application/json", overwrite=True)
    store.put(f"{TRENDS_PREFIX}/{campaign}/latest.json", body, "application/json", overwrite=True)
    return key


def load_recent_trends(store: ObjectStore, campaign: str, max_age_s: int,
                       now: datetime) -> StoredTrends | None:
    """The latest stored report if younger than `max_age_s`, else None."""
    key = f"{TRENDS_PREFIX}/{campaign}/latest.json"
    if max_age_s <= 0 or not store.exists(key):
        return None
    stored = StoredTrends.model_validate_json(store.get(key))
    age = (now - stored.fetched_at).total_seconds()
    return stored if age <= max_age_s else None


@task(name="save-trends", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def save_trends_task(store_url: str, campaign: str, report: TrendReport) -> str:
    """Store the normalized trends for campaigns to read."""
    from tasks.storage import open_store

    return save_trends(open_store(store_url), campaign, report, datetime.now(UTC))


@task(name="load-stored-trends", cache_policy=NO_CACHE)
def load_recent_trends_task(store_url: str, campaign: str, max_age_s: int) -> StoredTrends | None:
    """Read trends stored by the hourly ingestion flow, if fresh enough."""
    from tasks.storage import open_store

    return load_recent_trends(open_store(store_url), campaign, max_age_s, datetime.now(UTC))
