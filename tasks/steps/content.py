"""Templating steps: prompts and the week's image jobs."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import task

from tasks.config.catalogue import Catalogue
from tasks.config.schema import CampaignBundle, EngineSettings
from tasks.content.catalogue import read_catalogue
from tasks.content.plan import ImageJob, brand_fingerprint, plan_week
from tasks.prompts.templates import Language, PromptTemplate, RenderedPrompt, render_prompt
from tasks.steps.policies import NEVER_CACHE
from tasks.trends.sources import Trend


@task(name="render-prompt")
def render_prompt_task(
    template: PromptTemplate, variables: dict[str, Any], language: Language = "zh"
) -> RenderedPrompt:
    """Render one prompt from a template and its variables."""
    return render_prompt(template, variables, language)


@task(name="plan-week", cache_policy=NEVER_CACHE)
def plan_week_task(
    bundle: CampaignBundle, week: str, monday: date, trends: list[Trend], engine: EngineSettings,
    key_prefix: str = "", trend_note: str | None = None, catalogue: Catalogue | None = None,
) -> list[ImageJob]:
    """Render the week's prompts into image jobs (templating stage)."""
    return plan_week(bundle, week, monday, trends, engine, brand_fingerprint(bundle), key_prefix,
                     trend_note, catalogue)


@task(name="read-catalogue", cache_policy=NEVER_CACHE, retries=1, retry_delay_seconds=5)
def read_catalogue_task(bundle: CampaignBundle) -> Catalogue | None:
    """Read the campaign's catalogue (one row per SKU); bad rows come back as problems."""
    return read_catalogue(bundle)
