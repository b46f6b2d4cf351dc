"""The hourly trend-ingestion flow: fetch a campaign's sources, store the normalized trends."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.campaign import resolve_store_url
from tasks.config.schema import load_campaign, load_settings
from tasks.steps.trends import ingest_trends, save_trends_task
from tasks.trends.sources import TrendReport


def _run_name() -> str:
    from prefect.runtime import flow_run

    return f"trends {Path(flow_run.parameters.get('campaign', 'campaign')).stem}"


@flow(name="ingest-trends", flow_run_name=_run_name)
def ingest_trends_flow(campaign: str, store: str | None = None,
                       settings: str | None = None) -> TrendReport:
    """Fetch the campaign's trend sources and store the ranked, deduped result."""
    bundle = load_campaign(campaign)
    store = resolve_store_url(store or load_settings(settings).store)

    # 1. Ingest (a failing source is skipped and reported)
    report = ingest_trends(bundle.campaign.trends.sources)

    # 2. Store for the campaign runs to read
    key = save_trends_task(store, bundle.campaign.name, report)
    get_run_logger().info("%d trends stored at %s", len(report.trends), key)
    return report
