"""Prompt templating: the real library rendered in zh/en/bilingual, and its error paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tasks.errors import PromptError
from tasks.prompts import (
    PARTS,
    PromptLibrary,
    PromptParts,
    PromptTemplate,
    colour_name,
    render_prompt,
    render_prompt_task,
)

LIBRARY = Path(__file__).resolve().parents[1] / "configs" / "prompts" / "library.yaml"


@pytest.fixture(scope="module")
def library() -> PromptLibrary:
    return PromptLibrary.model_validate(yaml.safe_load(LIBRARY.read_text(encoding="utf-8")))


def poster_vars(**overrides: Any) -> dict[str, Any]:
    """The variables the planner passes to a daily template (the variables contract)."""
    variables: dict[str, Any] = {
        "theme": {"zh": "周一早晨的第一杯手冲咖啡",
                  "en": "the first pour-over coffee of Monday morning"},
        "brand": {
            "name": "晨光咖啡 Dawnlight Coffee",
            "style_zh": "温暖的胶片质感，干净留白",
            "style_en": "warm film look, clean negative space",
            "palette": ["#C8102E", "#F5E6C8", "#2B2118"],
        },
        "day": {"weekday": "mon", "date": "2026-11-23",
                "weekday_zh": "周一", "weekday_en": "Monday"},
        "trend": {"title": "秋冬围巾穿搭", "source": "sample-feed", "score": 200000.0},
        "format": "1:1",
        "variant": 1,
    }
    variables.update(overrides)
    return variables


def parts(text: str = "x", **overrides: str) -> PromptParts:
    return PromptParts(**{part: overrides.get(part, text) for part in PARTS})


def template(name: str = "t", **zh_overrides: str) -> PromptTemplate:
    return PromptTemplate(name=name, version="1.0.0", zh=parts(**zh_overrides), en=parts())


# ---------------------------------------------------------------------------------------------
# The real library


def test_library_has_the_planned_templates(library: PromptLibrary) -> None:
    assert library.kind == "prompts"
    assert {"daily-poster", "trend-reply"} <= set(library.names)
    assert library.get("daily-poster").version == "1.0.0"


def test_render_zh(library: PromptLibrary) -> None:
    prompt = render_prompt(library.get("daily-poster"), poster_vars(), "zh")
    assert (prompt.template, prompt.version, prompt.language) == ("daily-poster", "1.0.0", "zh")
    assert list(prompt.parts) == list(PARTS)
    assert prompt.text == "，".join(prompt.parts.values())
    assert "周一早晨的第一杯手冲咖啡" in prompt.text
    assert "“周一早晨的第一杯手冲咖啡”" in prompt.parts["action"]  # headline drawn in, quoted
    assert "秋冬围巾穿搭" in prompt.parts["subject"]
    assert "正红色、奶油色、深棕色" in prompt.parts["scene"]  # palette as words, not hex
    assert "#" not in prompt.text
    assert "，，" not in prompt.text and "  " not in prompt.text
    assert "方形构图" in prompt.parts["style"]


def test_render_en(library: PromptLibrary) -> None:
    prompt = render_prompt(library.get("daily-poster"), poster_vars(format="9:16"), "en")
    assert prompt.language == "en" and prompt.version == "1.0.0"
    assert prompt.text == ", ".join(prompt.parts.values())
    assert '"the first pour-over coffee of Monday morning"' in prompt.text
    assert "true red, cream, dark brown" in prompt.parts["scene"]
    assert "vertical composition" in prompt.parts["style"]
    assert "\n" not in prompt.text


def test_render_bilingual(library: PromptLibrary) -> None:
    template = library.get("daily-poster")
    prompt = render_prompt(template, poster_vars(), "bilingual")
    zh = render_prompt(template, poster_vars(), "zh")
    en = render_prompt(template, poster_vars(), "en")
    assert prompt.text == f"{zh.text} / {en.text}"
    assert prompt.language == "bilingual"
    assert list(prompt.parts) == [f"zh.{p}" for p in PARTS] + [f"en.{p}" for p in PARTS]
    assert prompt.parts["en.subject"] == en.parts["subject"]


def test_trend_is_optional(library: PromptLibrary) -> None:
    with_trend = render_prompt(library.get("daily-poster"), poster_vars(), "en")
    without = render_prompt(library.get("daily-poster"), poster_vars(trend=None), "en")
    assert "trending topic" in with_trend.text
    assert "trending topic" not in without.text


def test_variants_differ(library: PromptLibrary) -> None:
    texts = {
        render_prompt(library.get("daily-poster"), poster_vars(variant=v), "zh").text
        for v in range(1, 5)
    }
    assert len(texts) == 4


def test_trend_reply(library: PromptLibrary) -> None:
    brand = poster_vars()["brand"]
    variables = {"brand": brand, "comment": {"keywords": ["拿铁", "猫咪"]}}
    prompt = render_prompt(library.get("trend-reply"), variables, "zh")
    assert "拿铁、猫咪" in prompt.text
    assert prompt.template == "trend-reply" and prompt.version == "1.0.0"


# ---------------------------------------------------------------------------------------------
# Errors while rendering


def test_missing_variable_names_variable_template_and_part(library: PromptLibrary) -> None:
    variables = poster_vars()
    del variables["theme"]
    with pytest.raises(PromptError) as err:
        render_prompt(library.get("daily-poster"), variables, "zh")
    message = str(err.value)
    assert "'daily-poster'" in message and "zh.subject" in message
    assert "undefined variable 'theme'" in message
    assert "brand, day, format, trend, variant" in message  # what was provided


def test_missing_key_names_the_attribute(library: PromptLibrary) -> None:
    variables = poster_vars(theme={"zh": "只有中文"})
    with pytest.raises(PromptError, match=r"en\.subject.*has no attribute 'en'"):
        render_prompt(library.get("daily-poster"), variables, "en")


@pytest.mark.parametrize(
    "title",
    [
        "{{ 7*7 }}",
        "{% for x in range(3) %}boom{% endfor %}",
        "{{ ''.__class__.__mro__ }}",
        "{# comment #}",
        "<script>&amp;</script>",
    ],
)
def test_variables_are_data_never_templates(library: PromptLibrary, title: str) -> None:
    trend = {"title": title, "source": "evil", "score": None}
    theme = {"zh": title, "en": title}
    for language in ("zh", "en"):
        prompt = render_prompt(library.get("daily-poster"), poster_vars(trend=trend, theme=theme),
                               language)
        assert title in prompt.text
    assert "49" not in render_prompt(
        library.get("daily-poster"), poster_vars(trend={"title": "{{ 7*7 }}"}), "en"
    ).text


@pytest.mark.parametrize(
    "expression",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ theme.__init__.__globals__ }}",
        "{{ theme.zh.format.__self__ }}",
    ],
)
def test_sandbox_escapes_raise_prompt_error(expression: str) -> None:
    with pytest.raises(PromptError, match=r"'t' v1\.0\.0, zh\.scene.*sandbox"):
        render_prompt(template(scene=expression), {"theme": {"zh": "x"}}, "zh")


def test_sandbox_blocks_unsafe_calls() -> None:
    unsafe = template(style="{{ theme.update(zh='changed') }}")
    variables = {"theme": {"zh": "x"}}
    with pytest.raises(PromptError, match=r"zh\.style: blocked by the sandbox"):
        render_prompt(unsafe, variables, "zh")
    assert variables == {"theme": {"zh": "x"}}


def test_runtime_errors_become_prompt_errors() -> None:
    with pytest.raises(PromptError, match=r"zh\.action: rendering failed: .*Error"):
        render_prompt(template(action="{{ 1 // variant }}"), {"variant": 0}, "zh")


# ---------------------------------------------------------------------------------------------
# Validation of the library


def test_syntax_error_names_template_language_and_part() -> None:
    bad = {
        "name": "broken",
        "version": "1.0.0",
        "zh": parts().model_dump(),
        "en": parts(lighting="{% if trend %}no endif").model_dump(),
    }
    with pytest.raises(ValidationError) as err:
        PromptLibrary.model_validate({"kind": "prompts", "templates": [bad]})
    message = str(err.value)
    assert "templates.0" in message
    assert "template 'broken', en.lighting: Jinja2 syntax error" in message


def test_duplicate_names_rejected() -> None:
    with pytest.raises(ValidationError, match="'same' is used twice"):
        PromptLibrary(templates=[template("same"), template("other"), template("same")])


def test_unknown_template_lists_available(library: PromptLibrary) -> None:
    with pytest.raises(PromptError, match="unknown prompt template 'nope'") as err:
        library.get("nope")
    assert "daily-poster" in str(err.value) and "trend-reply" in str(err.value)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("name", "Daily Poster", "must be a slug"), ("version", "v1", "must look like '1.0.0'")],
)
def test_name_and_version_shape(field: str, value: str, match: str) -> None:
    data = template().model_dump() | {field: value}
    with pytest.raises(ValidationError, match=match):
        PromptTemplate.model_validate(data)


def test_unknown_fields_rejected() -> None:
    data = template().model_dump()
    data["zh"]["negative"] = "blurry"
    with pytest.raises(ValidationError, match="extra"):
        PromptTemplate.model_validate(data)


# ---------------------------------------------------------------------------------------------
# Details


def test_whitespace_collapsed_and_empty_parts_skipped() -> None:
    spaced = PromptTemplate(
        name="spaced",
        version="2.1.0",
        zh=parts("  一杯  咖啡\n\n ", action="{% if trend %}{{ trend }}{% endif %}"),
        en=parts(" a   cup\n of coffee ", scene="{{ '' }}"),
    )
    zh = render_prompt(spaced, {"trend": None}, "zh")
    assert zh.text == "一杯 咖啡，一杯 咖啡，一杯 咖啡，一杯 咖啡"
    assert zh.parts["action"] == ""
    assert render_prompt(spaced, {}, "en").text == ", ".join(["a cup of coffee"] * 4)
    assert zh.version == "2.1.0"


@pytest.mark.parametrize(
    ("value", "en", "zh"),
    [("#C8102E", "true red", "正红色"), ("#F5E6C8", "cream", "奶油色"),
     ("#2b2118", "dark brown", "深棕色"), ("sage green", "sage green", "sage green")],
)
def test_colour_name(value: str, en: str, zh: str) -> None:
    assert colour_name(value) == en
    assert colour_name(value, "zh") == zh


def test_task_wrapper_name() -> None:
    assert render_prompt_task.name == "render-prompt"
