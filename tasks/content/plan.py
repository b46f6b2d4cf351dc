"""Templating stage: a campaign week -> one `ImageJob` per day x format x variant.

Everything about an image is decided here, before any model work: its prompt, seed,
size and object key. The key ends in a hash of every input that changes the pixels or
the labels, so the same week planned again gives the same keys, and a rerun finds its
images already in the store.

Per slot (day x format x variant), in order:
1. the day's festivals (tasks.prompts.calendar) and trend (the trends given cycle over the days; with
   none, e.g. when no trend fitted the brand, the day follows its own theme and `trend_note`
   says why);
2. the campaign's rules (tasks.prompts.rules): template switch, prompt additions, copy, or skip;
3. the variant's axis values (`variants.axes`, cycling) and the copy (rule > axis > day);
4. the template rendered with all of it; with `headline_overlay` the copy is typeset later
   (tasks.labels.overlay) instead of being asked of the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.config.catalogue import Catalogue, CatalogueProblem, Sku
from tasks.config.schema import (
    COLOUR_TABLE,
    STANDARD_AXES,
    WEEKDAYS,
    BrandConfig,
    CampaignBundle,
    DayTheme,
    EngineSettings,
)
from tasks.content.catalogue import read_catalogue
from tasks.content.identity import TURBO_STEPS, campaign_key, content_id, image_fields
from tasks.labels.product import ProductRef, ProductSpec, product_ref
from tasks.labels.watermark import OutputSpec
from tasks.prompts.calendar import festivals_on
from tasks.prompts.rules import Slot, apply_rules, trend_tags
from tasks.prompts.templates import RenderedPrompt, copy_variable, render_prompt
from tasks.trends.sources import Trend
from zengine import ModelSource, derive_seed, size_for

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
    festivals: list[dict[str, str]] = Field(default_factory=list)  # {key, zh, en, kind, date}
    rules: list[str] = Field(default_factory=list)  # names of the rules that fired, in order
    variant_axes: dict[str, dict[str, str]] = Field(default_factory=dict)  # axis -> {zh, en}
    copy_text: dict[str, str] | None = None  # the image's copy {zh, en}, as cleaned
    overlay_lines: list[str] = Field(default_factory=list)  # typeset by tasks.labels.overlay
    loras: list[tuple[str, float]] = Field(default_factory=list)  # brand style: (path, weight)
    trend_note: str | None = None  # why the image has no trend (it follows the day's theme)
    sku: str | None = None  # the catalogue row's SKU id (tasks.content.catalogue)
    product: ProductRef | None = None  # the real product kept in the picture (tasks.labels.product)

    @property
    def sidecar_key(self) -> str:
        return f"{self.key}.json"

    @property
    def row(self) -> str:
        """The contact sheet's row: the day, or the day and SKU of a catalogue image."""
        return self.weekday if self.sku is None else f"{self.weekday} {self.sku}"

    @property
    def label(self) -> str:
        return f"{self.row} {self.format} v{self.variant}"


def model_identity(engine: EngineSettings) -> tuple[str, str]:
    """(model id, revision) that the engine will report for these settings."""
    source = ModelSource(model=engine.model, revision=engine.revision)
    return source.model_id, source.revision_label


class SkippedSlot(BaseModel):
    """A day x format x variant that a rule with `skip: true` left out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weekday: str
    date: date
    format: str
    variant: int
    rules: list[str]  # the rules that fired; the last one skipped


class WeekPlan(BaseModel):
    """Every image of a week, and the slots that rules skipped."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[ImageJob]
    skipped: list[SkippedSlot] = Field(default_factory=list)
    catalogue_problems: list[CatalogueProblem] = Field(default_factory=list)  # rows left out


def plan_week(
    bundle: CampaignBundle,
    week: str,
    monday: date,
    trends: Sequence[Trend],
    engine: EngineSettings,
    brand_fingerprint: str,
    key_prefix: str = "",
    trend_note: str | None = None,
    catalogue: Catalogue | None = None,
) -> list[ImageJob]:
    """Render every prompt of the week and fix each image's seed, size and key."""
    return plan_week_slots(bundle, week, monday, trends, engine, brand_fingerprint, key_prefix,
                           trend_note, catalogue).jobs


def no_trend_note(brand: BrandConfig) -> str:
    """Why a day has no trend when the caller gave none and said nothing more."""
    fit = brand.safety.fit
    if fit is None:
        return "no trend this week: the day follows its own theme"
    return (f"no trend this week fits the brand's topics (relevance threshold {fit.threshold:.2f}), "
            "or none was found: the day follows its own theme")


def brand_variables(brand: BrandConfig) -> dict[str, Any]:
    """The `brand` template variable."""
    return {
        "name": brand.name,
        "style_zh": brand.style.zh,
        "style_en": brand.style.en,
        "palette": list(brand.colours.values()),
        "fragments": {name: text.model_dump() for name, text in brand.fragments.items()},
    }


def _theme_variable(theme: DayTheme, brand: BrandConfig, sku: Sku | None = None) -> dict[str, Any]:
    colour = None
    if sku is not None and sku.colour is not None:  # a catalogue row's colour wins
        colour = sku.as_variable()["colour"]
    elif theme.colour is not None:  # the loader checked the code is in the table
        colour = {"code": theme.colour,
                  **brand.mappings[COLOUR_TABLE][theme.colour].model_dump()}
    return {"zh": theme.zh, "en": theme.en, "colour": colour}


def _product_for(brand: BrandConfig, sku: Sku | None, fmt: str,
                 size: tuple[int, int]) -> ProductRef | None:
    """The product placed in one image: the SKU's cutout, else the brand's, else none."""
    spec = brand.product
    image, mask, declared = (sku.image, sku.mask, sku.declared_image) if sku else (None, None, None)
    if image is None and spec is not None and spec.image is not None:
        image, mask, declared = spec.image, spec.mask, spec.image
    if image is None:
        return None
    return product_ref(spec or ProductSpec(), image, mask, declared or image, fmt, size)


def _trend_variable(trend: Trend | None) -> dict[str, Any] | None:
    if trend is None:
        return None
    return {"title": trend.title, "source": trend.source, "score": trend.score,
            "tags": trend_tags(trend)}


def plan_week_slots(
    bundle: CampaignBundle,
    week: str,
    monday: date,
    trends: Sequence[Trend],
    engine: EngineSettings,
    brand_fingerprint: str,
    key_prefix: str = "",
    trend_note: str | None = None,
    catalogue: Catalogue | None = None,
) -> WeekPlan:
    """Plan the week: one job per day x format x variant that no rule skipped.

    `trend_note` says why there is no trend (e.g. the ranking's reasons); without trends and
    without a note, `no_trend_note` is recorded on every job. A campaign with a catalogue makes
    one job per SKU x format x variant on the SKU's day instead (`catalogue`: as read already,
    else read here); its bad rows are `catalogue_problems`.
    """
    campaign, brand, library = bundle.campaign, bundle.brand, bundle.library
    if catalogue is None and campaign.catalogue is not None:
        catalogue = read_catalogue(bundle)
    model_id, revision = model_identity(engine)
    languages = ("zh", "en") if campaign.language == "bilingual" else (campaign.language,)
    mapping = {table: {code: text.model_dump() for code, text in codes.items()}
               for table, codes in brand.mappings.items()}
    plan = WeekPlan(jobs=[], catalogue_problems=catalogue.problems if catalogue else [])
    for index, weekday in enumerate(WEEKDAYS):
        theme = campaign.days.get(weekday)
        if theme is None:
            continue
        # 1. The day: its date, festivals and trend
        day = monday + timedelta(days=index)
        festivals = festivals_on(day)
        trend = trends[index % len(trends)] if trends else None
        note = None if trend is not None else (trend_note or no_trend_note(brand))
        # a catalogue's SKUs posted this day (by id, never by row: keys survive reordering)
        entries: list[Sku | None] = ([None] if catalogue is None else
                                     sorted((s for s in catalogue.skus if s.day == weekday),
                                            key=lambda s: s.id))
        for sku, fmt in ((sku, fmt) for sku in entries for fmt in campaign.formats):
            width, height = size_for(fmt, engine.preview_scale)
            product = _product_for(brand, sku, fmt, (width, height))
            for variant in range(1, campaign.variants.count + 1):
                # 2. Rules
                slot = Slot(day=day, weekday=weekday, format=fmt, variant=variant,
                            festivals=festivals, trend=trend)
                outcome = apply_rules(campaign.rules, slot, campaign.template)
                if outcome.skip:
                    plan.skipped.append(SkippedSlot(weekday=weekday, date=day, format=fmt,
                                                    variant=variant, rules=outcome.fired))
                    continue
                template = library.get(outcome.template)

                # 3. Variant axes and copy
                axes = campaign.variants.axes_for(variant)
                sku_copy = sku.copy_text if sku else None
                copy = copy_variable(outcome.copy_text or axes.get("copy") or sku_copy
                                     or theme.copy_text, template)
                overlay = [copy[lang] for lang in languages
                           if copy and template.headline_overlay and copy[lang]]

                # 4. Render
                variables = {
                    "theme": _theme_variable(theme, brand, sku),
                    "sku": sku.as_variable() if sku else None,
                    "brand": brand_variables(brand),
                    "day": {"weekday": weekday, "date": day.isoformat(),
                            "weekday_zh": WEEKDAY_ZH[weekday], "weekday_en": WEEKDAY_EN[weekday]},
                    "trend": _trend_variable(trend),
                    "format": fmt,
                    "variant": variant,
                    "festivals": [f.as_variable() for f in festivals],
                    "festival": festivals[0].as_variable() if festivals else None,
                    "copy": None if overlay else copy,  # typeset text is not asked of the model
                    "headline_overlay": bool(overlay),
                    "axes": {name: None for name in STANDARD_AXES}
                            | {name: value.model_dump() for name, value in axes.items()},
                    "mapping": mapping,
                }
                prompt = render_prompt(template, variables, campaign.language, outcome.additions)
                seed = (derive_seed(campaign.name, day.isoformat(), fmt, variant) if sku is None
                        else derive_seed(campaign.name, day.isoformat(), "sku", sku.id, fmt, variant))
                fields = image_fields(prompt=prompt, seed=seed, size=(width, height), model=model_id,
                                      revision=revision, output=campaign.output.model_dump())
                fields["brand"] = brand_fingerprint
                if overlay:  # only then: keys of images without an overlay stay as they were
                    fields["overlay"] = {"lines": overlay, "style": brand.headline.model_dump()}
                if sku is not None:
                    fields["sku"] = sku.id
                if product is not None:  # the product's bytes and box, never its path
                    fields["product"] = {"sha256": product.sha256, "mask": product.mask_sha256,
                                         "box": list(product.box)}
                content = content_id(fields)
                key = campaign_key(prefix=key_prefix, brand=brand.slug, campaign=campaign.name,
                                   week=week, weekday=weekday, fmt=fmt, variant=variant,
                                   content=content, ext=campaign.output.ext,
                                   sku=sku.id if sku else None)
                plan.jobs.append(ImageJob(
                    brand=brand.slug, campaign=campaign.name, week=week, weekday=weekday,
                    date=day, format=fmt, variant=variant, width=width, height=height,
                    seed=seed, steps=TURBO_STEPS, prompt=prompt,
                    trend=None if trend is None else trend.title, output=campaign.output,
                    model_id=model_id, revision=revision, content_id=content, key=key,
                    festivals=variables["festivals"], rules=outcome.fired,
                    variant_axes={name: value.model_dump() for name, value in axes.items()},
                    copy_text=copy, overlay_lines=overlay,
                    loras=[(lora.path, lora.weight) for lora in brand.loras], trend_note=note,
                    sku=sku.id if sku else None, product=product,
                ))
    return plan


def brand_fingerprint(bundle: CampaignBundle) -> str:
    """Hash of everything in the brand that changes the labelled bytes (incl. the logo file).

    Files count by content, never by path, so a config tree can move (another checkout, a
    container) without changing any key. Fragments and mappings act through the prompt, the
    headline style through the content id's overlay fields, replies not at all on campaigns.
    """
    brand = bundle.brand
    exclude: dict[str, Any] = {"logo": True, "fragments": True, "mappings": True, "headline": True,
                               "replies": True, "label": {"font"}, "safety": True, "loras": True,
                               "topics": True,  # trend choice acts through the prompt
                               "product": True,  # through each job's content id (bytes + box)
                               "webhooks": True}  # who hears of the images, not what they are
    digest = hashlib.sha256(brand.model_dump_json(exclude=exclude).encode())
    for lora in brand.loras:  # adapters change the pixels: their bytes and weights count
        digest.update(f"lora:{lora.weight}".encode())
        root = Path(lora.path)
        for file in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if file.is_file():
                digest.update(hashlib.sha256(file.read_bytes()).digest())
    for spec, path in ((brand.logo, brand.logo.path if brand.logo else None), (None, brand.label.font)):
        if spec is not None:
            digest.update(spec.model_dump_json(exclude={"path"}).encode())
        if path is not None:
            with open(path, "rb") as fh:
                digest.update(hashlib.sha256(fh.read()).digest())
    return digest.hexdigest()[:16]
