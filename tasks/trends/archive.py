"""Normalized trends kept in the object store, so scheduled campaigns read what the hourly
ingestion flow found instead of fetching every source again."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tasks.store.keys import TRENDS
from tasks.store.objects import ObjectStore
from tasks.trends.sources import Trend, TrendReport

TRENDS_PREFIX = TRENDS


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


def _week_key(campaign: str, week: str) -> str:
    return f"{TRENDS_PREFIX}/{campaign}/weeks/{week}.json"


def load_week_trends(store: ObjectStore, campaign: str, week: str) -> list[Trend] | None:
    """The trends a week was first planned with, or None if it was never planned.

    A week's selection is frozen the first time: reruns plan the same prompts, find their
    images already in the store, and make nothing new.
    """
    key = _week_key(campaign, week)
    if not store.exists(key):
        return None
    return [Trend.model_validate(t) for t in json.loads(store.get(key))["trends"]]


def save_week_trends(store: ObjectStore, campaign: str, week: str, trends: list[Trend]) -> str:
    """Freeze a week's trend selection (first writer wins)."""
    key = _week_key(campaign, week)
    body = json.dumps({"campaign": campaign, "week": week,
                       "trends": [t.model_dump(mode="json") for t in trends]},
                      ensure_ascii=False, indent=2).encode("utf-8")
    store.put(key, body, "application/json", overwrite=False)
    return key
