"""Campaign rules and A/B variants: the prompts they produce, what they record, their errors."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tasks.config.schema import EngineSettings, load_campaign, parse_week
from tasks.content.plan import brand_fingerprint, plan_week, plan_week_slots
from tasks.core.errors import ConfigError
from tasks.prompts.calendar import festivals_on
from tasks.prompts.rules import Rule, Slot, apply_rules, matches
from tasks.publish.batch import build_sidecar, label_job
from tasks.trends.sources import Trend
from tests.helpers import noise_result

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"
WEEKLY = CONFIGS / "campaigns/weekly-demo.yaml"
AB = CONFIGS / "campaigns/ab-demo.yaml"
ENGINE = EngineSettings(preview_scale=0.25)


@pytest.fixture()
def config_tree(tmp_path: Path) -> Path:
    shutil.copytree(CONFIGS, tmp_path / "configs")
    return tmp_path / "configs"


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def _plan(path: Path, week: str, trends=(), engine: EngineSettings = ENGINE):
    bundle = load_campaign(path)
    label, monday = parse_week(week, date(2026, 1, 1))
    return plan_week_slots(bundle, label, monday, list(trends), engine, brand_fingerprint(bundle))


def _slot(**overrides) -> Slot:
    values = {"day": date(2027, 2, 6), "weekday": "sat", "format": "1:1", "variant": 1,
              "festivals": festivals_on(date(2027, 2, 6)), "trend": None}
    return Slot(**(values | overrides))


def _rule(**data) -> Rule:
    return Rule.model_validate({"name": "r", "then": {"add": {"zh": ["甲"], "en": ["a"]}}} | data)


# ---------------------------------------------------------------------------------------------
# The demo campaign on festival weeks


def test_spring_festival_2027_gets_lanterns_and_fireworks_on_saturday() -> None:
    plan = _plan(WEEKLY, "2027-W05")
    assert len(plan.jobs) == 14 and not plan.skipped
    festive = [j for j in plan.jobs if "spring-festival" in j.rules]
    assert {(j.weekday, j.date) for j in festive} == {("sat", date(2027, 2, 6))}
    for job in festive:
        assert "红灯笼" in job.prompt.text and "烟花" in job.prompt.text
        assert "red lanterns" in job.prompt.text and "fireworks" in job.prompt.text
        assert "红灯笼" in job.prompt.parts["zh.scene"]  # appended to the scene part
        assert (job.prompt.template, job.prompt.version) == ("festival-poster", "1.0.0")
        assert job.festivals[0]["zh"] == "春节" and "春节限定海报" in job.prompt.text
        assert job.copy_text == {"zh": "新春快乐", "en": "Happy Spring Festival"}
        # typeset, not asked of the model: the prompt asks for clean space instead
        assert job.overlay_lines == ["新春快乐", "Happy Spring Festival"]
        assert "新春快乐" not in job.prompt.text and "不出现任何文字" in job.prompt.text
    for job in plan.jobs:
        if job not in festive:
            assert "红灯笼" not in job.prompt.text and job.prompt.template == "daily-poster"
            assert job.rules == [] and job.overlay_lines == []
    friday = next(j for j in plan.jobs if j.weekday == "fri")
    assert friday.festivals[0]["zh"] == "除夕"  # listed, but no rule fires on it


def test_mid_autumn_2027_gets_full_moon_and_mooncakes_on_wednesday() -> None:
    plan = _plan(WEEKLY, "2027-W37")
    moon = [j for j in plan.jobs if j.rules == ["mid-autumn"]]
    assert {j.date for j in moon} == {date(2027, 9, 15)} and len(moon) == 2
    for job in moon:
        assert "满月" in job.prompt.text and "月饼" in job.prompt.text
        assert "full moon" in job.prompt.text and "mooncakes" in job.prompt.text
    assert not any("月饼" in j.prompt.text for j in plan.jobs if j not in moon)


def test_week_without_rules_firing_is_unchanged() -> None:
    """2026-W48 (the flow test's week): daily-poster 1.0.0 everywhere, nothing recorded."""
    jobs = plan_week(load_campaign(WEEKLY), "2026-W48", date(2026, 11, 23), [], ENGINE, "fp")
    assert len(jobs) == 14
    assert all(j.prompt.template == "daily-poster" and j.prompt.version == "1.0.0" for j in jobs)
    assert all(j.rules == [] and j.overlay_lines == [] and j.variant_axes == {} for j in jobs)
    assert [j.festivals[0]["en"] for j in jobs if j.festivals] == ["Thanksgiving"] * 2 + ["Black Friday"] * 2


# ---------------------------------------------------------------------------------------------
# Conditions


def test_conditions_and_within_a_rule_any_within_a_list() -> None:
    assert matches(_rule(when={"festival": ["中秋", "Spring Festival"]}).when, _slot())
    assert matches(_rule(when={"festival_kind": ["chinese"], "weekday": ["sat"]}).when, _slot())
    assert not matches(_rule(when={"festival": ["春节"], "weekday": ["sun"]}).when, _slot())
    assert not matches(_rule(when={"festival": ["春节"]}).when, _slot(day=date(2027, 2, 7), festivals=[]))
    assert matches(_rule(when={"format": ["9:16"]}).when, _slot(format="9:16"))
    assert not matches(_rule(when={"format": ["9:16"]}).when, _slot())
    assert matches(_rule(when={"variant": [2]}).when, _slot(variant=2))
    assert matches(_rule(when={}).when, _slot())  # no condition: always


def test_trend_conditions_read_tags_defensively() -> None:
    tagged = SimpleNamespace(title="秋冬 Coffee 新品", source="s", score=1.0, tags=["Coffee", "秋冬"])
    untagged = Trend(title="初雪限定饮品", source="s", rank=1)  # the Trend model may have no tags
    by_tag = _rule(when={"trend_tags": ["coffee"]}).when
    by_word = _rule(when={"trend_keywords": ["限定", "tea"]}).when
    assert matches(by_tag, _slot(trend=tagged))
    assert not matches(by_tag, _slot(trend=untagged)) and not matches(by_tag, _slot(trend=None))
    assert matches(by_word, _slot(trend=untagged)) and not matches(by_word, _slot(trend=tagged))
    assert matches(by_word, _slot(trend={"title": "tea time", "tags": []}))


def test_rules_apply_in_order() -> None:
    rules = [
        Rule.model_validate({"name": "a", "then": {"template": "ab-poster", "copy": {"zh": "一", "en": "one"},
                                                   "add": {"zh": ["甲"], "en": ["a"]}}}),
        Rule.model_validate({"name": "b", "when": {"weekday": ["mon"]}, "then": {"template": "x"}}),
        Rule.model_validate({"name": "c", "then": {"copy": {"zh": "二", "en": "two"},
                                                   "add": [{"zh": ["乙"], "en": ["b"]},
                                                           {"part": "style", "zh": ["丙"], "en": ["c"]}]}}),
        Rule.model_validate({"name": "d", "when": {"format": ["1:1"]}, "then": {"skip": True}}),
        Rule.model_validate({"name": "e", "then": {"template": "never"}}),
    ]
    story = apply_rules(rules, _slot(format="9:16"), "daily-poster")
    assert story.fired == ["a", "c", "e"] and not story.skip
    assert story.template == "never"  # the last template switch wins
    assert story.copy_text.zh == "二" and story.copy_rule == "c"
    assert story.additions == {"scene": {"zh": ["甲", "乙"], "en": ["a", "b"]},
                               "style": {"zh": ["丙"], "en": ["c"]}}
    square = apply_rules(rules, _slot(), "daily-poster")
    assert square.skip and square.fired == ["a", "c", "d"]  # skip stops the rules


# ---------------------------------------------------------------------------------------------
# Rules through the campaign config


def test_skip_and_weekday_format_rules_in_a_campaign(config_tree: Path) -> None:
    campaign = config_tree / "campaigns/weekly-demo.yaml"
    _edit(campaign, lambda d: d["rules"].extend([
        {"name": "no-sunday-stories", "when": {"weekday": ["sun"], "format": ["9:16"]},
         "then": {"skip": True}},
        {"name": "monday-steam", "when": {"weekday": ["mon"], "format": ["1:1"]},
         "then": {"add": {"part": "lighting", "zh": ["咖啡热气袅袅"], "en": ["curling steam"]}}},
    ]))
    plan = _plan(campaign, "2027-W05")
    assert len(plan.jobs) == 13
    assert [(s.weekday, s.format, s.rules) for s in plan.skipped] == [("sun", "9:16", ["no-sunday-stories"])]
    steam = [j for j in plan.jobs if "咖啡热气袅袅" in j.prompt.text]
    assert [(j.weekday, j.format) for j in steam] == [("mon", "1:1")]
    assert steam[0].rules == ["monday-steam"] and "curling steam" in steam[0].prompt.parts["en.lighting"]


def test_trend_tag_rule_switches_template(config_tree: Path) -> None:
    campaign = config_tree / "campaigns/weekly-demo.yaml"
    _edit(campaign, lambda d: d["rules"].append(
        {"name": "coffee-trend", "when": {"trend_tags": ["coffee"]}, "then": {"template": "ab-poster"}}))
    tagged = SimpleNamespace(title="冷萃季", source="s", score=None, tags=["coffee"])
    plain = Trend(title="citywalk", source="s", rank=1)
    plan = _plan(campaign, "2026-W48", trends=[tagged, plain])
    switched = {j.weekday for j in plan.jobs if j.prompt.template == "ab-poster"}
    assert switched == {"mon", "wed", "fri", "sun"}  # trends alternate by day: tagged on even days
    assert all(j.rules == ["coffee-trend"] for j in plan.jobs if j.weekday in switched)


def test_rules_change_only_the_keys_of_the_images_they_fire_on(config_tree: Path) -> None:
    with_rules = _plan(WEEKLY, "2027-W05").jobs
    campaign = config_tree / "campaigns/weekly-demo.yaml"
    _edit(campaign, lambda d: d.update(rules=[]))
    without = _plan(campaign, "2027-W05").jobs
    changed = {j.weekday for j, k in zip(with_rules, without, strict=True) if j.key != k.key}
    assert changed == {"sat"}
    assert [j.key for j in _plan(WEEKLY, "2027-W05").jobs] == [j.key for j in with_rules]


@pytest.mark.parametrize(
    ("rule", "field", "message"),
    [
        ({"name": "x", "then": {"template": "nope"}}, "rules.0.then.template",
         r"rule 'x' names a template not in library.yaml; available: daily-poster.*\(got 'nope'\)"),
        ({"name": "x", "when": {"festival": ["Festivus"]}, "then": {"skip": True}}, "rules.0.when.festival",
         r"unknown festival 'Festivus'.*春节 \(spring-festival\)"),
        ({"name": "x", "when": {"weekday": ["funday"]}, "then": {"skip": True}}, "rules.0.when.weekday.0",
         r"'mon'"),
        ({"name": "x", "when": {"format": ["2:1"]}, "then": {"skip": True}}, "rules",
         r"unknown format '2:1'"),
        ({"name": "x", "then": {"skip": True, "template": "ab-poster"}}, "rules.0.then",
         r"skip: true makes no image"),
        ({"name": "x", "then": {}}, "rules.0.then", r"must do something"),
        ({"name": "Bad Name", "then": {"skip": True}}, "rules.0.name", r"pattern"),
        ({"name": "x", "then": {"add": {"part": "mood", "zh": ["a"], "en": ["a"]}}},
         "rules.0.then.add.0.part", r"'subject'"),
        ({"name": "x", "then": {"copy": {"zh": "你好", "en": "hi"}}}, "rules.0.then.copy",
         r"template 'daily-poster' has no copy slot"),
        ({"name": "x", "then": {"template": "ab-poster",
                                "copy": {"zh": "一二三四五六七八九十一二三", "en": "hi"}}},
         "rules.0.then.copy.zh", r"13 characters; template 'ab-poster' takes at most 12"),
    ],
)
def test_rule_errors_name_file_field_and_value(config_tree: Path, rule: dict, field: str,
                                               message: str) -> None:
    campaign = config_tree / "campaigns/weekly-demo.yaml"
    _edit(campaign, lambda d: d.update(rules=[rule]))
    with pytest.raises(ConfigError, match=message) as err:
        load_campaign(campaign)
    assert err.value.field == field and str(campaign) in str(err.value)


def test_duplicate_rule_names(config_tree: Path) -> None:
    campaign = config_tree / "campaigns/weekly-demo.yaml"
    _edit(campaign, lambda d: d["rules"].append(d["rules"][0]))
    with pytest.raises(ConfigError, match="rule name 'spring-festival' is used twice"):
        load_campaign(campaign)


# ---------------------------------------------------------------------------------------------
# A/B variants


def test_ab_variants_differ_on_every_declared_axis() -> None:
    plan = _plan(AB, "2026-W48")
    bundle = load_campaign(AB)
    axes = bundle.campaign.variants.axes
    assert set(axes) == {"composition", "lighting", "palette", "copy"}
    assert len(plan.jobs) == 7 * 1 * 2
    for weekday in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"):
        one, two = (j for j in plan.jobs if j.weekday == weekday)
        assert (one.variant, two.variant) == (1, 2) and one.seed != two.seed
        for name in axes:
            assert one.variant_axes[name] != two.variant_axes[name], name
            assert one.variant_axes[name] == axes[name][0].model_dump()
            assert two.variant_axes[name] == axes[name][1].model_dump()
        for name in ("composition", "lighting", "palette"):  # each axis value is in its prompt
            for job in (one, two):
                assert job.variant_axes[name]["zh"] in job.prompt.text
                assert job.variant_axes[name]["en"] in job.prompt.text
        assert one.copy_text == {"zh": "今天也要好好喝咖啡", "en": "Good coffee, good day"}
        assert "“今天也要好好喝咖啡”" in one.prompt.text and '"Good coffee, good day"' in one.prompt.text
        assert "“慢下来，喝一杯”" in two.prompt.text and '"Slow down and sip"' in two.prompt.text


def test_ab_festival_day_keeps_its_axes() -> None:
    saturday = [j for j in _plan(AB, "2027-W05").jobs if j.weekday == "sat"]
    assert [j.rules for j in saturday] == [["spring-festival", "weekend-mood"]] * 2
    assert all(j.prompt.template == "festival-poster" and "红灯笼" in j.prompt.text for j in saturday)
    assert saturday[0].prompt.text != saturday[1].prompt.text
    assert "傍晚温暖的逆光" in saturday[1].prompt.text  # variant 2's lighting
    assert saturday[0].overlay_lines == saturday[1].overlay_lines == ["新春快乐", "Happy Spring Festival"]


def test_colour_codes_and_trend_rule_in_ab_demo() -> None:
    trend = Trend(title="秋天的第一杯咖啡", source="s", rank=1)
    plan = _plan(AB, "2026-W48", trends=[trend])
    monday = next(j for j in plan.jobs if j.weekday == "mon")
    assert "哑光正红色" in monday.prompt.text and "matte true red" in monday.prompt.text
    assert all("trending-coffee" in j.rules and "烘焙咖啡豆" in j.prompt.text for j in plan.jobs)


def test_variants_int_count_and_cycling(config_tree: Path) -> None:
    campaign = config_tree / "campaigns/weekly-demo.yaml"
    _edit(campaign, lambda d: d.update(variants=3, rules=[]))
    jobs = _plan(campaign, "2026-W48").jobs
    assert len(jobs) == 42 and len({j.seed for j in jobs}) == 42
    assert all(j.variant_axes == {} for j in jobs)

    ab = config_tree / "campaigns/ab-demo.yaml"
    _edit(ab, lambda d: d["variants"].update(count=3))
    jobs = _plan(ab, "2026-W48").jobs
    first, _, third = (j for j in jobs if j.weekday == "mon")
    assert first.variant_axes == third.variant_axes  # two values per axis: the third cycles back
    assert first.seed != third.seed


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (lambda d: d["variants"]["axes"].update(mood=["calm", "busy"]), "variants.axes.mood",
         "template 'ab-poster' never reads axes.mood"),
        (lambda d: d["variants"]["axes"].update(lighting=["a", "a"]), "variants.axes",
         "axis 'lighting' repeats a value"),
        (lambda d: d["variants"]["axes"].update(palette=[]), "variants.axes", "axis 'palette' has no values"),
        (lambda d: d["variants"].update(count=17), "variants.count", "less than or equal to 16"),
        (lambda d: d["days"]["mon"].update(colour="Z99"), "days.mon.colour",
         r"not a code in the brand's mappings.colours; known: R01, C02, K03 \(got 'Z99'\)"),
        (lambda d: d["variants"]["axes"]["copy"].append({"zh": "一二三四五六七八九十一二三", "en": "x"}),
         "variants.axes.copy.2.zh", "13 characters"),
    ],
)
def test_variant_errors(config_tree: Path, change, field: str, message: str) -> None:
    ab = config_tree / "campaigns/ab-demo.yaml"
    _edit(ab, change)
    with pytest.raises(ConfigError, match=message) as err:
        load_campaign(ab)
    assert err.value.field == field


# ---------------------------------------------------------------------------------------------
# Sidecar


def test_sidecar_records_rules_festivals_axes_copy_and_overlay() -> None:
    bundle = load_campaign(AB)
    plan = _plan(AB, "2027-W05", engine=EngineSettings(preview_scale=0.5))
    job = next(j for j in plan.jobs if j.weekday == "sat" and j.variant == 2)
    result = noise_result(job)
    sidecar = build_sidecar(job, result, label_job(job, result, bundle.brand))
    assert sidecar["rules"] == ["spring-festival", "weekend-mood"]
    assert sidecar["festivals"][0]["zh"] == "春节"
    assert sidecar["variant_axes"]["lighting"] == {"zh": "傍晚温暖的逆光", "en": "warm golden-hour backlight"}
    assert sidecar["copy"] == {"zh": "新春快乐", "en": "Happy Spring Festival"}
    overlay = sidecar["headline_overlay"]
    assert overlay["lines"] == ["新春快乐", "Happy Spring Festival"] and overlay["bbox"][1] > 0
    assert sidecar["template"] == {"name": "festival-poster", "version": "1.0.0"}

    monday = next(j for j in plan.jobs if j.weekday == "mon")
    plain = build_sidecar(monday, noise_result(monday), label_job(monday, noise_result(monday), bundle.brand))
    assert plain["headline_overlay"] is None and plain["rules"] == []
    assert plain["copy"] == {"zh": "今天也要好好喝咖啡", "en": "Good coffee, good day"}


@pytest.mark.parametrize(("language", "lines"), [("zh", ["新春快乐"]), ("en", ["Happy Spring Festival"])])
def test_overlay_lines_follow_the_campaign_language(config_tree: Path, language: str,
                                                    lines: list[str]) -> None:
    campaign = config_tree / "campaigns/weekly-demo.yaml"
    _edit(campaign, lambda d: d.update(language=language))
    saturday = [j for j in _plan(campaign, "2027-W05").jobs if j.weekday == "sat"]
    assert all(j.overlay_lines == lines for j in saturday)
    marker = "红灯笼" if language == "zh" else "red lanterns"
    assert all(marker in j.prompt.text for j in saturday)
