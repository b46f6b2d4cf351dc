"""Comment replies: a ledger record -> one image job from the brand's reply template.

The comment's words reach the prompt only as keywords passed to the sandboxed template as
data; they are never template code, and never instructions or lexicon terms (filtered again
here, whatever the ledger record says).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from tasks.comments.ledger import CommentState, drawable_keywords, warm_keywords
from tasks.config.schema import WEEKDAYS, BrandConfig, EngineSettings, load_library
from tasks.content.identity import TURBO_STEPS, content_id, image_fields, reply_key
from tasks.content.plan import ImageJob, model_identity
from tasks.prompts.templates import render_prompt
from tasks.qa import QASettings, models
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
    fields = image_fields(prompt=prompt, seed=seed, size=(width, height), model=model_id,
                          revision=revision, output=policy.output.model_dump())
    fields |= {"label": brand.label.model_dump(), "comment": comment.id,
               "loras": [(Path(lora.path).name, lora.weight) for lora in brand.loras]}
    content = content_id(fields)
    day = (now or comment.received_at).date()
    year, week, weekday = day.isocalendar()
    key = reply_key(brand=brand.slug, campaign=REPLY_CAMPAIGN, day=day.isoformat(),
                    comment_id=comment.id, content=content, ext=policy.output.ext)
    return ImageJob(
        brand=brand.slug, campaign=REPLY_CAMPAIGN, week=f"{year}-W{week:02d}",
        weekday=WEEKDAYS[weekday - 1], date=day, format=policy.format, variant=1, width=width,
        height=height, seed=seed, steps=TURBO_STEPS, prompt=prompt, trend=None,
        output=policy.output, model_id=model_id, revision=revision, content_id=content, key=key,
        loras=[(lora.path, lora.weight) for lora in brand.loras])


def warm_up_replies(qa: QASettings) -> None:
    """Load, once per process, what answering a comment needs besides the engine: jieba's
    dictionaries and the lexicon (about 2 s on 2 cores), and the QA gate's NSFW model. A
    resident worker calls it at start, so that its first reply is as quick as the next."""
    warm_keywords()
    if qa.enabled and qa.nsfw.enabled:
        models.nudenet(qa.threads)
