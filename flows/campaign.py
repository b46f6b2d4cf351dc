"""The weekly campaign flow: ingest -> template -> generate -> label -> upload."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict

from tasks.config import EngineSettings, load_campaign, load_settings, parse_week
from tasks.generate import generate_batch
from tasks.plan import ImageJob, plan_week_task
from tasks.progress import ProgressEvent, RunProgress, emit
from tasks.publish import PublishedImage, find_missing_task, label_job_task, publish_task
from tasks.storage import open_store
from tasks.trends import ingest_trends

POST_WORKERS = 4  # label + upload threads; bounded (Prefect's default pool is unbounded)


class CampaignSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaign: str
    week: str
    store: str
    planned: int
    created: list[str]
    existing: list[str]
    failed: list[str]
    trend_failures: list[str]


def resolve_store_url(url: str, base: Path | None = None) -> str:
    """Make a relative `file://` store URL absolute so every process writes to the same place."""
    store = open_store(url, base_dir=base)
    return store.describe()


def _chunks(jobs: list[ImageJob], size: int) -> list[list[ImageJob]]:
    return [jobs[i:i + size] for i in range(0, len(jobs), size)]


def _markdown_listing(summary: CampaignSummary, jobs: list[ImageJob]) -> str:
    lines = [f"# {summary.campaign} · {summary.week}", "",
             f"Store: `{summary.store}` — {len(summary.created)} new, "
             f"{len(summary.existing)} already there, {len(summary.failed)} failed.", "",
             "| day | date | format | template | seed | key |", "|---|---|---|---|---|---|"]
    for job in jobs:
        lines.append(f"| {job.weekday} | {job.date} | {job.format} | "
                     f"{job.prompt.template}@{job.prompt.version} | {job.seed} | `{job.key}` |")
    if summary.trend_failures:
        lines += ["", "Trend sources skipped:", *[f"- {f}" for f in summary.trend_failures]]
    return "\n".join(lines)


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"{Path(params.get('campaign', 'campaign')).stem} {params.get('week') or 'this-week'}"


@flow(name="weekly-campaign", flow_run_name=_run_name,
      task_runner=ThreadPoolTaskRunner(max_workers=POST_WORKERS))
def weekly_campaign(
    campaign: str,
    week: str | None = None,
    store: str | None = None,
    settings: str | None = None,
    engine: EngineSettings | None = None,
) -> CampaignSummary:
    """Generate, label and store every image of one campaign week (default: this week)."""
    logger = get_run_logger()
    bundle = load_campaign(campaign)
    config = load_settings(settings)
    engine = engine or config.engine
    week_label, monday = parse_week(week, datetime.now(ZoneInfo(bundle.campaign.timezone)).date())
    store = resolve_store_url(store or config.store)
    # 1. Ingest trends (a failing source is skipped and reported)
    report = ingest_trends(bundle.campaign.trends.sources)

    # 2. Template: one job per day x format x variant, keys fixed up front
    jobs = plan_week_task(bundle, week_label, monday, report.trends, engine)
    todo = find_missing_task(store, jobs)
    logger.info("%s %s: %d images planned, %d already in %s",
                bundle.campaign.name, week_label, len(jobs), len(jobs) - len(todo), store)
    emit(ProgressEvent("planned", total=len(jobs)))
    emit(ProgressEvent("skipped", count=len(jobs) - len(todo)))
    progress = RunProgress(f"{bundle.campaign.name}-{week_label}-progress".lower(), len(jobs),
                           f"Images of {bundle.campaign.name} {week_label} done")
    progress.advance(len(jobs) - len(todo))

    # 3. Generate in batches; label and upload each batch while the next one generates
    published: list[PrefectFuture] = []
    for batch in _chunks(todo, engine.max_batch):
        results = generate_batch(batch, engine)
        emit(ProgressEvent("generated", count=len(batch)))
        for job, result in zip(batch, results, strict=True):
            labelled = label_job_task.submit(job, result, bundle.brand)
            published.append(publish_task.submit(store, job, result, labelled))

    # 4. Collect: one image failing does not lose the others
    wait(published)
    created, existing, failed = [], [], []
    for job, future in zip(todo, published, strict=True):
        if future.state.is_completed():
            image: PublishedImage = future.result()
            (created if image.created else existing).append(image.key)
            emit(ProgressEvent("published", detail=image.key))
        else:
            failed.append(job.key)
            logger.error("failed: %s: %s", job.key, future.state.message)
            emit(ProgressEvent("failed", detail=job.key))
        progress.advance()
    existing += [job.key for job in jobs if job not in todo]

    summary = CampaignSummary(
        campaign=bundle.campaign.name, week=week_label, store=store, planned=len(jobs),
        created=created, existing=existing, failed=failed,
        trend_failures=[f"{f.source}: {f.reason}" for f in report.failures])

    # 5. Report
    create_markdown_artifact(key=f"{bundle.campaign.name}-images".lower(),
                             markdown=_markdown_listing(summary, jobs),
                             description=f"{bundle.campaign.name} {week_label} images")
    logger.info("%d new, %d already there, %d failed", len(created), len(existing), len(failed))
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(todo)} images failed; rerun the same week "
                           f"to finish them: {', '.join(failed[:5])}")
    return summary

