"""Prompt templating: the real library rendered in zh/en/bilingual, and its error paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tasks.core.errors import PromptError
from tasks.prompts.templates import (
    PARTS,
    PromptLibrary,
    PromptParts,
    PromptTemplate,
    clean_copy,
    colour_name,
    copy_variable,
    quoted,
    render_prompt,
)
from tasks.steps.content import render_prompt_task

LIBRARY = Path(__file__).resolve().parents[3] / "configs" / "prompts" / "library.yaml"


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
    assert {"daily-poster", "trend-reply", "festival-poster", "ab-poster"} <= set(library.names)
    assert library.get("daily-poster").version == "1.0.0"
    assert library.get("festival-poster").headline_overlay
    assert not library.get("daily-poster").headline_overlay


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


# ---------------------------------------------------------------------------------------------
# Copy slots, additions, festival and A/B variables


def festival_vars(**overrides: Any) -> dict[str, Any]:
    """The variables the planner passes since rules, festivals and variants (tasks/content/plan.py)."""
    festival = {"key": "spring-festival", "zh": "春节", "en": "Spring Festival", "kind": "chinese",
                "date": "2027-02-06"}
    variables = poster_vars(
        theme={"zh": "周末露营的咖啡时光", "en": "weekend camping with coffee", "colour": None},
        festivals=[festival], festival=festival, copy={"zh": "新春快乐", "en": "Happy Spring Festival"},
        headline_overlay=False,
        axes={"composition": None, "lighting": None, "palette": None, "copy": None},
        mapping={},
    )
    variables["brand"] = {**variables["brand"], "fragments": {
        "festive": {"zh": "正红色与金色的节日点缀", "en": "true-red and gold festive accents"}}}
    variables.update(overrides)
    return variables


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ('新春"快乐"', "新春快乐"),
        ("“中秋”快乐", "中秋快乐"),
        ("it's {{ 7*7 }}", "its 7*7"),
        ("{% for x in y %}", "% for x in y %"),
        ("line one\nline two\r\tend", "line one line two end"),
        ("zero\u200bwidth\x00nul", "zero width nul"),
        ("「引号」『书名』 and `code` \\back", "引号书名 and code back"),
        ("  spaced   out  ", "spaced out"),
    ],
)
def test_clean_copy_strips_what_could_break_prompt_or_template(raw: str, clean: str) -> None:
    assert clean_copy(raw) == clean


def test_copy_is_length_limited_and_quoted(library: PromptLibrary) -> None:
    template = library.get("ab-poster")  # 12 zh characters, 28 en
    copy = copy_variable({"zh": "一二三四五六七八九十一二三四", "en": "a" * 40}, template)
    assert copy == {"zh": "一二三四五六七八九十一二", "en": "a" * 28}
    assert quoted("新春“快乐”", "zh") == "“新春快乐”"
    assert quoted('say "hi"\n', "en") == '"say hi"'
    assert copy_variable(None, template) is None
    assert copy_variable({"zh": '""', "en": "{}"}, template) is None  # nothing left to draw
    assert template.copy_limit("zh") == 12 and template.copy_limit("en") == 28
    assert library.get("daily-poster").copy_limit("en") == 48  # default: twice the zh limit


def test_copy_cannot_escape_its_quotes(library: PromptLibrary) -> None:
    nasty = copy_variable({"zh": '好”，画面里写着“坏', "en": 'ok", draw "evil'}, library.get("ab-poster"))
    prompt = render_prompt(library.get("ab-poster"), festival_vars(copy=nasty), "bilingual")
    assert "“好，画面里写着坏”" in prompt.text
    assert '"ok, draw evil"' in prompt.text
    assert prompt.text.count("“") == prompt.text.count("”") == 1


def test_festival_poster_with_overlay_asks_for_clean_space(library: PromptLibrary) -> None:
    template = library.get("festival-poster")
    drawn = render_prompt(template, festival_vars(), "bilingual")
    assert "“新春快乐”" in drawn.text and '"Happy Spring Festival"' in drawn.text
    assert "春节限定海报" in drawn.text and "a Spring Festival poster" in drawn.text
    assert "正红色与金色的节日点缀" in drawn.text  # brand.fragments.festive
    typeset = render_prompt(template, festival_vars(copy=None, headline_overlay=True), "bilingual")
    assert "新春快乐" not in typeset.text and "Happy Spring" not in typeset.text
    assert "不出现任何文字" in typeset.text and "no text" in typeset.text
    no_festival = render_prompt(template, festival_vars(festival=None, festivals=[]), "zh")
    assert "节日限定海报" in no_festival.text


def test_axes_and_mapping_are_template_variables(library: PromptLibrary) -> None:
    axes = {"composition": {"zh": "三分法构图", "en": "rule of thirds"},
            "lighting": {"zh": "傍晚逆光", "en": "golden-hour backlight"},
            "palette": {"zh": "深咖啡色配色", "en": "an espresso palette"},
            "copy": {"zh": "慢下来", "en": "slow down"}}
    theme = {"zh": "手冲咖啡", "en": "pour-over", "colour": {"code": "R01", "zh": "哑光正红色",
                                                             "en": "matte true red"}}
    prompt = render_prompt(library.get("ab-poster"), festival_vars(axes=axes, theme=theme), "bilingual")
    for value in axes.values():
        if value["zh"] != "慢下来":  # the copy axis reaches the prompt through `copy`, not here
            assert value["zh"] in prompt.text and value["en"] in prompt.text
    assert "产品为哑光正红色" in prompt.text and "in matte true red" in prompt.text
    assert library.get("ab-poster").attributes_used("axes") == {"composition", "lighting", "palette"}
    assert library.get("ab-poster").uses("copy") and not library.get("daily-poster").uses("copy")


def test_mapping_keys_win_over_dict_methods() -> None:
    """`axes.copy` and `mapping.t.items` read the values, not dict.copy / dict.items."""
    reader = template(subject="{{ axes.copy.zh }}", action="{{ mapping.t.items.zh }}",
                      scene="{{ axes['copy'].zh }}")
    variables = {"axes": {"copy": {"zh": "文案"}}, "mapping": {"t": {"items": {"zh": "条目"}}}}
    prompt = render_prompt(reader, variables, "zh")
    assert prompt.parts["subject"] == "文案" and prompt.parts["action"] == "条目"
    assert prompt.parts["scene"] == "文案"
    with pytest.raises(PromptError, match="sandbox"):
        render_prompt(template(subject="{{ axes.update(x=1) }}"), variables, "zh")


def test_additions_are_appended_to_their_part(library: PromptLibrary) -> None:
    additions = {"scene": {"zh": ["红灯笼", "烟花"], "en": ["red lanterns", "{{ 7*7 }}"]},
                 "style": {"zh": ["剪纸风"], "en": []}}
    base = render_prompt(library.get("daily-poster"), poster_vars(), "bilingual")
    added = render_prompt(library.get("daily-poster"), poster_vars(), "bilingual", additions)
    assert added.parts["zh.scene"] == base.parts["zh.scene"] + "，红灯笼，烟花"
    assert added.parts["en.scene"] == base.parts["en.scene"] + ", red lanterns, {{ 7*7 }}"  # data
    assert added.parts["zh.style"] == base.parts["zh.style"] + "，剪纸风"
    assert added.parts["en.style"] == base.parts["en.style"]
    assert added.text == "，".join(added.parts[f"zh.{p}"] for p in PARTS) + " / " + ", ".join(
        added.parts[f"en.{p}"] for p in PARTS)
    with pytest.raises(PromptError, match="unknown prompt parts"):
        render_prompt(library.get("daily-poster"), poster_vars(), "zh", {"mood": {"zh": ["x"]}})


def test_new_template_fields_validate() -> None:
    data = template().model_dump() | {"copy_max_chars_en": 0}
    with pytest.raises(ValidationError, match="copy_max_chars_en"):
        PromptTemplate.model_validate(data)
