"""Templating stage: a campaign week -> one `ImageJob` per day x format x variant.

Everything about an image is decided here, before any model work: its prompt, seed,
size and object key. The key ends in a hash of every input that changes the pixels or
the labels, so the same week planned again gives the same keys, and a rerun finds its
images already in the store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import date, timedelta

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from tasks.config import WEEKDAYS, CampaignBundle, EngineSettings
from tasks.prompts import RenderedPrompt, render_prompt
from tasks.trends import Trend
from tasks.watermark import OutputSpec
from zengine import ModelSource, derive_seed, size_for

TURBO_STEPS = 8  # Z-Image-Turbo is distilled to 8 steps (8 transformer forwards)

WEEKDAY_ZH = {"mon": "周一", "tue": "周二", "wed": "周三", "thu": "周四", "fri": "周五",
              "sat": "周六", "sun": "周日"}
WEEKDAY_EN = {"mon": "Monday", "tue": "Tuesday", "wed": "Wednesday", "thu": "Thursday",
              "fri": "Friday", "sat": "Saturday", "sun": "Sunday"}


class ImageJob(BaseModel):
    """Everything needed to make, label and store one image: small, serialisable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    brand: str
    campaign: str
    week: str
    weekday: str
    date: date
    format: str
    variant: int
    width: int
    height: int
    seed: int
    steps: int
    prompt: RenderedPrompt
    trend: str | None
    output: OutputSpec
    model_id: str
    revision: str
    content_id: str
    key: str

    @property
    def sidecar_key(self) -> str:
        return f"{self.key}.json"

    @property
    def label(self) -> str:
        return f"{self.weekday} {self.format} v{self.variant}"


def model_identity(engine: EngineSettings) -> tuple[str, str]:
    """(model id, revision) that the engine will report for these settings."""
    source = ModelSource(model=engine.model, revision=engine.revision)
    return source.model_id, source.revision_label


def _content_id(fields: dict) -> str:
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def plan_week(
    bundle: CampaignBundle,
    week: str,
    monday: date,
    trends: Sequence[Trend],
    engine: EngineSettings,
    brand_fingerprint: str,
    key_prefix: str = "",
) -> list[ImageJob]:
    """Render every prompt of the week and fix each image's seed, size and key."""
    campaign, brand, template = bundle.campaign, bundle.brand, bundle.library.get(
        bundle.campaign.template)
    model_id, revision = model_identity(engine)
    brand_vars = {
        "name": brand.name,
        "style_zh": brand.style.zh,
        "style_en": brand.style.en,
        "palette": list(brand.colours.values()),
    }
    jobs: list[ImageJob] = []
    for index, weekday in enumerate(WEEKDAYS):
        theme = campaign.days.get(weekday)
        if theme is None:
            continue
        day = monday + timedelta(days=index)
        trend = trends[index % len(trends)] if trends else None
        for fmt in campaign.formats:
            width, height = size_for(fmt, engine.preview_scale)
            for variant in range(1, campaign.variants + 1):
                variables = {
                    "theme": {"zh": theme.zh, "en": theme.en},
                    "brand": brand_vars,
                    "day": {"weekday": weekday, "date": day.isoformat(),
                            "weekday_zh": WEEKDAY_ZH[weekday], "weekday_en": WEEKDAY_EN[weekday]},
                    "trend": None if trend is None else {
                        "title": trend.title, "source": trend.source, "score": trend.score},
                    "format": fmt,
                    "variant": variant,
                }
                prompt = render_prompt(template, variables, campaign.language)
                seed = derive_seed(campaign.name, day.isoformat(), fmt, variant)
                content_id = _content_id({
                    "prompt": prompt.text, "template": prompt.template, "version": prompt.version,
                    "seed": seed, "size": [width, height], "steps": TURBO_STEPS,
                    "model": model_id, "revision": revision,
                    "output": campaign.output.model_dump(), "brand": brand_fingerprint,
                })
                key = (f"{key_prefix}{brand.slug}/{campaign.name}/{week}/{weekday}/"
                       f"{fmt.replace(':', 'x')}-v{variant}-{content_id}.{campaign.output.ext}")
                jobs.append(ImageJob(
                    brand=brand.slug, campaign=campaign.name, week=week, weekday=weekday,
                    date=day, format=fmt, variant=variant, width=width, height=height,
                    seed=seed, steps=TURBO_STEPS, prompt=prompt,
                    trend=None if trend is None else trend.title, output=campaign.output,
                    model_id=model_id, revision=revision, content_id=content_id, key=key,
                ))
    return jobs


def brand_fingerprint(bundle: CampaignBundle) -> str:
    """Hash of everything in the brand that changes the labelled bytes (incl. the logo file)."""
    digest = hashlib.sha256(bundle.brand.model_dump_json(exclude={"logo"}).encode())
    if bundle.brand.logo is not None:
        digest.update(bundle.brand.logo.model_dump_json(exclude={"path"}).encode())
        with open(bundle.brand.logo.path, "rb") as fh:
            digest.update(hashlib.sha256(fh.read()).digest())
    return digest.hexdigest()[:16]


@task(name="plan-week", cache_policy=NO_CACHE)
def plan_week_task(
    bundle: CampaignBundle, week: str, monday: date, trends: list[Trend], engine: EngineSettings,
    key_prefix: str = "",
) -> list[ImageJob]:
    """Render the week's prompts into image jobs (templating stage)."""
    return plan_week(bundle, week, monday, trends, engine, brand_fingerprint(bundle), key_prefix)
