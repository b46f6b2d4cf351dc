"""Prompt templating: five-part Jinja2 templates (zh/en) rendered in a sandbox into prompts.

Besides the template text, a prompt can gain:
- copy: short in-image text ({zh, en}), cleaned by `clean_copy` (no quotes, braces, line
  breaks or control characters; at most the template's `copy_max_chars`) and quoted by the
  `quoted` filter, so that it can never break the prompt or the template;
- additions: prompt elements appended to one of the five parts after rendering (campaign
  rules: "红灯笼" on 春节), data only, never template code.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any, Literal

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.core.base import SLUG
from tasks.core.errors import PromptError

Language = Literal["zh", "en", "bilingual"]

PARTS = ("subject", "action", "scene", "lighting", "style")
SEPARATORS = {"zh": "，", "en": ", "}
BILINGUAL_SEPARATOR = " / "

VERSION = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$")

# Separators a part may start or end with; stripped so that joining never doubles them.
_EDGE_PUNCTUATION = " ，,、;；"

# Names for `#RRGGBB` palette entries: the model reads colour words, and a hex code in a
# prompt risks being drawn into the image as text. (name_en, name_zh, r, g, b)
_COLOUR_NAMES = (
    ("white", "白色", 255, 255, 255),
    ("ivory", "象牙白", 250, 246, 232),
    ("cream", "奶油色", 245, 230, 200),
    ("beige", "米色", 222, 205, 170),
    ("sand", "沙色", 194, 178, 128),
    ("light grey", "浅灰色", 200, 200, 200),
    ("grey", "灰色", 128, 128, 128),
    ("charcoal", "炭灰色", 54, 54, 54),
    ("black", "黑色", 0, 0, 0),
    ("dark brown", "深棕色", 60, 40, 30),
    ("brown", "棕色", 139, 90, 43),
    ("caramel", "焦糖色", 190, 130, 70),
    ("true red", "正红色", 220, 20, 40),
    ("burgundy", "酒红色", 110, 20, 40),
    ("pink", "粉色", 245, 170, 190),
    ("coral", "珊瑚色", 250, 128, 114),
    ("orange", "橙色", 245, 130, 30),
    ("peach", "蜜桃色", 255, 200, 160),
    ("mustard yellow", "芥末黄", 215, 170, 40),
    ("bright yellow", "明黄色", 250, 215, 60),
    ("olive green", "橄榄绿", 110, 120, 50),
    ("sage green", "鼠尾草绿", 160, 180, 150),
    ("green", "绿色", 40, 150, 70),
    ("forest green", "森林绿", 30, 80, 45),
    ("mint", "薄荷绿", 170, 225, 200),
    ("teal", "青绿色", 0, 128, 128),
    ("sky blue", "天蓝色", 135, 200, 235),
    ("blue", "蓝色", 30, 90, 200),
    ("navy", "藏青色", 20, 35, 80),
    ("lavender", "薰衣草紫", 190, 170, 220),
    ("purple", "紫色", 110, 50, 150),
)
_HEX_COLOUR = re.compile(r"^#([0-9a-fA-F]{6})$")
MAX_PART_CHARS = 4000  # one rendered part; the text encoder reads 512 tokens of the whole prompt
MAX_POWER_BITS = 256  # `**` results in templates: no prompt needs a number this large
_UNDEFINED_NAME = re.compile(r"^'([^']+)' is undefined$")

# Characters that copy may not carry into a prompt: quotes of every script (they would end
# the quoted headline early), braces (template-looking text), backslashes and backticks.
_COPY_STRIP = re.compile(r"[\"'`´“”„‟‘’‚‛＂＇「」『』〝〞{}\\]")
QUOTES = {"zh": ("“", "”"), "en": ('"', '"')}


class BilingualText(BaseModel):
    """A {zh, en} pair: a theme, a style, a brand fragment, a line of copy."""

    model_config = ConfigDict(extra="forbid")

    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


class PromptParts(BaseModel):
    """The five parts of a prompt, each a Jinja2 template string."""

    model_config = ConfigDict(extra="forbid")

    subject: str
    action: str
    scene: str
    lighting: str
    style: str


class DrawText(BaseModel):
    """The copy a template asks the model to draw, per language: Jinja2 rendered with the
    prompt's variables (e.g. `"{{ theme.zh }}"`). The QA gate reads it back from the image
    (tasks.qa); an empty rendering means nothing is drawn."""

    model_config = ConfigDict(extra="forbid")

    zh: str = ""
    en: str = ""


class PromptTemplate(BaseModel):
    """A named, versioned prompt template in Chinese and English."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str  # recorded with every prompt rendered from this template
    description: str = ""
    zh: PromptParts
    en: PromptParts
    copy_max_chars: int = Field(default=24, ge=1)  # longest headline drawn into the image
    copy_max_chars_en: int | None = Field(default=None, ge=1,
                                          description="English copy limit; default 2 x copy_max_chars")
    headline_overlay: bool = Field(
        default=False, description="typeset the copy over the image in the brand font instead "
                                   "of asking the model to draw it (model text can be garbled)")
    draw_text: DrawText | None = Field(
        default=None, description="the copy the prompt asks the model to draw ({zh, en} "
                                  "templates); the QA gate reads it back and compares")

    @field_validator("name")
    @classmethod
    def _slug(cls, name: str) -> str:
        """Names are slugs: they go into object keys and metadata."""
        if not SLUG.fullmatch(name):
            raise ValueError(
                f"template name {name!r} must be a slug of lower-case letters, digits and '-' "
                "(e.g. 'daily-poster')"
            )
        return name

    @field_validator("version")
    @classmethod
    def _semver(cls, version: str) -> str:
        """Versions look like 1.0.0 so that a change is visible in every image's metadata."""
        if not VERSION.fullmatch(version):
            raise ValueError(f"version {version!r} must look like '1.0.0' (MAJOR.MINOR.PATCH)")
        return version

    @model_validator(mode="after")
    def _compiles(self) -> PromptTemplate:
        """Compile every part now, so a syntax error fails at load time, not mid-campaign."""
        for language in ("zh", "en"):
            parts: PromptParts = getattr(self, language)
            sources = [(part, getattr(parts, part)) for part in PARTS]
            if self.draw_text is not None:
                sources.append(("draw_text", getattr(self.draw_text, language)))
            for part, source in sources:
                try:
                    _compile(source)
                except jinja2.TemplateSyntaxError as err:
                    reason = (err.message or "invalid syntax").rstrip(".")
                    raise ValueError(
                        f"template {self.name!r}, {language}.{part}: Jinja2 syntax error "
                        f"on line {err.lineno}: {reason}; fix the template text"
                    ) from None
        return self

    def copy_limit(self, language: str) -> int:
        """The longest copy, in characters, that this template takes in `language`."""
        if language == "en":
            return self.copy_max_chars_en or 2 * self.copy_max_chars
        return self.copy_max_chars

    def sources(self) -> Iterator[tuple[str, str]]:
        """("zh.subject", template text) for each of the ten parts."""
        for language in ("zh", "en"):
            parts: PromptParts = getattr(self, language)
            for part in PARTS:
                yield f"{language}.{part}", getattr(parts, part)

    def uses(self, name: str) -> bool:
        """True if any part reads the top-level variable `name`."""
        return any(name in _names(source) for _, source in self.sources())

    def attributes_used(self, name: str) -> set[str]:
        """The attributes read from variable `name` (`axes.lighting` -> "lighting")."""
        found: set[str] = set()
        for _, source in self.sources():
            found |= _attributes(source, name)
        return found


class PromptLibrary(BaseModel):
    """All prompt templates of a `kind: prompts` config file."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["prompts"] = "prompts"
    templates: list[PromptTemplate] = Field(min_length=1)

    @field_validator("templates")
    @classmethod
    def _unique_names(cls, templates: list[PromptTemplate]) -> list[PromptTemplate]:
        """Two templates may not share a name."""
        seen: set[str] = set()
        for template in templates:
            if template.name in seen:
                raise ValueError(
                    f"template name {template.name!r} is used twice; rename one "
                    "(or bump the version of the one template instead of copying it)"
                )
            seen.add(template.name)
        return templates

    @property
    def names(self) -> list[str]:
        """The template names, in file order."""
        return [t.name for t in self.templates]

    def get(self, name: str) -> PromptTemplate:
        """Return the template called `name`."""
        for template in self.templates:
            if template.name == name:
                return template
        raise PromptError(
            f"unknown prompt template {name!r}; available: {', '.join(self.names)}. "
            "Fix the name or add the template to the prompt library"
        )


class RenderedPrompt(BaseModel):
    """A prompt ready for the model, with the template name and version it came from."""

    model_config = ConfigDict(extra="forbid")

    text: str
    template: str
    version: str
    language: Language
    parts: dict[str, str]  # part -> text; "zh.subject" style keys when bilingual
    draw_text: dict[str, str] = Field(default_factory=dict)  # language -> copy the model must draw


# ---------------------------------------------------------------------------------------------
# Jinja2 environment


def colour_name(value: Any, language: str = "en") -> str:
    """Name a `#RRGGBB` colour in words (nearest of a small palette); pass anything else through."""
    text = str(value).strip()
    match = _HEX_COLOUR.fullmatch(text)
    if not match:
        return text
    r, g, b = (int(match.group(1)[i : i + 2], 16) for i in (0, 2, 4))

    def distance(entry: tuple[str, str, int, int, int]) -> float:
        # "Redmean" weighting: a cheap approximation of perceived colour difference.
        mean = (r + entry[2]) / 2
        dr, dg, db = r - entry[2], g - entry[3], b - entry[4]
        return (2 + mean / 256) * dr * dr + 4 * dg * dg + (2 + (255 - mean) / 256) * db * db

    name_en, name_zh, *_ = min(_COLOUR_NAMES, key=distance)
    return name_zh if language == "zh" else name_en


class _PromptEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with mapping keys winning over mapping methods in `a.b` lookups, and with
    `*` and `**` bounded.

    Variables are plain dicts, and some of their keys are also dict methods: `axes.copy`,
    `mapping.colours.items` must read the value, not find `dict.copy`.
    Jinja's sandbox blocks private attributes and caps `range`, but `'a' * 10**9` or
    `9 ** 10**9` would still take minutes and gigabytes (and Jinja folds constant
    expressions while compiling, i.e. at config load): intercepted operators are never folded
    and refuse results larger than any prompt needs.
    """

    intercepted_binops = frozenset({"*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and isinstance(attribute, str) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(left, int | float) and isinstance(right, int | float):
            magnitude = max(abs(left), 2) if isinstance(left, int) else 2
            if right > 0 and right * math.log2(magnitude) > MAX_POWER_BITS:
                raise SecurityError(f"{left!r} ** {right!r} is too large a number for a prompt "
                                    f"(over {MAX_POWER_BITS} bits)")
        if operator == "*":
            sequence, count = (left, right) if isinstance(right, int) else (right, left)
            if (isinstance(sequence, str | list | tuple) and isinstance(count, int)
                    and len(sequence) * count > MAX_PART_CHARS):
                raise SecurityError(f"repeating a {type(sequence).__name__} of length "
                                    f"{len(sequence)} {count} times exceeds {MAX_PART_CHARS} items")
        return super().call_binop(context, operator, left, right)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    """The sandboxed environment: strict about undefined names, no HTML escaping.

    The immutable sandbox also blocks `list.append`, `dict.update` and the like, so a
    template can never change the caller's variables.
    """
    env = _PromptEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # prompts are plain text, not HTML
        keep_trailing_newline=False,
    )
    env.filters["colour_name"] = colour_name
    env.filters["quoted"] = quoted
    return env


@lru_cache(maxsize=1024)
def _names(source: str) -> frozenset[str]:
    from jinja2 import meta

    return frozenset(meta.find_undeclared_variables(_environment().parse(source)))


@lru_cache(maxsize=1024)
def _attributes(source: str, name: str) -> frozenset[str]:
    from jinja2 import nodes

    found: set[str] = set()
    for node in _environment().parse(source).find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node.node, nodes.Name) and node.node.name == name:
            if isinstance(node, nodes.Getattr):
                found.add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                found.add(node.arg.value)
    return frozenset(found)


@lru_cache(maxsize=1024)
def _compile(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def _render_capped(template: jinja2.Template, context: Mapping[str, Any], where: str) -> str:
    """Render, stopping as soon as the output passes MAX_PART_CHARS (a runaway loop)."""
    chunks: list[str] = []
    size = 0
    for chunk in template.generate(context):
        size += len(chunk)
        if size > MAX_PART_CHARS:
            raise PromptError(f"{where}: renders to more than {MAX_PART_CHARS} characters; a "
                              "prompt part is a phrase: check the template's loops and the "
                              "length of the values it reads")
        chunks.append(chunk)
    return "".join(chunks)


def _clean(text: str) -> str:
    """Collapse whitespace and trim separators at the edges of a rendered part."""
    return " ".join(text.split()).strip(_EDGE_PUNCTUATION)


# ---------------------------------------------------------------------------------------------
# Copy: short in-image text


def clean_copy(text: Any, max_chars: int | None = None) -> str:
    """Copy safe to quote in a prompt: one line, no quotes/braces/control characters, capped.

    Line breaks, tabs and other control or format characters become spaces (then collapse);
    quotes of every script, braces, backslashes and backticks are removed; the result is cut
    to `max_chars` characters.
    """
    text = unicodedata.normalize("NFC", str(text))
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text)
    text = " ".join(_COPY_STRIP.sub("", text).split())
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rstrip()
    return text


def quoted(value: Any, language: str = "zh") -> str:
    """Template filter: copy cleaned and put in the language's quotes (“…” or "...")."""
    if value is None:
        return ""
    opening, closing = QUOTES["en" if language == "en" else "zh"]
    return f"{opening}{clean_copy(value)}{closing}"


def copy_variable(copy: BilingualText | Mapping[str, str] | None,
                  template: PromptTemplate) -> dict[str, str] | None:
    """The `copy` template variable: {zh, en} cleaned and cut to the template's limits."""
    if copy is None:
        return None
    pair = copy.model_dump() if isinstance(copy, BaseModel) else dict(copy)
    cleaned = {lang: clean_copy(pair.get(lang, ""), template.copy_limit(lang)) for lang in ("zh", "en")}
    return cleaned if any(cleaned.values()) else None


# ---------------------------------------------------------------------------------------------
# Rendering


Additions = Mapping[str, Mapping[str, Sequence[str]]]  # part -> language -> elements


def render_prompt(
    template: PromptTemplate,
    variables: Mapping[str, Any],
    language: Language = "zh",
    additions: Additions | None = None,
) -> RenderedPrompt:
    """Render a template's five parts with `variables` and join them into one prompt.

    `additions` ({"scene": {"zh": ["红灯笼"], "en": ["red lanterns"]}}) are appended to the
    rendered parts, joined with the language's separator.
    """
    unknown = set(additions or {}) - set(PARTS)
    if unknown:
        raise PromptError(f"additions to unknown prompt parts {sorted(unknown)}; use {', '.join(PARTS)}")
    languages = ("zh", "en") if language == "bilingual" else (language,)
    texts: list[str] = []
    parts: dict[str, str] = {}
    draw: dict[str, str] = {}
    for lang in languages:
        rendered = _render_parts(template, lang, variables)
        text = _render_draw_text(template, lang, variables)
        if text:
            draw[lang] = text
        for part, by_language in (additions or {}).items():
            extra = [_clean(str(e)) for e in by_language.get(lang, ()) if _clean(str(e))]
            if extra:
                rendered[part] = SEPARATORS[lang].join([t for t in (rendered[part],) if t] + extra)
        texts.append(SEPARATORS[lang].join(text for text in rendered.values() if text))
        prefix = f"{lang}." if language == "bilingual" else ""
        parts.update({f"{prefix}{part}": text for part, text in rendered.items()})
    return RenderedPrompt(
        text=BILINGUAL_SEPARATOR.join(text for text in texts if text),
        template=template.name,
        version=template.version,
        language=language,
        parts=parts,
        draw_text=draw,
    )


def _render_draw_text(template: PromptTemplate, language: Literal["zh", "en"],
                      variables: Mapping[str, Any]) -> str:
    """The copy the model is asked to draw in `language` ("" when none), cleaned like copy."""
    source = getattr(template.draw_text, language, "") if template.draw_text else ""
    if not source:
        return ""
    where = f"prompt template {template.name!r} v{template.version}, draw_text.{language}"
    try:
        return clean_copy(_render_capped(_compile(source), dict(variables), where))
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError) as err:
        raise PromptError(f"{where}: rendering failed: {type(err).__name__}: {err}; guard optional "
                          "variables, e.g. {{ copy.zh if copy else '' }}") from None


def _render_parts(
    template: PromptTemplate, language: Literal["zh", "en"], variables: Mapping[str, Any]
) -> dict[str, str]:
    """Render the five parts of one language; errors name template, language and part."""
    parts: PromptParts = getattr(template, language)
    context = dict(variables)
    rendered: dict[str, str] = {}
    for part in PARTS:
        where = f"prompt template {template.name!r} v{template.version}, {language}.{part}"
        provided = ", ".join(sorted(context)) or "none"
        try:
            rendered[part] = _clean(_render_capped(_compile(getattr(parts, part)), context, where))
        except jinja2.UndefinedError as err:
            missing = _UNDEFINED_NAME.match(err.message or "")
            if missing:
                raise PromptError(
                    f"{where}: undefined variable {missing.group(1)!r}. Provided variables: "
                    f"{provided}. Pass it, or guard the template with "
                    f"{{% if {missing.group(1)} is defined %}}"
                ) from None
            if "has no attribute '_" in (err.message or ""):
                raise PromptError(
                    f"{where}: blocked by the sandbox: {err.message} (templates may not "
                    "touch private attributes); remove that expression from the template"
                ) from None
            raise PromptError(
                f"{where}: undefined value: {err.message}. Provided variables: {provided}; "
                "check the variable's keys against the variables contract"
            ) from None
        except jinja2.exceptions.SecurityError as err:
            raise PromptError(
                f"{where}: blocked by the sandbox: {str(err).rstrip('.')}; "
                "remove that expression from the template"
            ) from None
        except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError) as err:
            raise PromptError(
                f"{where}: rendering failed: {type(err).__name__}: {err}. "
                f"Provided variables: {provided}"
            ) from None
    return rendered
