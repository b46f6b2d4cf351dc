"""Publishing steps: what is already stored, label + inspect + spool + upload, spool recovery."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from tasks.config.schema import BrandConfig
from tasks.content.plan import ImageJob
from tasks.core.errors import StoreError
from tasks.prompts.templates import BilingualText
from tasks.publish.batch import (
    UPLOAD_PATIENCE_S,
    BatchPublished,
    SpoolRecovery,
    find_missing,
    publish_batch,
    recover_spool,
    upload_patience_s,
    upload_retries,
)
from tasks.publish.contact_sheet import ContactSheet, StoredLook, build_contact_sheet, write_sheet
from tasks.qa import QAAttempt, QASettings
from tasks.steps.policies import NEVER_CACHE, STORE_RETRY
from tasks.store.objects import store_at
from tasks.store.spool import Spool, SpoolError
from zengine import GenerationResult


def retry_unless_spool_fails(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: a full or unwritable spool needs a person, not another try."""
    try:
        state.result()
    except SpoolError:
        return False
    except Exception:  # any other failure (S3 unreachable, ...) may pass: retry
        return True
    return True


@task(name="find-missing", cache_policy=NEVER_CACHE, **STORE_RETRY)
def find_missing_task(store_url: str, jobs: list[ImageJob]) -> list[ImageJob]:
    """Skip jobs already published by an earlier run of the same week."""
    return find_missing(store_at(store_url), jobs)


def _batch_name() -> str:
    from prefect.runtime import task_run

    jobs = task_run.parameters.get("jobs") or []
    if not jobs:
        return "publish"
    first = jobs[0]
    more = f" +{len(jobs) - 1}" if len(jobs) > 1 else ""
    return f"publish {first.weekday}-{first.format}-v{first.variant}{more}"


@task(name="publish-batch", task_run_name=_batch_name, cache_policy=NEVER_CACHE, persist_result=False)
def publish_batch_task(store_url: str, jobs: list[ImageJob], results: list[GenerationResult],
                       brand: BrandConfig, qa: QASettings | None = None,
                       attempts: dict[str, list[QAAttempt]] | None = None) -> BatchPublished:
    """Label, inspect (QA gate), spool and upload one generated batch.

    Images that fail come back in `failed` (the flow logs and reports each one), images the
    gate held in `held`, jobs to make again with the next seed in `retry` (resubmit them with
    `attempts={r.job.key: r.attempts for r in retry}`); waits for S3 and the gate's holds and
    retries are logged here as warnings, on this task run.
    """
    return publish_batch(store_at(store_url), jobs, results, brand, Spool.for_store(store_url),
                         upload_patience_s(), get_run_logger(), qa=qa, attempts=attempts)


@task(name="recover-spool", cache_policy=NEVER_CACHE, retry_condition_fn=retry_unless_spool_fails,
      **upload_retries(UPLOAD_PATIENCE_S))
def recover_spool_task(store_url: str) -> SpoolRecovery:
    """Upload the images earlier runs left in the local spool, before anything is planned anew."""
    logger = get_run_logger()
    recovery = recover_spool(store_at(store_url), Spool.for_store(store_url))
    for line in recovery.discarded:
        logger.warning(line)
    if recovery.uploaded or recovery.already_stored:
        logger.info("%d images uploaded from the local spool %s (%d were already stored): left by "
                    "an earlier run, not made again", len(recovery.uploaded), recovery.spool,
                    len(recovery.already_stored))
    return recovery


@task(name="contact-sheet", cache_policy=NEVER_CACHE, persist_result=False)
def write_contact_sheet_task(store_url: str, jobs: list[ImageJob], themes: dict[str, BilingualText],
                             failed: list[str],
                             looked: dict[str, StoredLook] | None = None) -> ContactSheet | None:
    """Rebuild the week's contact sheet from the store and write it (None if the store failed).

    Best effort: a sheet the store cannot take is logged, never a reason to fail the run.
    """
    logger = get_run_logger()
    if not jobs:
        return None
    store = store_at(store_url)
    try:
        sheet = build_contact_sheet(store, jobs, themes, failed, looked)
        written = write_sheet(store, sheet)
    except StoreError as exc:
        logger.warning("contact sheet not updated: %s", exc)
        return None
    logger.info("contact sheet %s %s: %s", "written to" if written else "unchanged at",
                sheet.key, store_url)
    return sheet
