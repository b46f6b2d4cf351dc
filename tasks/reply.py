"""Comment replies: a ledger record -> one image job from the brand's reply template.

The comment's words reach the prompt only as keywords passed to the sandboxed template as
data; they are never template code, and never instructions or lexicon terms (filtered again
here, whatever the ledger record says).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.comments import CommentLedger, CommentState, drawable_keywords
from tasks.config import WEEKDAYS, BrandConfig, EngineSettings, load_library
from tasks.plan import TURBO_STEPS, ImageJob, _content_id, model_identity
from tasks.prompts import render_prompt
from tasks.storage import open_store
from zengine import derive_seed, size_for

REPLY_CAMPAIGN = "comments"


def plan_reply(brand: BrandConfig, comment: CommentState, engine: EngineSettings,
               now: datetime | None = None) -> ImageJob:
    """The one image that answers a comment: prompt, seed, size and key fixed up front.

    The key's date is the day the comment was received (not today), so every run for one
    comment, however late or repeated, plans the same key and publishes it at most once.
    """
    policy = brand.replies
    template = load_library(policy.prompts).get(policy.template)
    variables = {
        "brand": {"name": brand.name, "style_zh": brand.style.zh, "style_en": brand.style.en,
                  "palette": list(brand.colours.values())},
        # the intake already filtered them; filter again: a record may predate the lexicon
        "comment": {"keywords": drawable_keywords(comment.keywords)},
        "format": policy.format,
    }
    prompt = render_prompt(template, variables, policy.language)
    width, height = size_for(policy.format, engine.preview_scale)
    seed = derive_seed(brand.slug, REPLY_CAMPAIGN, comment.id)
    model_id, revision = model_identity(engine)
    content_id = _content_id({
        "prompt": prompt.text, "template": prompt.template, "version": prompt.version,
        "seed": seed, "size": [width, height], "steps": TURBO_STEPS, "model": model_id,
        "revision": revision, "output": policy.output.model_dump(),
        "label": brand.label.model_dump(), "comment": comment.id,
        "loras": [(Path(lora.path).name, lora.weight) for lora in brand.loras]})
    day = (now or comment.received_at).date()
    year, week, weekday = day.isocalendar()
    key = (f"{brand.slug}/{REPLY_CAMPAIGN}/{day.isoformat()}/"
           f"{comment.id}-{content_id}.{policy.output.ext}")
    return ImageJob(
        brand=brand.slug, campaign=REPLY_CAMPAIGN, week=f"{year}-W{week:02d}",
        weekday=WEEKDAYS[weekday - 1], date=day, format=policy.format, variant=1, width=width,
        height=height, seed=seed, steps=TURBO_STEPS, prompt=prompt, trend=None,
        output=policy.output, model_id=model_id, revision=revision, content_id=content_id, key=key,
        loras=[(lora.path, lora.weight) for lora in brand.loras])


def flow_run_is_active(flow_run_id: str) -> bool:
    """True while the Prefect flow run `flow_run_id` exists and has not finished."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        run_id = UUID(flow_run_id)
    except ValueError:  # not a Prefect run id: nothing is answering under it
        return False
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(run_id)
        except ObjectNotFound:
            return False
    return run.state is not None and not run.state.is_final()


@task(name="start-reply", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def start_reply_task(store_url: str, comment_id: str, flow_run_id: str) -> tuple[CommentState, bool]:
    """Claim the comment for this flow run: (record, True) if this run answers it, else who does."""
    return CommentLedger(open_store(store_url)).start(comment_id, flow_run_id, flow_run_is_active)


@task(name="finish-reply", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def finish_reply_task(store_url: str, comment_id: str, image_key: str | None,
                      reason: str | None = None, held: bool = False) -> CommentState:
    """Record the outcome for the status endpoint: done with the image key, held (by the QA
    gate, under `held/`: a reviewer decides, `reason` says why) or failed."""
    ledger = CommentLedger(open_store(store_url))
    if image_key is None:
        return ledger.update(comment_id, state="failed", reason=reason or "unknown error")
    if held:
        return ledger.update(comment_id, state="held", image_key=image_key,
                             reason=reason or "held by the QA gate for a reviewer")
    return ledger.update(comment_id, state="done", image_key=image_key, reason=None)


@task(name="plan-reply", cache_policy=NO_CACHE)
def plan_reply_task(brand: BrandConfig, comment: CommentState, engine: EngineSettings) -> ImageJob:
    """Render the brand's reply template with the comment's keywords (templating stage)."""
    return plan_reply(brand, comment, engine)
