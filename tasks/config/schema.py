"""Config files -> pydantic models: one loader, errors that name file, field and value.

Every YAML file under `configs/` declares its `kind` (brand, campaign, prompts, settings).
Relative paths inside a file (logo, brand, prompt library, trend files) are resolved
against that file's directory, so a config tree can be moved as a whole.
Secrets never live here: S3 credentials come from the environment (boto3's chain).
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.config.catalogue import CatalogueSource
from tasks.core.base import Slug, Strict
from tasks.core.errors import ConfigError, LabelError
from tasks.core.settings import env_raw
from tasks.core.yamlio import from_validation_error, read_yaml
from tasks.labels.overlay import HeadlineStyle
from tasks.labels.product import ProductSpec, resolve_product_spec
from tasks.labels.watermark import LabelSpec, LogoSpec, OutputSpec, check_logo
from tasks.notify.webhooks import WebhookSpec
from tasks.prompts.rules import Rule
from tasks.prompts.templates import BilingualText, PromptLibrary, PromptTemplate
from tasks.qa.settings import QASettings
from tasks.trends.ranking import SafetyPolicy
from tasks.trends.relevance import BrandFit, BrandTopics, TopicCategory
from tasks.trends.sources import SourceFile, TrendSource, load_source
from zengine.sizes import SIZE_PRESETS

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FORMATS = tuple(SIZE_PRESETS)  # the engine's size presets: one table, zengine's
HEX_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")  # usable as `brand.fragments.<name>` in templates
STANDARD_AXES = ("composition", "lighting", "palette", "copy")
COLOUR_TABLE = "colours"  # the mapping table that day themes' `colour:` codes are looked up in


# -- brand --------------------------------------------------------------------------


class Producer(Strict):
    """Who is named as content producer in the implicit (TC260) label."""

    name: str = Field(min_length=1)
    id: str = Field(min_length=1, description="organisation code written as ContentProducer")


def _check_names(what: str, names: Any) -> None:
    for name in names:
        if not NAME.fullmatch(str(name)):
            raise ValueError(f"{what} name {name!r} must be lower-case letters, digits and '_', "
                             "starting with a letter (templates read it as a.<name>)")


class ReplyPolicy(Strict):
    """How a brand answers user comments with a reply image (the comment-reply flow)."""

    prompts: str = Field(default="../prompts/library.yaml",
                         description="prompt library, relative to the brand file")
    template: str = "trend-reply"
    language: Literal["zh", "en", "bilingual"] = "bilingual"
    format: str = "9:16"
    output: OutputSpec = Field(default_factory=OutputSpec)
    max_chars: int = Field(default=280, ge=1, le=5000, description="longest comment accepted")
    blocklist: list[str] = Field(default_factory=list,
                                 description="comments containing any of these are rejected")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in FORMATS:
            raise ValueError(f"unknown format {value!r}; use one of {', '.join(FORMATS)}")
        return value


class LoraRef(Strict):
    """A brand-style LoRA adapter for Z-Image-Turbo: a local file, and its strength."""

    path: str = Field(description=".safetensors file or directory, relative to the brand file")
    weight: float = Field(default=1.0, ge=-2.0, le=2.0)


class BrandConfig(Strict):
    kind: Literal["brand"] = "brand"
    slug: Slug
    name: str = Field(min_length=1)
    colours: dict[str, str] = Field(default_factory=dict, description="name -> #RRGGBB")
    style: BilingualText
    logo: LogoSpec | None = None
    label: LabelSpec = Field(default_factory=LabelSpec)
    producer: Producer
    replies: ReplyPolicy = Field(default_factory=ReplyPolicy)
    safety: SafetyPolicy = Field(default_factory=SafetyPolicy,
                                 description="trends with these terms or topics are never used")
    topics: BrandTopics | None = Field(
        default=None, description="brand fit: only trends about these topics are used "
                                  "(tasks/trends/relevance.py); none: every safe trend")
    loras: list[LoraRef] = Field(default_factory=list, description="brand-style LoRA adapters")
    fragments: dict[str, BilingualText] = Field(
        default_factory=dict, description="named {zh, en} style snippets: brand.fragments.<name>")
    mappings: dict[str, dict[str, BilingualText]] = Field(
        default_factory=dict, description="table -> code -> {zh, en}, e.g. colours.R01")
    headline: HeadlineStyle = Field(default_factory=HeadlineStyle,
                                    description="how headline overlays are typeset")
    webhooks: list[WebhookSpec] = Field(
        default_factory=list, description="signed POSTs to the brand's own systems when a week "
                                          "finishes, an image is held, a comment is answered")
    product: ProductSpec | None = Field(
        default=None, description="the real product kept in every image (tasks/labels/product.py): "
                                  "default cutout, layout per format")

    @field_validator("safety", mode="before")
    @classmethod
    def _fit_comes_from_topics(cls, value: Any) -> Any:
        if isinstance(value, dict) and "fit" in value:
            raise ValueError("`safety.fit` is filled by the loader from the brand's `topics:`; "
                             "declare `topics:` (categories, keywords, deny, threshold) instead")
        return value

    @field_validator("fragments")
    @classmethod
    def _fragment_names(cls, value: dict[str, BilingualText]) -> dict[str, BilingualText]:
        _check_names("fragment", value)
        return value

    @field_validator("mappings")
    @classmethod
    def _table_names(cls, value: dict[str, dict[str, BilingualText]]) -> dict[str, dict[str, BilingualText]]:
        _check_names("mapping table", value)
        for table, codes in value.items():
            if not codes:
                raise ValueError(f"mapping table {table!r} is empty; add codes or remove it")
        return value

    @field_validator("colours")
    @classmethod
    def _hex_colours(cls, value: dict[str, str]) -> dict[str, str]:
        for name, colour in value.items():
            if not HEX_COLOUR.fullmatch(colour):
                raise ValueError(f"colour {name!r} must be #RRGGBB (got {colour!r})")
        return value


# -- campaign -----------------------------------------------------------------------


class TrendsConfig(Strict):
    sources: list[TrendSource | str] = Field(
        default_factory=list, description="inline sources, or paths to configs/sources/*.yaml")
    sensitive_terms: str | None = Field(
        default="../safety/sensitive-terms.txt",
        description="shared sensitive-terms list (one per line), relative to this file")
    history_days: int = Field(default=14, ge=0, description="don't reuse a trend within N days")


class Schedule(Strict):
    """When a campaign runs by itself: a cron line in an IANA timezone."""

    cron: str = Field(description="five-field cron, e.g. '0 9 * * 1' = Mondays 09:00")
    timezone: str = "Asia/Shanghai"

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from prefect.client.schemas.schedules import CronSchedule  # Prefect's own cron rules

        try:
            if len(value.split()) != 5:
                raise ValueError
            CronSchedule(cron=value)
        except ValueError:
            raise ValueError(f"not a five-field cron line {value!r} (e.g. '0 9 * * 1')") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return _check_timezone(value)


class DayTheme(BilingualText):
    """A day's theme, optionally with its own copy and a product colour code."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    copy_text: BilingualText | None = Field(default=None, alias="copy",
                                            description="in-image copy for the day")
    colour: str | None = Field(default=None, description="a code in the brand's mappings.colours")


def _as_bilingual(value: Any) -> Any:
    return {"zh": value, "en": value} if isinstance(value, str) else value


class VariantsConfig(Strict):
    """A/B variants: `count` images per day x format; variant i takes the i-th value of each axis.

    Each axis is a list of {zh, en} values (or plain strings, used for both languages); the
    values cycle when an axis has fewer than `count`. Axis values are the template variable
    `axes.<name>`; `copy` values become the image's copy.
    """

    count: int = Field(default=1, ge=1, le=16)
    axes: dict[str, list[BilingualText]] = Field(default_factory=dict)

    @field_validator("axes", mode="before")
    @classmethod
    def _strings_are_bilingual(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {name: [_as_bilingual(v) for v in values] if isinstance(values, list) else values
                    for name, values in value.items()}
        return value

    @field_validator("axes")
    @classmethod
    def _distinct_values(cls, value: dict[str, list[BilingualText]]) -> dict[str, list[BilingualText]]:
        _check_names("axis", value)
        for name, values in value.items():
            if not values:
                raise ValueError(f"axis {name!r} has no values; list at least one")
            seen = [(v.zh, v.en) for v in values]
            if len(set(seen)) != len(seen):
                raise ValueError(f"axis {name!r} repeats a value: variants would not differ on it")
        return value

    def axes_for(self, variant: int) -> dict[str, BilingualText]:
        """The axis values of 1-based `variant` (cycling through each axis)."""
        return {name: values[(variant - 1) % len(values)] for name, values in self.axes.items()}


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA timezone {value!r} (e.g. Asia/Shanghai)") from None
    return value


class CampaignConfig(Strict):
    kind: Literal["campaign"] = "campaign"
    name: Slug
    brand: str = Field(description="path to the brand YAML, relative to this file")
    prompts: str = Field(description="path to the prompt library YAML, relative to this file")
    template: str = Field(min_length=1, description="template name in the prompt library")
    language: Literal["zh", "en", "bilingual"] = "bilingual"
    timezone: str = "Asia/Shanghai"
    formats: list[str] = Field(min_length=1)
    variants: VariantsConfig = Field(default_factory=VariantsConfig,
                                     description="an int, or {count, axes}")
    output: OutputSpec = Field(default_factory=OutputSpec)
    trends: TrendsConfig = Field(default_factory=TrendsConfig)
    days: dict[str, DayTheme] = Field(min_length=1, description="weekday -> theme")
    rules: list[Rule] = Field(default_factory=list, description="applied in order to every image")
    schedule: Schedule | None = Field(default=None, description="run by itself (zpipe serve)")
    approval: Literal["none", "required"] = "none"
    approval_timeout_s: int = Field(default=86400, ge=10, description="unanswered -> rejected")
    catalogue: CatalogueSource | None = Field(
        default=None, description="one image per SKU x format x variant (tasks/content/catalogue.py)")

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, value: list[str]) -> list[str]:
        for fmt in value:
            if fmt not in FORMATS:
                raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"formats repeat an entry: {value}")
        return value

    @field_validator("variants", mode="before")
    @classmethod
    def _count_alone(cls, value: Any) -> Any:
        return {"count": value} if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("rules")
    @classmethod
    def _rules_well_formed(cls, value: list[Rule]) -> list[Rule]:
        names = [rule.name for rule in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"rule name {name!r} is used twice; names are recorded per image")
        for rule in value:
            for fmt in rule.when.format:
                if fmt not in FORMATS:
                    raise ValueError(f"rule {rule.name!r}: unknown format {fmt!r}; use one of "
                                     f"{', '.join(FORMATS)}")
        return value

    @field_validator("days")
    @classmethod
    def _known_days(cls, value: dict[str, DayTheme]) -> dict[str, DayTheme]:
        for day in value:
            if day not in WEEKDAYS:
                raise ValueError(f"unknown weekday {day!r}; use one of {', '.join(WEEKDAYS)}")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return _check_timezone(value)


# -- settings -----------------------------------------------------------------------


class EngineSettings(Strict):
    """Which model runs and how big its images are. Hashable: one engine per settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(default="tiny", description="'tiny', a local directory, or owner/name")
    revision: str | None = Field(default=None, description="hub revision; required for hub ids")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    preview_scale: float = Field(default=1.0, gt=0, le=1.0, description="side scale of presets")
    max_batch: int = Field(default=4, ge=1, le=64)
    fast_path: Literal["auto", "on", "off"] = Field(
        default="auto", description="GPU speed-ups (attention backend, torch.compile, "
        "channels-last VAE), each probed at load: auto = on for CUDA, off on CPU")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs", "off"] = Field(
        default="default", description="torch.compile mode for the transformer's blocks when the "
        "fast path is on; off: run eagerly")
    attention_backends: tuple[str, ...] | None = Field(
        default=None, description="diffusers attention backends to try in order when the fast "
        "path is on (each kept only if a mixed-length batch matches its prompts run alone); "
        "default: zengine.fast.ATTENTION_ORDER")
    fp8: bool = Field(
        default=False, description="run the transformer's linear layers in float8 (torchao, "
        "`pip install 'zpipe[gpu]'`, an sm_89+ GPU). Off by default: judge its images on real "
        "weights before publishing with it")


class Settings(Strict):
    kind: Literal["settings"] = "settings"
    engine: EngineSettings = Field(default_factory=EngineSettings)
    store: str = Field(default="file://./zpipe-out", description="file:///dir or s3://bucket/prefix")
    generation: Literal["local", "workers"] = Field(
        default="local", description="local: in the flow's process; workers: `zpipe worker`s")
    trends_max_age_s: int = Field(default=7200, ge=0,
                                  description="use stored trends younger than this, else fetch")
    qa: QASettings = Field(default_factory=QASettings,
                           description="the gate before publishing: checks, thresholds, retries")


# Environment variables that override settings fields (tasks.core.settings declares them).
ENV_OVERRIDES = ("store", "generation")


# -- loading ------------------------------------------------------------------------

KINDS: dict[str, type[BaseModel]] = {
    "brand": BrandConfig,
    "campaign": CampaignConfig,
    "prompts": PromptLibrary,
    "settings": Settings,
    "source": SourceFile,  # configs/sources/*.yaml: one trend source (tasks.trends.sources.load_source)
    "topic": TopicCategory,  # configs/topics/*.yaml: one brand-fit category (tasks.trends.relevance)
}


def parse_config(path: Path, data: dict[str, Any], expect: str | None = None) -> BaseModel:
    """Validate a mapping already read from `path` into the model its `kind` names."""
    kind = data.get("kind")
    if kind not in KINDS:
        raise ConfigError(str(path), "kind", f"must be one of {', '.join(KINDS)}", kind)
    if expect and kind != expect:
        raise ConfigError(str(path), "kind", f"expected a {expect} config", kind)
    try:
        return KINDS[kind].model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(path, exc) from None


def load_config(path: str | Path, expect: str | None = None) -> BaseModel:
    """Load any zpipe config file into its model (checked by `zpipe validate`)."""
    path = Path(path)
    model = parse_config(path, read_yaml(path), expect)
    if isinstance(model, CampaignConfig):
        load_campaign(path)  # a campaign is only valid with its brand and templates
    elif isinstance(model, BrandConfig):
        load_brand(path)  # ... and a brand with its logo, font and reply templates
    elif isinstance(model, SourceFile):
        from tasks.trends.sources import load_source

        load_source(path)  # ... and a trend source with its file
    return model


class CampaignBundle(BaseModel):
    """A campaign with everything it references, paths resolved."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    campaign: CampaignConfig
    brand: BrandConfig
    library: PromptLibrary


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def load_campaign(path: str | Path) -> CampaignBundle:
    """Load a campaign and the brand, prompt library and trend files it points to."""
    path = Path(path).resolve()
    campaign = parse_config(path, read_yaml(path), expect="campaign")
    assert isinstance(campaign, CampaignConfig)
    base = path.parent

    brand_path = _resolve(base, campaign.brand)
    if not brand_path.is_file():
        raise ConfigError(str(path), "brand", "brand file not found", campaign.brand)
    brand = load_brand(brand_path)

    prompts_path = _resolve(base, campaign.prompts)
    if not prompts_path.is_file():
        raise ConfigError(str(path), "prompts", "prompt library not found", campaign.prompts)
    library = parse_config(prompts_path, read_yaml(prompts_path), expect="prompts")
    assert isinstance(library, PromptLibrary)
    names = [t.name for t in library.templates]
    if campaign.template not in names:
        raise ConfigError(str(path), "template",
                          f"not in {prompts_path.name}; available: {', '.join(names)}",
                          campaign.template)
    _check_references(path, campaign, brand, library, prompts_path.name)

    sources = []
    for i, source in enumerate(campaign.trends.sources):
        if isinstance(source, str):
            source_path = _resolve(base, source)
            if not source_path.is_file():
                raise ConfigError(str(path), f"trends.sources.{i}", "source file not found", source)
            sources.append(load_source(source_path))
            continue
        if source.url.startswith(("http://", "https://")):
            sources.append(source)
            continue
        local = _resolve(base, source.url)
        if not local.is_file():
            raise ConfigError(str(path), f"trends.sources.{i}.url", "trend file not found",
                              source.url)
        sources.append(source.model_copy(update={"url": str(local)}))
    terms = campaign.trends.sensitive_terms
    if terms is not None:
        terms_path = _resolve(base, terms)
        if not terms_path.is_file():
            raise ConfigError(str(path), "trends.sensitive_terms", "file not found", terms)
        terms = str(terms_path)
    trends = campaign.trends.model_copy(update={"sources": sources, "sensitive_terms": terms})
    campaign = campaign.model_copy(update={"trends": trends})
    if campaign.catalogue is not None:
        campaign = campaign.model_copy(update={"catalogue": _resolve_catalogue(path, campaign.catalogue)})
    return CampaignBundle(path=path, campaign=campaign, brand=brand, library=library)


def _resolve_catalogue(path: Path, catalogue: CatalogueSource) -> CatalogueSource:
    """The catalogue's file and image folder resolved against the campaign file."""
    base = path.parent
    updates: dict[str, str] = {}
    if not catalogue.is_http:
        local = _resolve(base, catalogue.url)
        if not local.is_file():
            raise ConfigError(str(path), "catalogue.url", "catalogue file not found", catalogue.url)
        updates["url"] = str(local)
    if catalogue.images is not None:
        images = _resolve(base, catalogue.images)
        if not images.is_dir():
            raise ConfigError(str(path), "catalogue.images", "image folder not found",
                              catalogue.images)
        updates["images"] = str(images)
    elif catalogue.is_http:
        updates["images"] = str(base)  # an HTTP catalogue's image paths: the campaign's folder
    return catalogue.model_copy(update=updates)


def _check_references(path: Path, campaign: CampaignConfig, brand: BrandConfig,
                      library: PromptLibrary, library_name: str) -> None:
    """What one file cannot check alone: templates, colour codes, copy slots and axes in use."""
    # 1. Rules name templates that exist
    for i, rule in enumerate(campaign.rules):
        if rule.then.template is not None and rule.then.template not in library.names:
            raise ConfigError(str(path), f"rules.{i}.then.template",
                              f"rule {rule.name!r} names a template not in {library_name}; "
                              f"available: {', '.join(library.names)}", rule.then.template)
    main = library.get(campaign.template)
    in_use = [main] + [library.get(r.then.template) for r in campaign.rules if r.then.template]

    # 2. Day themes' colour codes are in the brand's colour table
    colours = brand.mappings.get(COLOUR_TABLE, {})
    for day, theme in campaign.days.items():
        if theme.colour is not None and theme.colour not in colours:
            known = ", ".join(colours) or f"none: add mappings.{COLOUR_TABLE} to the brand"
            raise ConfigError(str(path), f"days.{day}.colour",
                              f"not a code in the brand's mappings.{COLOUR_TABLE}; known: {known}",
                              theme.colour)

    # 3. Copy fits the template that will carry it, and that template has a copy slot
    def check_copy(field: str, copy: BilingualText, template: PromptTemplate) -> None:
        if not (template.uses("copy") or template.headline_overlay):
            raise ConfigError(str(path), field, f"template {template.name!r} has no copy slot "
                              "(it never reads `copy` and has no headline_overlay); use a template "
                              "that does, or remove the copy", copy.zh)
        for language in ("zh", "en"):
            text, limit = getattr(copy, language), template.copy_limit(language)
            if len(text) > limit:
                raise ConfigError(str(path), f"{field}.{language}",
                                  f"copy is {len(text)} characters; template {template.name!r} "
                                  f"takes at most {limit}", text)

    for i, rule in enumerate(campaign.rules):
        if rule.then.copy_text is not None:
            target = library.get(rule.then.template) if rule.then.template else main
            check_copy(f"rules.{i}.then.copy", rule.then.copy_text, target)
    for day, theme in campaign.days.items():
        if theme.copy_text is not None:
            check_copy(f"days.{day}.copy", theme.copy_text, main)
    for j, value in enumerate(campaign.variants.axes.get("copy", [])):
        check_copy(f"variants.axes.copy.{j}", value, main)

    # 4. Every declared axis is read by every template the campaign may use
    for name in campaign.variants.axes:
        if name == "copy":
            continue
        for template in in_use:
            if name not in template.attributes_used("axes"):
                raise ConfigError(str(path), f"variants.axes.{name}",
                                  f"template {template.name!r} never reads axes.{name}, so variants "
                                  "would not differ on it; use a template that does (e.g. ab-poster) "
                                  "or remove the axis", name)


def load_brand(path: str | Path) -> BrandConfig:
    """Load a brand and resolve its logo, font and reply prompt library paths."""
    path = Path(path).resolve()
    brand = parse_config(path, read_yaml(path), expect="brand")
    assert isinstance(brand, BrandConfig)
    if brand.logo is not None:
        logo_path = _resolve(path.parent, brand.logo.path)
        if not logo_path.is_file():
            raise ConfigError(str(path), "logo.path", "logo file not found", brand.logo.path)
        try:
            check_logo(logo_path)
        except LabelError as exc:
            raise ConfigError(str(path), "logo.path", str(exc)) from None
        brand = brand.model_copy(update={"logo": brand.logo.model_copy(update={"path": str(logo_path)})})
    if brand.label.font is not None:
        font_path = _resolve(path.parent, brand.label.font)
        if not font_path.is_file():
            raise ConfigError(str(path), "label.font", "font file not found", brand.label.font)
        brand = brand.model_copy(update={"label": brand.label.model_copy(update={"font": str(font_path)})})
    if brand.headline.font is not None:
        font_path = _resolve(path.parent, brand.headline.font)
        if not font_path.is_file():
            raise ConfigError(str(path), "headline.font", "font file not found", brand.headline.font)
        brand = brand.model_copy(
            update={"headline": brand.headline.model_copy(update={"font": str(font_path)})})
    loras = []
    for i, lora in enumerate(brand.loras):
        lora_path = _resolve(path.parent, lora.path)
        if not lora_path.exists():
            raise ConfigError(str(path), f"loras.{i}.path", "LoRA file or directory not found",
                              lora.path)
        loras.append(lora.model_copy(update={"path": str(lora_path)}))
    brand = brand.model_copy(update={"loras": loras})
    if brand.product is not None:
        brand = brand.model_copy(update={"product": resolve_product_spec(path, brand.product)})
    prompts_path = _resolve(path.parent, brand.replies.prompts)
    if not prompts_path.is_file():
        raise ConfigError(str(path), "replies.prompts", "prompt library not found",
                          brand.replies.prompts)
    replies = brand.replies.model_copy(update={"prompts": str(prompts_path)})
    brand = brand.model_copy(update={"replies": replies})
    if brand.topics is not None:
        fit = resolve_topics(path, brand.topics)
        brand = brand.model_copy(update={"safety": brand.safety.model_copy(update={"fit": fit})})
    return brand


def resolve_topics(path: Path, topics: BrandTopics) -> BrandFit:
    """A brand's `topics:` with its categories read from the topic library (`topics.library`)."""
    library = _resolve(path.parent, topics.library)
    if not library.is_dir():
        raise ConfigError(str(path), "topics.library", "topic library directory not found",
                          topics.library)
    known = sorted(p.stem for p in library.glob("*.yaml"))
    lexicon: dict[str, TopicCategory] = {}
    for name in topics.category_names():
        file = library / f"{name}.yaml"
        if not file.is_file():
            if name in topics.categories:
                raise ConfigError(str(path), f"topics.categories.{name}",
                                  f"no category file {file}; known: {', '.join(known) or 'none'}",
                                  name)
            continue  # a deny entry that is no category is a plain word
        category = parse_config(file, read_yaml(file), expect="topic")
        assert isinstance(category, TopicCategory)
        if category.name != name:
            raise ConfigError(str(file), "name", f"must be the file's name {name!r}", category.name)
        lexicon[name] = category
    return BrandFit.resolve(topics, lexicon)


def find_brand(brands_dir: str | Path, slug: str) -> BrandConfig:
    """The brand with this slug among the brand YAML files of a directory."""
    brands_dir = Path(brands_dir)
    known = []
    for path in sorted(brands_dir.glob("*.yaml")):
        data = read_yaml(path)
        if data.get("kind") != "brand":
            continue
        known.append(str(data.get("slug")))
        if data.get("slug") == slug:
            return load_brand(path)
    raise ConfigError(str(brands_dir), "slug", f"no brand with this slug; known: {', '.join(known)}",
                      slug)


def load_library(path: str | Path) -> PromptLibrary:
    """Load a prompt library file."""
    library = load_config(path, expect="prompts")
    assert isinstance(library, PromptLibrary)
    return library


def load_settings(path: str | Path | None) -> Settings:
    """Load settings YAML (or the embedded defaults), then ZPIPE_STORE / ZPIPE_GENERATION."""
    model = Settings() if path is None else load_config(path, expect="settings")
    assert isinstance(model, Settings)
    overrides = {field: value for field in ENV_OVERRIDES if (value := env_raw(field))}
    if not overrides:
        return model
    try:
        return Settings.model_validate({**model.model_dump(), **overrides})
    except ValidationError as exc:
        raise from_validation_error(Path("environment (ZPIPE_*)"), exc) from None


def parse_week(week: str | None, today: date) -> tuple[str, date]:
    """'2026-W48' (or None = the week of `today`) -> (canonical label, its Monday)."""
    if week is None:
        year, number, _ = today.isocalendar()
    else:
        match = re.fullmatch(r"(\d{4})-?W(\d{1,2})", week.strip())
        if not match:
            raise ConfigError("--week", None, "use ISO week form YYYY-Www, e.g. 2026-W48", week)
        year, number = int(match[1]), int(match[2])
    try:
        monday = date.fromisocalendar(year, number, 1)
    except ValueError:
        raise ConfigError("--week", None, f"{year} has no ISO week {number}", week) from None
    return f"{year}-W{number:02d}", monday

