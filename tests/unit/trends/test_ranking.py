"""Ranking: near-duplicates across sources, scores, brand safety, reuse history, `trends pull`."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from flows.cli.trends import trends_app
from tasks.core.errors import ConfigError, StoreError
from tasks.steps.trends import rank_trends_task, record_trends_task
from tasks.store.objects import LocalStore
from tasks.trends.ranking import (
    RankingConfig,
    SafetyPolicy,
    ScoredTrend,
    TrendHistory,
    cluster_trends,
    is_near_duplicate,
    load_sensitive_terms,
    rank_trends,
    safety_reason,
    similarity,
    source_weights,
)
from tasks.trends.sources import SourceFailure, Trend, TrendReport, TrendSource

REPO = Path(__file__).resolve().parents[3]
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "trends"
SENSITIVE = REPO / "configs" / "safety" / "sensitive-terms.txt"
NOW = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)


def t(title: str, source: str = "s", rank: int = 1, score: float | None = None,
      age_h: float | None = None, tags: list[str] | None = None) -> Trend:
    published = None if age_h is None else NOW - timedelta(hours=age_h)
    return Trend(title=title, source=source, rank=rank, score=score, published=published,
                 tags=tags or [])


# ---------------------------------------------------------------------------------------------
# Near-duplicates


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("秋冬围巾穿搭", "秋冬 围巾 穿搭攻略"),  # 85.7: the same topic with "guide" added
        ("秋冬围巾穿搭", "#秋冬 围巾穿搭#"),  # the same key
        ("初雪限定饮品", "初雪限定饮品上新"),
        ("Citywalk", "Citywalk 路线"),  # mixed script: compared by character
        ("宠物友好咖啡馆", "宠物咖啡馆"),
        ("Matcha latte", "latte, MATCHA!"),  # word order and case do not matter
        ("Cozy desk setup ideas", "cozy desk setup idea"),
    ],
)
def test_near_duplicates_merge(a: str, b: str) -> None:
    assert is_near_duplicate(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("秋冬围巾穿搭", "秋冬大衣穿搭"),  # 66.7: scarves are not coats
        ("露营咖啡", "露营茶"),
        ("双十一预热", "双十二预热"),  # 80 by characters, but the numbers differ
        ("iPhone 16 launch", "iPhone 17 launch"),
        ("Winter skincare", "Winter haircare"),  # 80 by words: below the Latin threshold 88
        ("coffee", "camping coffee"),
        ("冬季护肤急救", "Winter skincare"),  # translations are not merged
    ],
)
def test_different_topics_stay_apart(a: str, b: str) -> None:
    assert not is_near_duplicate(a, b)


def test_similarity_is_character_level_for_chinese() -> None:
    assert similarity("秋冬围巾穿搭", "秋冬 围巾 穿搭攻略") == pytest.approx(85.714, abs=1e-3)
    assert similarity("秋冬围巾穿搭", "秋冬大衣穿搭") == pytest.approx(66.667, abs=1e-3)
    # One "word" per Chinese title: a word-level scorer would see nothing in common.
    assert similarity("周末 露营", "周末露营") == 100


def test_thresholds_are_configurable() -> None:
    strict = RankingConfig(cjk_threshold=90)
    assert not is_near_duplicate("秋冬围巾穿搭", "秋冬 围巾 穿搭攻略", strict)
    loose = RankingConfig(latin_threshold=75)
    assert is_near_duplicate("Winter skincare", "Winter haircare", loose)
    with pytest.raises(ValidationError):
        RankingConfig(cjk_threshold=120)


def test_clusters_follow_their_leader_without_chaining() -> None:
    trends = [t("秋冬围巾穿搭", "feed"), t("秋冬围巾穿搭攻略", "hot"), t("秋冬大衣穿搭", "hot"),
              t("秋冬 围巾 穿搭攻略大全", "api")]
    clusters = cluster_trends(trends)
    assert [[x.title for x in c] for c in clusters] == [
        ["秋冬围巾穿搭", "秋冬围巾穿搭攻略"],
        ["秋冬大衣穿搭"],
        # 80 against its neighbour "…攻略" but 75 against the leader: no chain
        ["秋冬 围巾 穿搭攻略大全"],
    ]


# ---------------------------------------------------------------------------------------------
# Scores


def test_score_formula() -> None:
    trends = [t("Alpha", "s1", 1, 1000, age_h=24), t("Beta", "s2", 2, 10, age_h=0),
              t("Gamma", "s1", 3)]
    ranked = rank_trends(trends, now=NOW)
    got = {s.title: s for s in ranked.kept}
    heat_beta = math.log1p(10) / math.log1p(1000)
    assert got["Alpha"].score == pytest.approx(1 + 1 + 0.5)  # rank 1, top heat, one half-life old
    assert got["Beta"].score == pytest.approx(1 / math.sqrt(2) + heat_beta + 1, abs=1e-6)
    assert got["Gamma"].score == pytest.approx(1 / math.sqrt(3) + 0 + 0.5, abs=1e-6)  # undated
    assert got["Beta"].parts.heat == pytest.approx(heat_beta, abs=1e-6)
    assert [s.title for s in ranked.kept] == ["Alpha", "Beta", "Gamma"]


def test_agreement_across_sources_merges_and_lifts() -> None:
    report = TrendReport(
        trends=[t("Matcha latte season", "feed", 1, 500, age_h=2, tags=["drinks"]),
                t("秋冬围巾穿搭", "feed", 2, 400, age_h=2),
                t("秋冬 围巾 穿搭攻略", "hot", 1, 900, age_h=1, tags=["穿搭"]),
                t("秋冬大衣穿搭", "hot", 2, 800, age_h=1)],
        failures=[SourceFailure(source="down", reason="HTTP 500")],
    )
    ranked = rank_trends(report, now=NOW)
    top = ranked.kept[0]
    assert top.title == "秋冬围巾穿搭"  # the first listed title leads the merged topic
    assert top.sources == ["feed", "hot"] and top.parts.agree == 1
    assert top.variants == ["秋冬 围巾 穿搭攻略"]
    assert top.trend.score == 900 and top.trend.tags == ["穿搭"]
    assert top.keys == ["秋冬围巾穿搭", "秋冬围巾穿搭攻略"]
    # rank 1 of its source beats rank 2 with more heat: 1 + 0.914 + 0.944 > 0.707 + 0.983 + 0.972
    assert [s.title for s in ranked.kept[1:]] == ["Matcha latte season", "秋冬大衣穿搭"]
    assert ranked.failures == report.failures  # carried through for the caller to show

    no_agree = rank_trends(report, now=NOW, config=RankingConfig(w_agree=0))
    assert no_agree.kept[0].score == pytest.approx(top.score - 0.5)


def test_ranking_is_deterministic_and_ties_break_by_title() -> None:
    trends = [t("b topic", "s", 1), t("a topic", "s", 1), t("c topic", "x", 1)]
    first = rank_trends(trends, now=NOW)
    assert first == rank_trends(trends, now=NOW)
    assert [s.title for s in first.kept] == ["a topic", "b topic", "c topic"]  # equal scores


def test_source_weight_and_recency_half_life() -> None:
    sources = [TrendSource(name="calendar", kind="csv", url="c.csv", weight=2.0),
               TrendSource(name="hot", kind="csv", url="h.csv")]
    trends = [t("Plain", "hot", 1, age_h=0), t("Planned", "calendar", 1, age_h=0)]
    ranked = rank_trends(trends, now=NOW, weights=source_weights(sources))
    assert [s.title for s in ranked.kept] == ["Planned", "Plain"]
    assert ranked.kept[0].parts.rank == 2.0

    week = RankingConfig(half_life_h=168)
    old = rank_trends([t("Old", age_h=168)], now=NOW, config=week).kept[0]
    assert old.parts.recency == pytest.approx(0.5)
    future = rank_trends([t("Soon", age_h=-48)], now=NOW).kept[0]  # a calendar date ahead
    assert future.parts.recency == 1.0


def test_limit_keeps_the_best() -> None:
    trends = [t(f"topic {c}", "s", i + 1) for i, c in enumerate("abcdef")]
    assert [s.title for s in rank_trends(trends, now=NOW, limit=2).kept] == ["topic a", "topic b"]


# ---------------------------------------------------------------------------------------------
# Brand safety


def test_safety_filter_drops_with_the_term_named() -> None:
    policy = SafetyPolicy(blocklist=["奶茶", "bet"], deny_topics=["politics", "crypto*"])
    trends = [
        t("周末 奶 茶 地图", "a", 1),  # spaces do not hide a Chinese term
        t("Alphabet soup recipes", "a", 2),  # "bet" is a whole word only...
        t("Best bet for brunch", "a", 3),  # ...and here it is one
        t("Election night snacks", "a", 4, tags=["Politics"]),  # deny topic in a tag
        t("Cryptocurrency cafe", "a", 5),  # prefix term
        t("网络赌博新套路", "a", 6),  # the shared list
        t("围炉煮茶", "a", 7),
    ]
    ranked = rank_trends(trends, policy, sensitive_terms=load_sensitive_terms(SENSITIVE), now=NOW)
    assert {s.title for s in ranked.kept} == {"Alphabet soup recipes", "围炉煮茶"}
    reasons = {d.trend.title: (d.rule, d.reason) for d in ranked.dropped}
    assert reasons == {
        "周末 奶 茶 地图": ("blocklist", "brand blocklist term '奶茶' in title '周末 奶 茶 地图'"),
        "Best bet for brunch": ("blocklist", "brand blocklist term 'bet' in title 'Best bet for brunch'"),
        "Election night snacks": ("deny_topic", "brand deny topic 'politics' in tag 'Politics'"),
        "Cryptocurrency cafe": ("deny_topic", "brand deny topic 'crypto*' in title 'Cryptocurrency cafe'"),
        "网络赌博新套路": ("sensitive", "shared sensitive term '赌博' in title '网络赌博新套路'"),
    }


def test_a_term_in_any_merged_title_drops_the_topic() -> None:
    trends = [t("秋冬围巾穿搭", "feed"), t("秋冬围巾穿搭高仿", "hot")]
    ranked = rank_trends(trends, sensitive_terms=["高仿"], now=NOW)
    assert ranked.kept == []
    assert ranked.dropped[0].trend.title == "秋冬围巾穿搭"
    assert "'高仿' in title '秋冬围巾穿搭高仿'" in ranked.dropped[0].reason


def test_safety_reason_for_one_trend() -> None:
    assert safety_reason(t("Casino night"), sensitive_terms=["casino*"]) is not None
    assert safety_reason(t("Occasional coffee"), sensitive_terms=["casino*"]) is None


def test_sensitive_terms_file(tmp_path: Path) -> None:
    shipped = load_sensitive_terms(SENSITIVE)
    assert {"赌博", "porn*", "高仿", "包治百病"} <= set(shipped)
    header = SENSITIVE.read_text(encoding="utf-8").splitlines()[:6]
    assert any(line.startswith("# THIS IS A STARTER LIST") and "must review" in " ".join(header)
               for line in header)

    path = tmp_path / "terms.txt"
    path.write_text("# header\n\n赌博  # gambling\n  casino*\n", encoding="utf-8")
    assert load_sensitive_terms(path) == ["赌博", "casino*"]
    path.write_text("ok\n***\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"terms.txt: line 2: a term needs a letter") as err:
        load_sensitive_terms(path)
    assert err.value.value == "***"
    with pytest.raises(ConfigError, match="sensitive-terms file not found"):
        load_sensitive_terms(tmp_path / "missing.txt")


def test_safety_policy_rejects_empty_terms() -> None:
    with pytest.raises(ValidationError, match="empty term '  '"):
        SafetyPolicy(blocklist=["  "])
    with pytest.raises(ValidationError, match="extra"):
        SafetyPolicy(allowlist=["x"])  # type: ignore[call-arg]


# ---------------------------------------------------------------------------------------------
# History


def test_history_excludes_recent_use_and_expires(tmp_path: Path) -> None:
    history = TrendHistory(LocalStore(tmp_path))
    used = rank_trends([t("秋冬围巾穿搭", "feed"), t("秋冬 围巾 穿搭攻略", "hot")], now=NOW).kept
    key = history.record("demo", used, NOW)
    assert key is not None and key.startswith("_trends/history/demo/2026-11-22/")
    assert history.record("demo", [], NOW) is None

    assert history.recent_keys("demo", 7, NOW + timedelta(days=3)) == {"秋冬围巾穿搭", "秋冬围巾穿搭攻略"}
    assert history.recent_keys("demo", 7, NOW + timedelta(days=7)) == set()  # exactly N days: free
    assert history.recent_keys("other", 7, NOW) == set()  # per brand

    later = NOW + timedelta(days=2)
    keys = history.recent_keys("demo", 7, later)
    ranked = rank_trends([t("秋冬围巾穿搭攻略大全", "x", 1), t("Citywalk", "x", 2)], None, keys, now=later)
    assert [s.title for s in ranked.kept] == ["Citywalk"]
    assert ranked.dropped[0].rule == "history"  # a near-duplicate of a used trend counts too
    assert ranked.dropped[0].reason == "used recently for this brand (history has '秋冬围巾穿搭攻略')"


def test_history_prune_and_bad_brand(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    history = TrendHistory(store, prefix="hist")
    history.record("demo", [t("old")], NOW - timedelta(days=30))
    history.record("demo", [t("new")], NOW)
    assert history.prune("demo", 14, NOW) == 1
    assert history.recent_keys("demo", 60, NOW) == {"new"}
    with pytest.raises(StoreError, match="invalid brand 'a/b'"):
        history.record("a/b", [t("x")], NOW)
    store.put("hist/demo/2026-11-22/broken.json", b"{", overwrite=True)
    with pytest.raises(StoreError, match="unreadable trend history object"):
        history.recent_keys("demo", 1, NOW)


def test_task_wrappers(tmp_path: Path) -> None:
    assert rank_trends_task.name == "rank-trends"
    assert record_trends_task.name == "record-trends" and record_trends_task.retries == 2
    store_url = (tmp_path / "store").as_uri()
    report = TrendReport(trends=[t("围炉煮茶", "a", 1), t("网络赌博", "a", 2), t("Citywalk", "a", 3)],
                         failures=[])
    # `.fn` is the plain function under the Prefect task: no flow run needed here
    assert record_trends_task.fn(store_url, "demo", [t("Citywalk")]) is not None
    ranked = rank_trends_task.fn(report, SafetyPolicy(), str(SENSITIVE), store_url, "demo", 14)
    assert [s.title for s in ranked.kept] == ["围炉煮茶"]
    assert all(isinstance(s, ScoredTrend) for s in ranked.kept)
    assert [d.rule for d in ranked.dropped] == ["sensitive", "history"]


# ---------------------------------------------------------------------------------------------
# `zpipe trends pull`


runner = CliRunner()
SOURCES = [str(REPO / "configs" / "sources" / name)
           for name in ("sample-feed.yaml", "sample-hot.yaml", "brand-calendar.yaml")]


def _brand(tmp_path: Path, safety: str) -> Path:
    path = tmp_path / "brand.yaml"
    path.write_text(f"kind: brand\nslug: demo\nname: Demo\n{safety}", encoding="utf-8")
    return path


def _broken_source(tmp_path: Path) -> Path:
    (tmp_path / "broken.xml").write_text("<rss><channel><<<not xml", encoding="utf-8")
    path = tmp_path / "broken.yaml"
    path.write_text("kind: source\nname: broken\nformat: rss\nurl: broken.xml\n", encoding="utf-8")
    return path


def test_pull_json(tmp_path: Path) -> None:
    brand = _brand(tmp_path, "safety:\n  blocklist: [咖啡]\n  deny_topics: [promo]\n")
    result = runner.invoke(trends_app, ["pull", *SOURCES, str(_broken_source(tmp_path)), "--json",
                                        "--brand", str(brand), "--blocklist", "citywalk",
                                        "--now", "2026-11-22T12:00:00+08:00", "--limit", "5"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == {"trends", "dropped", "failures", "notes"}
    assert [x["rank"] for x in out["trends"]] == [1, 2, 3, 4, 5]
    scores = [x["score"] for x in out["trends"]]
    assert scores == sorted(scores, reverse=True)
    first, second = out["trends"][:2]
    assert (first["title"], first["sources"], first["variants"]) == (
        "初雪限定饮品", ["sample-hot", "brand-calendar"], ["初雪限定饮品上新"])
    assert first["tags"] == ["hot-search", "calendar", "launch", "seasonal"]
    assert (second["title"], second["sources"]) == ("秋冬围巾穿搭", ["sample-feed", "sample-hot"])
    assert set(first) >= {"score", "published", "url", "heat", "parts"}

    dropped = {d["title"]: d["reason"] for d in out["dropped"]}
    assert dropped["露营咖啡"] == "brand blocklist term '咖啡' in title '露营咖啡'"
    assert dropped["Citywalk"] == "brand blocklist term 'citywalk' in title 'Citywalk'"
    assert dropped["双十一预热"] == "brand deny topic 'promo' in tag 'promo'"
    assert [f["source"] for f in out["failures"]] == ["broken"]
    assert "not well-formed" in out["failures"][0]["reason"]

    again = runner.invoke(trends_app, ["pull", *SOURCES, "--json", "--brand", str(brand),
                                       "--blocklist", "citywalk", "--now", "2026-11-22T04:00:00Z",
                                       "--limit", "5"])
    assert json.loads(again.stdout)["trends"] == out["trends"]  # same time, same answer


def test_pull_table_and_history(tmp_path: Path) -> None:
    store = tmp_path / "store"
    TrendHistory(LocalStore(store)).record("demo", [t("秋冬围巾穿搭")], NOW)
    brand = _brand(tmp_path, "")
    result = runner.invoke(trends_app, ["pull", *SOURCES, "--brand", str(brand), "--store",
                                        str(store), "--days", "7", "--now", "2026-11-23T00:00:00Z"])
    assert result.exit_code == 0, result.output
    assert "trends" in result.stdout and "双十一预热" in result.stdout
    assert "dropped" in result.output and "used recently for this brand" in result.output
    assert LocalStore(store).list("_trends/http-cache/") == []  # file sources need no HTTP cache


def test_pull_config_errors_and_total_failure(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: rss\nname: x\nurl: feed.xml\n", encoding="utf-8")
    result = runner.invoke(trends_app, ["pull", str(bad)])
    assert result.exit_code == 2 and "format: rss" in result.output

    brand = _brand(tmp_path, "safety:\n  blocklist: broken\n")
    result = runner.invoke(trends_app, ["pull", *SOURCES, "--brand", str(brand)])
    assert result.exit_code == 2 and "safety.blocklist" in result.output

    result = runner.invoke(trends_app, ["pull", str(_broken_source(tmp_path)), "--json"])
    assert result.exit_code == 1  # every source failed: nothing to rank
    assert json.loads(result.stdout)["failures"][0]["source"] == "broken"
