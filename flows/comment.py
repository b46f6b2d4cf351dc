"""The comment-reply flow: a comment the intake accepted -> one labelled reply image in S3."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.campaign import resolve_store_url
from tasks.config import find_brand, load_settings
from tasks.generate import generate_batch, generate_on_worker
from tasks.publish import label_job_task, publish_task
from tasks.reply import finish_reply_task, plan_reply_task, start_reply_task


def _run_name() -> str:
    return f"reply {flow_run.parameters.get('comment_id', '?')}"


@flow(name="comment-reply", flow_run_name=_run_name)
def comment_reply(comment_id: str, brand: str, brands_dir: str = "configs/brands",
                  store: str | None = None, settings: str | None = None) -> str:
    """Answer one comment with an image; the ledger records running -> done | failed."""
    logger = get_run_logger()
    config = load_settings(settings)
    store = resolve_store_url(store or config.store)
    comment = start_reply_task(store, comment_id, str(flow_run.id))
    try:
        brand_config = find_brand(brands_dir, brand)

        # 1. Template: the brand's reply template with the comment's keywords (data only)
        job = plan_reply_task(brand_config, comment, config.engine)

        # 2. Generate on a resident worker, or here when no workers run
        if config.generation == "workers":
            (result,) = generate_on_worker.delay([job], config.engine).result()
        else:
            (result,) = generate_batch([job], config.engine)

        # 3. Label and upload, then tell the status endpoint
        labelled = label_job_task(job, result, brand_config)
        image = publish_task(store, job, result, labelled)
    except Exception as exc:  # whatever failed, the commenter's status must say so
        finish_reply_task(store, comment_id, None, f"{type(exc).__name__}: {exc}")
        raise
    finish_reply_task(store, comment_id, image.key)
    logger.info("comment %s answered with %s", comment_id, image.key)
    return image.key
