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
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.errors import ConfigError
from tasks.prompts import PromptLibrary
from tasks.trends import TrendSource
from tasks.watermark import LabelSpec, LogoSpec, OutputSpec

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FORMATS = ("1:1", "4:5", "3:4", "9:16", "16:9")  # the engine's size presets (zengine.SIZE_PRESETS)
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
HEX_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")

Slug = Annotated[str, Field(pattern=SLUG.pattern, description="lower-case letters, digits, '-'")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- brand --------------------------------------------------------------------------


class Producer(Strict):
    """Who is named as content producer in the implicit (TC260) label."""

    name: str = Field(min_length=1)
    id: str = Field(min_length=1, description="organisation code written as ContentProducer")


class BilingualText(Strict):
    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


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

    @field_validator("colours")
    @classmethod
    def _hex_colours(cls, value: dict[str, str]) -> dict[str, str]:
        for name, colour in value.items():
            if not HEX_COLOUR.match(colour):
                raise ValueError(f"colour {name!r} must be #RRGGBB (got {colour!r})")
        return value


# -- campaign -----------------------------------------------------------------------


class TrendsConfig(Strict):
    sources: list[TrendSource] = Field(default_factory=list)


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
    variants: int = Field(default=1, ge=1, le=16)
    output: OutputSpec = Field(default_factory=OutputSpec)
    trends: TrendsConfig = Field(default_factory=TrendsConfig)
    days: dict[str, BilingualText] = Field(min_length=1, description="weekday -> theme")
    schedule: Schedule | None = Field(default=None, description="run by itself (zpipe serve)")
    approval: Literal["none", "required"] = "none"
    approval_timeout_s: int = Field(default=86400, ge=10, description="unanswered -> rejected")

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, value: list[str]) -> list[str]:
        for fmt in value:
            if fmt not in FORMATS:
                raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"formats repeat an entry: {value}")
        return value

    @field_validator("days")
    @classmethod
    def _known_days(cls, value: dict[str, BilingualText]) -> dict[str, BilingualText]:
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


class Settings(Strict):
    kind: Literal["settings"] = "settings"
    engine: EngineSettings = Field(default_factory=EngineSettings)
    store: str = Field(default="file://./zpipe-out", description="file:///dir or s3://bucket/prefix")
    generation: Literal["local", "workers"] = Field(
        default="local", description="local: in the flow's process; workers: `zpipe worker`s")
    trends_max_age_s: int = Field(default=7200, ge=0,
                                  description="use stored trends younger than this, else fetch")


# The only environment variables zpipe reads for settings (secrets stay with boto3 / intake).
ENV_OVERRIDES = {"ZPIPE_STORE": "store", "ZPIPE_GENERATION": "generation"}


# -- loading ------------------------------------------------------------------------

KINDS: dict[str, type[BaseModel]] = {
    "brand": BrandConfig,
    "campaign": CampaignConfig,
    "prompts": PromptLibrary,
    "settings": Settings,
}


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping; errors name the file and the line."""
    if not path.is_file():
        raise ConfigError(str(path), None, "file not found; check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), None, f"not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), None, f"invalid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), None, "must be a YAML mapping with a `kind:` key",
                          type(data).__name__)
    return data


def _from_validation_error(path: Path, exc: ValidationError) -> ConfigError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field; remove it or check its spelling"
    if len(errors) > 1:
        more = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[1:5]
        )
        message += f" (and {len(errors) - 1} more: {more})"
    value = first.get("input") if first["type"] != "missing" else None
    if isinstance(value, dict | list):
        value = None  # a whole sub-tree is noise; the field path says where
    return ConfigError(str(path), field, message, value)


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
        raise _from_validation_error(path, exc) from None


def load_config(path: str | Path, expect: str | None = None) -> BaseModel:
    """Load any zpipe config file into its model (checked by `zpipe validate`)."""
    path = Path(path)
    model = parse_config(path, read_yaml(path), expect)
    if isinstance(model, CampaignConfig):
        load_campaign(path)  # a campaign is only valid with its brand and templates
    elif isinstance(model, BrandConfig):
        load_brand(path)  # ... and a brand with its logo, font and reply templates
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

    sources = []
    for i, source in enumerate(campaign.trends.sources):
        if source.url.startswith(("http://", "https://")):
            sources.append(source)
            continue
        local = _resolve(base, source.url)
        if not local.is_file():
            raise ConfigError(str(path), f"trends.sources.{i}.url", "trend file not found",
                              source.url)
        sources.append(source.model_copy(update={"url": str(local)}))
    trends = campaign.trends.model_copy(update={"sources": sources})
    campaign = campaign.model_copy(update={"trends": trends})
    return CampaignBundle(path=path, campaign=campaign, brand=brand, library=library)


def load_brand(path: str | Path) -> BrandConfig:
    """Load a brand and resolve its logo, font and reply prompt library paths."""
    path = Path(path).resolve()
    brand = parse_config(path, read_yaml(path), expect="brand")
    assert isinstance(brand, BrandConfig)
    if brand.logo is not None:
        logo_path = _resolve(path.parent, brand.logo.path)
        if not logo_path.is_file():
            raise ConfigError(str(path), "logo.path", "logo file not found", brand.logo.path)
        brand = brand.model_copy(update={"logo": brand.logo.model_copy(update={"path": str(logo_path)})})
    if brand.label.font is not None:
        font_path = _resolve(path.parent, brand.label.font)
        if not font_path.is_file():
            raise ConfigError(str(path), "label.font", "font file not found", brand.label.font)
        brand = brand.model_copy(update={"label": brand.label.model_copy(update={"font": str(font_path)})})
    prompts_path = _resolve(path.parent, brand.replies.prompts)
    if not prompts_path.is_file():
        raise ConfigError(str(path), "replies.prompts", "prompt library not found",
                          brand.replies.prompts)
    replies = brand.replies.model_copy(update={"prompts": str(prompts_path)})
    return brand.model_copy(update={"replies": replies})


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
    import os

    model = Settings() if path is None else load_config(path, expect="settings")
    assert isinstance(model, Settings)
    overrides = {field: os.environ[name] for name, field in ENV_OVERRIDES.items()
                 if os.environ.get(name)}
    if not overrides:
        return model
    try:
        return Settings.model_validate({**model.model_dump(), **overrides})
    except ValidationError as exc:
        raise _from_validation_error(Path("environment (ZPIPE_*)"), exc) from None


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

