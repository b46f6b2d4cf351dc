"""Trend steps: ingest, rank, remember, and the stored reports campaigns read."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import get_run_logger, task

from tasks.steps.policies import LEDGER_RETRY, NEVER_CACHE, SOURCE_RETRY, STORE_RETRY
from tasks.store.objects import store_at
from tasks.trends.archive import (
    StoredTrends,
    load_recent_trends,
    load_week_trends,
    save_trends,
    save_week_trends,
)
from tasks.trends.ranking import (
    RankedTrends,
    RankingConfig,
    SafetyPolicy,
    TrendHistory,
    load_sensitive_terms,
    rank_trends,
)
from tasks.trends.sources import StoreHttpCache, Trend, TrendReport, TrendSource, ingest


@task(name="ingest-trends", **SOURCE_RETRY)
def ingest_trends(sources: list[TrendSource], cache_store: str | None = None) -> TrendReport:
    """Read the trend sources (conditional GETs cached in `cache_store`); log skipped sources."""
    cache = None if cache_store is None else StoreHttpCache(store_at(cache_store))
    report = ingest(sources, cache=cache)
    logger = get_run_logger()
    for failure in report.failures:
        logger.warning("trend source %r skipped: %s", failure.source, failure.reason)
    for note in report.notes:
        logger.info("trend source %r: %s", note.source, note.message)
    logger.info("%d trends from %d sources", len(report.trends), len(sources))
    return report


@task(name="rank-trends", cache_policy=NEVER_CACHE)
def rank_trends_task(
    report: TrendReport,
    policy: SafetyPolicy | None = None,
    sensitive_terms_path: str | None = None,
    store_url: str | None = None,
    brand: str | None = None,
    history_days: float = 14,
    config: RankingConfig | None = None,
    weights: dict[str, float] | None = None,
    limit: int | None = None,
) -> RankedTrends:
    """Rank and filter the trends for one brand, skipping those it used within `history_days`."""
    now = datetime.now(UTC)
    terms = load_sensitive_terms(sensitive_terms_path) if sensitive_terms_path else []
    used: set[str] = set()
    if store_url and brand:
        used = TrendHistory(store_at(store_url)).recent_keys(brand, history_days, now)
    return rank_trends(report, policy, used, sensitive_terms=terms, config=config, now=now,
                       weights=weights, limit=limit)


@task(name="record-trends", cache_policy=NEVER_CACHE, **STORE_RETRY)
def record_trends_task(store_url: str, brand: str, trends: list[Trend]) -> str | None:
    """Remember the trends a brand's run used, so the next runs skip them."""
    return TrendHistory(store_at(store_url)).record(brand, trends, datetime.now(UTC))


@task(name="save-trends", cache_policy=NEVER_CACHE, **STORE_RETRY)
def save_trends_task(store_url: str, campaign: str, report: TrendReport) -> str:
    """Store the normalized trends for campaigns to read."""
    return save_trends(store_at(store_url), campaign, report, datetime.now(UTC))


@task(name="load-stored-trends", cache_policy=NEVER_CACHE)
def load_recent_trends_task(store_url: str, campaign: str, max_age_s: int) -> StoredTrends | None:
    """Read trends stored by the hourly ingestion flow, if fresh enough."""
    return load_recent_trends(store_at(store_url), campaign, max_age_s, datetime.now(UTC))


@task(name="load-week-trends", cache_policy=NEVER_CACHE, **LEDGER_RETRY)
def load_week_trends_task(store_url: str, campaign: str, week: str) -> list[Trend] | None:
    """The week's frozen trend selection, if it was planned before."""
    return load_week_trends(store_at(store_url), campaign, week)


@task(name="freeze-week-trends", cache_policy=NEVER_CACHE, **LEDGER_RETRY)
def save_week_trends_task(store_url: str, campaign: str, week: str, trends: list[Trend]) -> str:
    """Record which trends this week uses, so reruns plan the same images."""
    return save_week_trends(store_at(store_url), campaign, week, trends)
