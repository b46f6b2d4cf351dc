"""Brand fit (tasks/trends/relevance.py): the coffee brand never gets the skincare trend.

Function level (scoring, deny, jieba boundaries, fuzzy Latin words), ranking (dropped with a
reason), planning (the day falls back to its theme, the reason recorded), `zpipe prompts
preview` on the demo campaign, and config errors that name the file and the field.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli.preview import preview_week, prompts_app
from tasks.config.schema import EngineSettings, load_brand, load_campaign, load_config
from tasks.content.plan import brand_fingerprint, plan_week_slots
from tasks.core.errors import ConfigError
from tasks.trends.ranking import rank_trends
from tasks.trends.relevance import BrandFit, BrandTopics, TopicCategory, fit_reason, score
from tasks.trends.sources import Trend

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"
WEEKLY = CONFIGS / "campaigns/weekly-demo.yaml"
NOW = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
ENGINE = EngineSettings(model="tiny", preview_scale=0.25)
SKINCARE = "冬季护肤急救"
runner = CliRunner()


def t(title: str, rank: int = 1, tags: list[str] | None = None) -> Trend:
    return Trend(title=title, source="s", rank=rank, tags=tags or [])


@pytest.fixture(scope="module")
def coffee() -> BrandFit:
    """The demo coffee brand's fit, as its loader resolves it."""
    fit = load_brand(CONFIGS / "brands/demo.yaml").safety.fit
    assert fit is not None
    return fit


def _lexicon(**words: list[str]) -> dict[str, TopicCategory]:
    return {name: TopicCategory(name=name, zh=[w for w in ws if not w.isascii()],
                                en=[w for w in ws if w.isascii()]) for name, ws in words.items()}


# ---------------------------------------------------------------------------------------------
# Scoring


def test_skincare_is_denied_for_the_coffee_brand(coffee: BrandFit) -> None:
    assert fit_reason([SKINCARE], [], coffee) == (
        "deny_topic", "brand deny topic 'skincare': '护肤' in title '冬季护肤急救'")


def test_a_deny_topic_rejects_even_a_relevant_trend(coffee: BrandFit) -> None:
    assert score(["拿铁护肤"], [], coffee).score == 1.0
    rule, reason = fit_reason(["拿铁护肤"], [], coffee)
    assert rule == "deny_topic" and "'护肤'" in reason
    rule, reason = fit_reason(["New latte"], ["skincare"], coffee)  # a tag is enough
    assert rule == "deny_topic" and "in tag 'skincare'" in reason


@pytest.mark.parametrize(
    ("title", "expected", "word"),
    [
        ("秋冬热饮 拿铁", 1.0, "拿铁 (coffee)"),
        ("宠物友好咖啡馆", 1.0, "宠物友好咖啡馆 (cafe)"),  # 咖啡 and 咖啡馆 inside it count once
        ("咖啡馆地图", 1.0, "咖啡馆 (cafe)"),  # 咖啡 inside the one jieba word 咖啡馆
        ("初雪限定饮品", 0.8, "限定饮品 (drinks)"),  # 饮品 inside 限定饮品 counts once
        ("打工人早餐图鉴", 0.6, "早餐 (brunch)"),
        ("Matcha latte season", 1.0, "latte (coffee)"),
        ("Pumpkin spice lattes", 1.0, "latte (coffee)"),  # plural
        ("The expresso martini is back", 0.875, "espresso (coffee)"),  # rapidfuzz 87.5
    ],
)
def test_relevant_trends_score_high(coffee: BrandFit, title: str, expected: float, word: str) -> None:
    relevance = score([title], [], coffee)
    assert relevance.score == pytest.approx(expected, abs=0.01)
    assert relevance.matched[0] == word
    assert fit_reason([title], [], coffee) is None


@pytest.mark.parametrize("title", ["秋冬围巾穿搭", "手作陶艺体验", "Weekend farmers market", "多巴胺配色"])
def test_unrelated_trends_are_off_brand(coffee: BrandFit, title: str) -> None:
    rule, reason = fit_reason([title], [], coffee)
    assert rule == "relevance"
    assert reason.startswith("off-brand: relevance 0.00 < threshold 0.50 (no word of its topics: coffee")


def test_weak_evidence_adds_up_but_stays_below_one() -> None:
    topics = BrandTopics(categories={"outdoor": 0.4, "brunch": 0.4})
    fit = BrandFit.resolve(topics, _lexicon(outdoor=["citywalk", "露营"], brunch=["早餐"]))
    assert score(["citywalk"], [], fit).score == 0.4
    assert fit_reason(["citywalk"], [], fit) == (
        "relevance", "off-brand: relevance 0.40 < threshold 0.50 (only citywalk (outdoor))")
    both = score(["露营早餐 citywalk"], [], fit)
    assert both.score == pytest.approx(1 - 0.6 ** 3) and len(both.matched) == 3
    assert fit_reason(["露营早餐"], [], fit) is None  # 0.64 >= 0.5


def test_chinese_words_respect_jieba_word_boundaries() -> None:
    fit = BrandFit.resolve(BrandTopics(keywords={"zh": ["热饮", "茶"]}), {})
    assert score(["秋冬热饮"], [], fit).score == 1.0
    assert score(["加热饮料"], [], fit).score == 0.0  # 加热|饮料: 热饮 straddles two words
    assert score(["一杯茶"], [], fit).score == 1.0  # 一杯|茶: a whole word
    assert score(["下午喝茶"], [], fit).score == 1.0  # 下午|喝茶: the head of 喝茶
    assert score(["茶几收纳"], [], fit).score == 0.0  # one character at the start of 茶几


def test_latin_words_match_whole_words_only() -> None:
    fit = BrandFit.resolve(BrandTopics(keywords={"en": ["tea", "latte"]}), {})
    assert score(["Steam room"], [], fit).score == 0.0
    assert score(["Late night"], [], fit).score == 0.0  # short words are never fuzzy
    assert score(["TEA time"], [], fit).score == 1.0
    assert score(["周末citywalk喝tea"], [], fit).score == 1.0  # Latin word in Chinese text


def test_the_heaviest_listing_of_a_word_wins() -> None:
    topics = BrandTopics(categories={"tea": 0.6}, keywords={"zh": ["抹茶"]})
    fit = BrandFit.resolve(topics, _lexicon(tea=["抹茶", "煮茶"]))
    assert sorted((w.text, w.weight) for w in fit.words) == [("抹茶", 1.0), ("煮茶", 0.6)]


def test_scoring_is_deterministic(coffee: BrandFit) -> None:
    titles = ["秋冬热饮 拿铁", "露营咖啡", SKINCARE, "Citywalk"]
    first = [(score([x], [], coffee), fit_reason([x], [], coffee)) for x in titles]
    assert first == [(score([x], [], coffee), fit_reason([x], [], coffee)) for x in titles]


# ---------------------------------------------------------------------------------------------
# Ranking and planning


def test_ranking_drops_off_brand_trends_with_the_reason(coffee: BrandFit) -> None:
    brand = load_brand(CONFIGS / "brands/demo.yaml")
    trends = [t(SKINCARE, 1), t("秋冬热饮 拿铁", 2), t("手作陶艺体验", 3)]
    ranked = rank_trends(trends, brand.safety, now=NOW)
    assert [s.title for s in ranked.trends] == ["秋冬热饮 拿铁"]
    assert ranked.kept[0].relevance == 1.0 and ranked.kept[0].matched[0] == "拿铁 (coffee)"
    assert {d.trend.title: d.rule for d in ranked.dropped} == {SKINCARE: "deny_topic",
                                                               "手作陶艺体验": "relevance"}
    without_fit = brand.safety.model_copy(update={"fit": None})  # a brand with no `topics:`
    assert len(rank_trends(trends, without_fit, now=NOW).kept) == 3


def test_an_unrelated_week_falls_back_to_the_brand_theme() -> None:
    bundle = load_campaign(WEEKLY)
    unrelated = [t(SKINCARE, 1), t("手作陶艺体验", 2)]
    ranked = rank_trends(unrelated, bundle.brand.safety, now=NOW)
    assert ranked.trends == [] and len(ranked.dropped) == 2
    plan = plan_week_slots(bundle, "2026-W48", date(2026, 11, 23), ranked.trends, ENGINE,
                           brand_fingerprint(bundle))
    saturday = next(j for j in plan.jobs if j.weekday == "sat")
    assert saturday.trend is None and SKINCARE not in saturday.prompt.text
    assert "周末露营的咖啡时光" in saturday.prompt.text  # the day's own theme
    assert all(j.trend_note and "fits the brand's topics (relevance threshold 0.50)" in j.trend_note
               for j in plan.jobs)
    told = plan_week_slots(bundle, "2026-W48", date(2026, 11, 23), [], ENGINE,
                           brand_fingerprint(bundle), trend_note="every trend was off-brand")
    assert {j.trend_note for j in told.jobs} == {"every trend was off-brand"}


def test_jobs_with_a_trend_have_no_note() -> None:
    bundle = load_campaign(WEEKLY)
    plan = plan_week_slots(bundle, "2026-W48", date(2026, 11, 23), [t("露营咖啡")], ENGINE,
                           brand_fingerprint(bundle))
    assert all(j.trend == "露营咖啡" and j.trend_note is None for j in plan.jobs)


def test_topics_do_not_change_the_brand_fingerprint(tmp_path: Path) -> None:
    tree = tmp_path / "configs"
    shutil.copytree(CONFIGS, tree)
    _edit(tree / "brands/demo.yaml", lambda d: None)  # the same YAML, keys sorted
    before = brand_fingerprint(load_campaign(tree / "campaigns/weekly-demo.yaml"))
    _edit(tree / "brands/demo.yaml", lambda d: d["topics"].update(threshold=0.7, deny=[]))
    assert brand_fingerprint(load_campaign(tree / "campaigns/weekly-demo.yaml")) == before


# ---------------------------------------------------------------------------------------------
# `zpipe prompts preview` on the demo campaign (the sample feeds carry 冬季护肤急救)


def test_preview_never_gives_the_coffee_brand_the_skincare_trend() -> None:
    result = runner.invoke(prompts_app, ["preview", str(WEEKLY), "--week", "2026-W48", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert not any(SKINCARE in row["prompt"] or row["trend"] == SKINCARE for row in data["images"])
    dropped = {d["title"]: d for d in data["trends"]["dropped"]}
    assert dropped[SKINCARE]["rule"] == "deny_topic"
    assert dropped[SKINCARE]["reason"] == "brand deny topic 'skincare': '护肤' in title '冬季护肤急救'"
    assert dropped["秋冬围巾穿搭"]["rule"] == "relevance"
    # the demo still gets sensible trends: drinks, cafés, coffee, every day one of them
    used = {row["trend"] for row in data["images"]}
    assert {"初雪限定饮品", "宠物友好咖啡馆", "露营咖啡"} <= used and None not in used
    assert data["trends"]["used"] == 6 and data["trends"]["found"] == 15


def test_preview_prints_the_reason() -> None:
    result = runner.invoke(prompts_app, ["preview", str(WEEKLY), "--week", "2026-W48"])
    assert result.exit_code == 0, result.output
    assert "trend dropped: 冬季护肤急救 (brand deny topic 'skincare'" in result.output


def test_preview_of_an_unrelated_week_says_why_there_is_no_trend(tmp_path: Path) -> None:
    tree = tmp_path / "configs"
    shutil.copytree(CONFIGS, tree)
    _edit(tree / "brands/demo.yaml", lambda d: d["topics"].update(categories={"tech": 1.0}, deny=[]))
    data = preview_week(tree / "campaigns/weekly-demo.yaml", "2026-W48")
    assert data["trends"]["used"] == 0
    assert all(row["trend"] is None for row in data["images"])
    note = data["images"][0]["trend_note"]
    assert note.startswith("none of the week's 15 trends fits the brand")
    assert note.endswith("the day follows its own theme")


# ---------------------------------------------------------------------------------------------
# Config errors name the file and the field


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (lambda d: d["topics"]["categories"].update(cofee=1.0), "topics.categories.cofee",
         r"no category file .*cofee\.yaml; known: beauty, brunch, cafe, coffee"),
        (lambda d: d["topics"]["categories"].update(coffee=1.5), "topics.categories",
         r"category 'coffee': weight must be in \(0, 1\] \(got 1.5\)"),
        (lambda d: d["topics"].update(threshold=2), "topics.threshold", "less than or equal to 1"),
        (lambda d: d["topics"].update(keywords={"zh": ["  "]}), "topics.keywords.zh",
         "empty word"),
        (lambda d: d["topics"].update(keywordz=["x"]), "topics.keywordz", "unknown field"),
        (lambda d: d.update(topics={"threshold": 0.5}), "topics",
         "topics need categories or keywords"),
        (lambda d: d["topics"].update(library="../nowhere"), "topics.library",
         "topic library directory not found"),
        (lambda d: d.update(safety={"fit": {"words": []}}), "safety",
         "filled by the loader from the brand's `topics:`"),
    ],
)
def test_bad_topics_name_the_file_and_field(tmp_path: Path, change, field: str, message: str) -> None:
    tree = tmp_path / "configs"
    shutil.copytree(CONFIGS, tree)
    brand = tree / "brands/demo.yaml"
    _edit(brand, change)
    with pytest.raises(ConfigError) as err:
        load_config(brand)
    assert err.value.file == str(brand) and err.value.field == field
    assert re.search(message, str(err.value)), str(err.value)


def test_a_bad_category_file_names_that_file(tmp_path: Path) -> None:
    tree = tmp_path / "configs"
    shutil.copytree(CONFIGS, tree)
    category = tree / "topics/coffee.yaml"
    _edit(category, lambda d: d.update(name="kaffee"))
    with pytest.raises(ConfigError) as err:
        load_brand(tree / "brands/demo.yaml")
    assert err.value.file == str(category) and err.value.field == "name"
    _edit(category, lambda d: d.update(name="coffee", zh=[], en=[]))
    with pytest.raises(ConfigError, match="category 'coffee' has no words") as err:
        load_config(category)
    assert err.value.file == str(category)
