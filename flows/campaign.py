"""The weekly campaign flow: ingest -> template -> generate -> label -> spool -> upload (-> approve)."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict

from flows.review import announce_held, wait_for_review
from tasks.config.schema import (
    CampaignBundle,
    EngineSettings,
    Settings,
    load_campaign,
    load_settings,
    parse_week,
)
from tasks.content.catalogue import read_catalogue
from tasks.content.plan import ImageJob, brand_fingerprint, plan_week
from tasks.core.progress import ProgressEvent, emit
from tasks.orchestration.progress import RunProgress
from tasks.publish.batch import BatchPublished, PublishFailure, find_missing, upload_retries
from tasks.publish.contact_sheet import (
    ContactSheet,
    StoredLook,
    gallery_markdown,
    sheet_key,
)
from tasks.publish.review import ApprovalOutcome
from tasks.qa import QAAttempt
from tasks.steps.approval import apply_decision_task
from tasks.steps.content import plan_week_task, read_catalogue_task
from tasks.steps.generation import chunks, generate_batches, handovers, make_on_workers
from tasks.steps.notify import notify_task, redeliver_task
from tasks.steps.publish import (
    find_missing_task,
    publish_batch_task,
    recover_spool_task,
    write_contact_sheet_task,
)
from tasks.steps.trends import (
    ingest_trends,
    load_recent_trends_task,
    load_week_trends_task,
    rank_trends_task,
    record_trends_task,
    save_week_trends_task,
)
from tasks.store.keys import PENDING
from tasks.store.objects import S3Store, open_store, store_at
from tasks.store.spool import Spool
from tasks.trends.archive import load_week_trends
from tasks.trends.ranking import source_weights
from tasks.trends.sources import TrendReport

POST_WORKERS = 2  # batches labelled and uploaded at once, while the next ones generate
GENERATION_LOOKAHEAD = 2  # batches in flight in-process: one generating, one queued behind it
# Bounded (Prefect's default pool is unbounded): generation lookahead + post-processing.
TASK_THREADS = GENERATION_LOOKAHEAD + POST_WORKERS
GALLERY_URL_TTL_S = 7 * 24 * 3600  # presigned links in the UI stay valid for a week (S3's most)


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
    from_spool: list[str] = []  # made by an earlier run, left in the local spool, uploaded now
    contact_sheet: str | None = None  # the week's contact sheet's key in the store
    held: list[str] = []  # kept off the public prefix by the QA gate (under held/)
    qa: dict[str, str] = {}  # key -> the QA gate's decision (score) for this run's images
    approval: ApprovalOutcome | None = None
    catalogue_problems: list[str] = []  # catalogue rows left out (row, column, value, fix)


def resolve_store_url(url: str, base: Path | None = None) -> str:
    """Make a relative `file://` store URL absolute so every process writes to the same place."""
    return open_store(url, base_dir=base).describe()


class _Week(NamedTuple):
    bundle: CampaignBundle
    config: Settings
    engine: EngineSettings
    label: str  # ISO week, e.g. 2026-W48
    monday: date
    store: str  # absolute store URL


def _resolve_week(campaign: str, week: str | None, store: str | None, settings: str | None,
                  engine: EngineSettings | None) -> _Week:
    """A run's inputs resolved: configs loaded, the week (default: this week), the store URL."""
    bundle = load_campaign(campaign)
    config = load_settings(settings)
    label, monday = parse_week(week, datetime.now(ZoneInfo(bundle.campaign.timezone)).date())
    return _Week(bundle, config, engine or config.engine, label, monday,
                 resolve_store_url(store or config.store))


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"{Path(params.get('campaign', 'campaign')).stem} {params.get('week') or 'this-week'}"


@flow(name="weekly-campaign", flow_run_name=_run_name,
      task_runner=ThreadPoolTaskRunner(max_workers=TASK_THREADS))
def weekly_campaign(
    campaign: str,
    week: str | None = None,
    store: str | None = None,
    settings: str | None = None,
    engine: EngineSettings | None = None,
) -> CampaignSummary:
    """Generate, label and store every image of one campaign week (default: this week)."""
    logger = get_run_logger()
    bundle, config, engine, week_label, monday, store = _resolve_week(
        campaign, week, store, settings, engine)
    name = bundle.campaign.name
    gated = bundle.campaign.approval == "required"

    if bundle.brand.webhooks:
        redeliver_task(store)  # what earlier runs could not deliver goes first, with its own id

    # 1. Trends: the week's frozen selection, else stored (hourly) or fresh, ranked and filtered
    trends, trend_failures = load_week_trends_task(store, name, week_label), []
    if trends is None:
        trends_config = bundle.campaign.trends
        report: TrendReport | None = load_recent_trends_task(store, name, config.trends_max_age_s)
        if report is None:
            report = ingest_trends(trends_config.sources)
        ranked = rank_trends_task(report, bundle.brand.safety, trends_config.sensitive_terms, store,
                                  bundle.brand.slug, trends_config.history_days,
                                  weights=source_weights(trends_config.sources))
        for dropped in ranked.dropped:
            logger.info("trend dropped: %s (%s)", dropped.trend.title, dropped.reason)
        trends = ranked.trends[:len(bundle.campaign.days)]  # one per day
        trend_failures = [f"{f.source}: {f.reason}" for f in ranked.failures]
        save_week_trends_task(store, name, week_label, trends)
        record_trends_task(store, bundle.brand.slug, trends)

    # 2. Template: one job per day (or catalogue SKU) x format x variant, keys fixed up front;
    #    images an earlier run left in the local spool are uploaded first, so they count as
    #    done, never remade. A bad catalogue row is reported; the other rows still run.
    catalogue = read_catalogue_task(bundle) if bundle.campaign.catalogue else None
    catalogue_problems = [str(problem) for problem in catalogue.problems] if catalogue else []
    for problem in catalogue_problems:
        logger.error("catalogue row left out: %s", problem)
    jobs = plan_week_task(bundle, week_label, monday, trends, engine, PENDING if gated else "",
                          catalogue=catalogue)
    retries = upload_retries()  # rides out a short S3 outage (ZPIPE_UPLOAD_PATIENCE_S)
    recovered = recover_spool_task.with_options(**retries)(store)
    from_spool = [job.key for job in jobs if job.key in recovered.uploaded]
    todo = find_missing_task(store, jobs)
    logger.info("%s %s: %d images planned, %d already in %s (%d of them from the local spool)",
                name, week_label, len(jobs), len(jobs) - len(todo), store, len(from_spool))
    emit(ProgressEvent("planned", total=len(jobs)))
    emit(ProgressEvent("skipped", count=len(jobs) - len(todo)))
    progress = RunProgress(f"{name}-{week_label}-progress".lower(), len(jobs),
                           f"Images of {name} {week_label} done")
    progress.advance(len(jobs) - len(todo))

    # 3. Generate in batches; label and upload each batch while the next one generates: on
    #    resident workers both happen there (the flow hands batches over and collects what
    #    was published), in-process the publishing runs in this process's task threads
    on_workers = config.generation == "workers"
    batches = (handovers(todo, engine.max_batch) if on_workers and todo
               else chunks(todo, engine.max_batch))
    timings: dict[str, dict[str, float]] = {}  # key -> generation timings, for the run's table
    looked: dict[str, StoredLook] = {}  # images the workers read back (for the contact sheet)
    outcomes = _make_and_publish(batches, engine, on_workers, store, bundle, config,
                                 progress, timings, looked)

    # 4b. The QA gate sent some back (drawn text misread): make them again with the next seed
    retries = [retry for _, outcome in outcomes for retry in outcome.retry]
    while retries:
        logger.info("QA: %d image(s) made again with the next seed", len(retries))
        again = _make_and_publish(chunks([retry.job for retry in retries], engine.max_batch), engine,
                                  on_workers, store, bundle, config, None, timings, looked,
                                  attempts={retry.job.key: retry.attempts for retry in retries})
        outcomes += again
        retries = [retry for _, outcome in again for retry in outcome.retry]

    created, existing, failed, held, held_keys, causes = [], [], [], [], [], {}
    qa: dict[str, str] = {}  # key -> the QA gate's decision and score, for the UI table
    for _, outcome in outcomes:
        for image in outcome.held:
            held.append(image.key)
            held_keys.append(image.held_key)
            logger.warning("held by QA: %s under %s: %s", image.key, image.held_key,
                           "; ".join(image.reasons))
        for failure in outcome.failed:
            failed.append(failure.key)
            causes.setdefault(failure.kind, failure.message)
            logger.error("failed: %s: %s: %s", failure.key, failure.kind, failure.message)
            emit(ProgressEvent("failed", detail=failure.key))
        for image in outcome.published:
            (created if image.created else existing).append(image.key)
            if image.qa_decision:
                qa[image.key] = image.qa_decision + (
                    f" ({image.qa_score:.2f})" if image.qa_score is not None else "")
            emit(ProgressEvent("published", detail=image.key))
    todo_keys = {job.key for job in todo}  # (comparing jobs took seconds at 1,000 images)
    existing += [job.key for job in jobs if job.key not in todo_keys and job.key not in from_spool]
    summary = CampaignSummary(
        campaign=name, week=week_label, store=store, planned=len(jobs), created=created,
        existing=existing, failed=failed, held=held, qa=qa,
        trend_failures=trend_failures, from_spool=from_spool,
        catalogue_problems=catalogue_problems)
    announce_held(store, held_keys, f"{name} {week_label}")  # a reviewer's form: review-held-images
    run_id = str(FlowRunContext.get().flow_run.id)
    hooks = bundle.brand.webhooks
    if held_keys and hooks:
        notify_task(store, hooks, "image.held", f"{run_id}/held",
                    {"brand": bundle.brand.slug, "campaign": name, "week": week_label, "store": store,
                     "held": held_keys})

    # 5. Report: the week's contact sheet in the store; in the UI a table and a thumbnail gallery
    sheet = write_contact_sheet_task(store, jobs, bundle.campaign.days, failed, looked)
    summary.contact_sheet = sheet.key if sheet else None
    _publish_artifacts(summary, jobs, timings, sheet)
    logger.info("%d new, %d from the local spool, %d already there, %d failed", len(created),
                len(from_spool), len(existing), len(failed))
    if hooks:  # the brand's own systems hear that the week is done (or how it fell short)
        notify_task(store, hooks, "campaign.week_finished", run_id, {
            "brand": bundle.brand.slug, "campaign": name, "week": week_label, "store": store,
            "flow_run_id": run_id, "planned": len(jobs), "created": len(created),
            "already_there": len(existing), "from_spool": len(from_spool), "failed": failed,
            "held": held_keys, "contact_sheet": summary.contact_sheet,
            "awaiting_review": gated})
    if failed:
        raise RuntimeError(_failure_message(failed, len(todo), causes, Spool.for_store(store)))

    # 6. Approval gate: wait for a reviewer, then publish or delete
    if gated:
        pending_store = store_at(store)  # finished images still waiting for a decision
        pending = [job.key for job in jobs if pending_store.exists(job.sidecar_key)]
        if pending:
            decision = wait_for_review(store, name, week_label, pending,
                                       bundle.campaign.approval_timeout_s)
            summary.approval = apply_decision_task(store, pending, decision,
                                                   run_id)
            logger.info("review: %s by %s: %d published, %d rejected", summary.approval.reason,
                        summary.approval.reviewer, len(summary.approval.published),
                        len(summary.approval.rejected))
    return summary


def _make_and_publish(batches: list[list[ImageJob]], engine: EngineSettings, on_workers: bool,
                      store: str, bundle: CampaignBundle, config: Settings,
                      progress: RunProgress | None, timings: dict[str, dict[str, float]],
                      looked: dict[str, StoredLook],
                      attempts: dict[str, list[QAAttempt]] | None = None,
                      ) -> list[tuple[list[ImageJob], BatchPublished]]:
    """Generate and publish `batches`, each batch with what publishing did to it, in order.

    One image failing does not lose the others: a batch whose publishing raised (spool full,
    a bug) comes back with every image failed, and the run reports them.
    """
    outcomes: list[tuple[list[ImageJob], BatchPublished]] = []
    if on_workers:
        for batch, made in make_on_workers(batches, engine, store, bundle.brand, config.qa, attempts):
            emit(ProgressEvent("generated", count=len(batch)))
            timings.update(made.timings)
            looked.update(made.looked)
            outcomes.append((batch, made.outcome))
            if progress is not None:
                progress.advance(len(batch))
        return outcomes
    published: list[tuple[list[ImageJob], PrefectFuture]] = []
    for batch, images in generate_batches(batches, engine, False, GENERATION_LOOKAHEAD):
        emit(ProgressEvent("generated", count=len(batch)))
        timings.update((job.key, dict(result.timings)) for job, result in zip(batch, images, strict=True))
        published.append((batch, publish_batch_task.submit(store, batch, images, bundle.brand, config.qa,
                                                           attempts)))
        if progress is not None:
            progress.advance_done(published)
    batch_of = {id(future): batch for batch, future in published}
    done: dict[int, BatchPublished] = {}
    for future in as_completed([future for _, future in published]):
        try:
            done[id(future)] = future.result()
        except Exception as exc:  # the whole batch (spool full, a bug): report, keep going
            done[id(future)] = BatchPublished(published=[], failed=[
                PublishFailure(key=job.key, kind=type(exc).__name__, message=str(exc))
                for job in batch_of[id(future)]])
        if progress is not None:
            progress.finish(batch_of[id(future)], future)  # from the result: a state can lag
    return [(batch, done[id(future)]) for batch, future in published]


def finished_week(campaign: str, week: str | None = None, store: str | None = None,
                  settings: str | None = None,
                  engine: EngineSettings | None = None) -> CampaignSummary | None:
    """The summary of a week an earlier run already finished, found without running anything.

    The flow's own first steps (frozen trends, plan, one store listing) with plain functions:
    no Prefect API, no model load. None when there may be work: the week was never planned,
    the local spool holds images to upload, an image is missing, or a review gate waits.
    """
    bundle, _, engine, week_label, monday, store_url = _resolve_week(
        campaign, week, store, settings, engine)
    if bundle.campaign.approval == "required":  # the gate decides, even with every image made
        return None
    name = bundle.campaign.name
    object_store = store_at(store_url)
    trends = load_week_trends(object_store, name, week_label)
    if trends is None or Spool.for_store(store_url).committed():
        return None
    catalogue = read_catalogue(bundle)
    jobs = plan_week(bundle, week_label, monday, trends, engine, brand_fingerprint(bundle),
                     catalogue=catalogue)
    sheet = sheet_key(jobs[0].brand, jobs[0].campaign, jobs[0].week) if jobs else None
    if find_missing(object_store, jobs) or (sheet and not object_store.exists(sheet)):
        return None
    return CampaignSummary(campaign=name, week=week_label, store=store_url, planned=len(jobs),
                           created=[], existing=[job.key for job in jobs], failed=[],
                           trend_failures=[], contact_sheet=sheet,
                           catalogue_problems=[str(p) for p in catalogue.problems] if catalogue else [])


def _failure_message(failed: list[str], attempted: int, causes: dict[str, str],
                     spool: Spool) -> str:
    """What went wrong (first error of each kind), what was kept, and what to do."""
    kept = set(failed) & set(spool.committed())
    lines = [f"{len(failed)} of {attempted} images failed; rerun the same week to finish them."]
    if kept:
        lines.append(f"{len(kept)} of them are finished and kept in the local spool {spool.dir}: "
                     "the next run uploads them first, without making them again.")
    lines += [f"{kind}: {message}" for kind, message in causes.items()]
    lines.append(f"Failed: {', '.join(failed[:5])}" + (" ..." if len(failed) > 5 else ""))
    return "\n".join(lines)


def _publish_artifacts(summary: CampaignSummary, jobs: list[ImageJob],
                       timings: dict[str, dict[str, float]], sheet: ContactSheet | None) -> None:
    store = store_at(summary.store)
    status = {}
    rows = []
    failed, held, created, from_spool = (set(summary.failed), set(summary.held), set(summary.created),
                                         set(summary.from_spool))  # (lists: 1,000 x 1,000 compares)
    for job in jobs:
        made = timings.get(job.key, {})
        status[job.key] = ("failed" if job.key in failed else "held by QA" if job.key in held
                           else "new" if job.key in created
                           else "from spool" if job.key in from_spool else "already there")
        rows.append({
            "day": f"{job.weekday} {job.date}", "format": job.format, "variant": job.variant,
            "template": f"{job.prompt.template}@{job.prompt.version}", "seed": job.seed,
            "key": job.key, "status": status[job.key], "qa": summary.qa.get(job.key, ""),
            "generate_s": round(made.get("image_s", 0.0), 3),
            "prompt": job.prompt.text[:160]})
    slug = summary.campaign.lower()
    create_table_artifact(key=f"{slug}-images", table=rows,
                          description=f"{summary.campaign} {summary.week}: every image")
    lines = [f"# {summary.campaign} · {summary.week}", "",
             f"Store `{summary.store}`: {len(summary.created)} new, {len(summary.from_spool)} "
             f"from the local spool, {len(summary.existing)} already there, "
             f"{len(summary.failed)} failed.", ""]
    if sheet is None:
        lines += ["No contact sheet this run (see the run's log).", ""]
    elif isinstance(store, S3Store):  # the page embeds its thumbnails: a presigned URL shows it
        lines += [f"Contact sheet: [`{sheet.key}`]({store.url(sheet.key, GALLERY_URL_TTL_S)}) "
                  "(link valid 7 days).", ""]
    else:  # the UI cannot open file:// links: copy the path into the browser
        lines += [f"Contact sheet: `{store.url(sheet.key)}`", ""]
    if sheet is not None:
        # S3: a presigned link to each full image; a local store's file:// links do not open from the UI
        link = ((lambda key: store.url(key, expires_s=GALLERY_URL_TTL_S))
                if isinstance(store, S3Store) else None)
        captions = {cell.job.key: status[cell.job.key] if cell.place == "stored"
                    else f"{status[cell.job.key]} · {cell.status}" for cell in sheet.cells}
        lines.append(gallery_markdown(sheet.cells, [], link, captions))
        lines.append("")
    if summary.catalogue_problems:
        lines += ["Catalogue rows left out (fix them and rerun: the other rows' images are kept):",
                  *[f"- {p}" for p in summary.catalogue_problems], ""]
    if summary.trend_failures:
        lines += ["Trend sources skipped:", *[f"- {f}" for f in summary.trend_failures]]
    create_markdown_artifact(key=f"{slug}-gallery", markdown="\n".join(lines),
                             description=f"{summary.campaign} {summary.week} gallery")
