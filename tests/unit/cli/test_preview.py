"""`zpipe prompts preview`: the week's prompts without a model, a Prefect run or the network."""

from __future__ import annotations

import json
import shutil
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli.preview import preview_week, prompts_app
from tasks.config.schema import load_campaign, load_settings
from tasks.content.plan import brand_fingerprint, plan_week
from tasks.trends.ranking import load_sensitive_terms, rank_trends, source_weights
from tasks.trends.sources import ingest

REPO = Path(__file__).resolve().parents[3]
WEEKLY = REPO / "configs/campaigns/weekly-demo.yaml"
AB = REPO / "configs/campaigns/ab-demo.yaml"
runner = CliRunner()


def _json(*args: str) -> dict:
    result = runner.invoke(prompts_app, ["preview", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_spring_festival_week_shows_the_festival_on_saturday() -> None:
    data = _json(str(WEEKLY), "--week", "2027-W05", "--no-trends")
    assert (data["campaign"], data["week"], data["monday"]) == ("weekly-demo", "2027-W05", "2027-02-01")
    rows = data["images"]
    assert len(rows) == 14 and data["skipped"] == []
    assert {r["day"]: r["date"] for r in rows}["sat"] == "2027-02-06"
    for row in rows:
        festive = row["day"] == "sat"
        assert ("红灯笼" in row["prompt"] and "fireworks" in row["prompt"]) is festive
        assert (row["rules"] == ["spring-festival"]) is festive
        expected = ("festival-poster", "1.0.0") if festive else ("daily-poster", "1.0.0")
        assert (row["template"], row["version"]) == expected
    saturday = next(r for r in rows if r["day"] == "sat")
    assert saturday["festivals"][0]["zh"] == "春节"
    assert saturday["headline_overlay"] == ["新春快乐", "Happy Spring Festival"]
    assert next(r for r in rows if r["day"] == "thu")["festivals"][0]["zh"] == "立春"
    assert all(r["trend"] is None for r in rows)


def test_table_lists_day_date_format_variant_template_festival_rules_prompt() -> None:
    result = runner.invoke(prompts_app, ["preview", str(WEEKLY), "--week", "2027-W05", "--no-trends"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "weekly-demo 2027-W05: 14 prompts" in out
    for text in ("day", "date", "format", "template", "festival", "rules", "prompt", "2027-02-06",
                 "festival-poster@1.0.0", "daily-poster@1.0.0", "春节", "spring-festival", "红灯笼"):
        assert text in out, text


def test_variants_show_their_axes() -> None:
    data = _json(str(AB), "--week", "2026-W48")
    monday = [r for r in data["images"] if r["day"] == "mon"]
    assert [r["variant"] for r in monday] == [1, 2]
    assert all(monday[0]["variant_axes"][axis] != monday[1]["variant_axes"][axis]
               for axis in ("composition", "lighting", "palette", "copy"))
    assert monday[0]["copy"] != monday[1]["copy"] and monday[0]["seed"] != monday[1]["seed"]


def test_preview_matches_what_a_run_would_plan() -> None:
    """Local trend files are read, ranked and fitted to the brand as a run does (one per day);
    keys and prompts equal the planner's."""
    settings = REPO / "configs/settings.yaml"
    now = datetime(2026, 11, 23, 9, tzinfo=ZoneInfo("Asia/Shanghai"))
    data = preview_week(WEEKLY, "2026-W48", settings=settings, today=now)
    bundle = load_campaign(WEEKLY)
    sources = bundle.campaign.trends.sources
    report = ingest(sources)
    ranked = rank_trends(report, bundle.brand.safety, now=now, weights=source_weights(sources),
                         sensitive_terms=load_sensitive_terms(bundle.campaign.trends.sensitive_terms))
    trends = ranked.trends[:len(bundle.campaign.days)]
    jobs = plan_week(bundle, "2026-W48", date(2026, 11, 23), trends,
                     load_settings(settings).engine, brand_fingerprint(bundle))
    assert data["trends"]["used"] == len(trends) > 0
    assert data["trends"]["found"] == len(report.trends)
    assert len(data["trends"]["dropped"]) == len(ranked.dropped) > 0
    assert [r["key"] for r in data["images"]] == [j.key for j in jobs]
    assert [r["prompt"] for r in data["images"]] == [j.prompt.text for j in jobs]


def test_remote_sources_are_never_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    def no_network(*args, **kwargs):
        raise AssertionError("a preview must not touch the network")

    monkeypatch.setattr(httpx.Client, "send", no_network)
    tree = tmp_path / "configs"
    shutil.copytree(REPO / "configs", tree)
    campaign = tree / "campaigns/weekly-demo.yaml"
    data = yaml.safe_load(campaign.read_text(encoding="utf-8"))
    data["trends"]["sources"].append({"name": "remote", "kind": "rss", "url": "https://example.invalid/feed"})
    campaign.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    result = _json(str(campaign), "--week", "2026-W48")
    assert result["trends"]["remote_sources_skipped"] == 1 and result["trends"]["used"] > 0
    assert len(result["images"]) == 14


def test_skipped_slots_are_listed(tmp_path: Path) -> None:
    tree = tmp_path / "configs"
    shutil.copytree(REPO / "configs", tree)
    campaign = tree / "campaigns/weekly-demo.yaml"
    data = yaml.safe_load(campaign.read_text(encoding="utf-8"))
    data["rules"].append({"name": "no-stories-on-festivals", "when": {"festival_kind": ["chinese"],
                                                                      "format": ["9:16"]},
                          "then": {"skip": True}})
    campaign.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    result = _json(str(campaign), "--week", "2027-W05", "--no-trends")
    assert len(result["images"]) == 12
    assert [(s["day"], s["format"]) for s in result["skipped"]] == [("fri", "9:16"), ("sat", "9:16")]
    table = runner.invoke(prompts_app, ["preview", str(campaign), "--week", "2027-W05", "--no-trends"])
    assert "skipped: sat 2027-02-06 9:16 v1 (rule no-stories-on-festivals)" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--week", "48"], "YYYY-Www"),
        (["--week", "2026-W54"], "no ISO week 54"),
    ],
)
def test_errors_exit_2_with_the_reason(args: list[str], message: str) -> None:
    result = runner.invoke(prompts_app, ["preview", str(WEEKLY), *args])
    assert result.exit_code == 2 and message in result.output


def test_bad_campaign_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: campaign\nname: x\n", encoding="utf-8")
    result = runner.invoke(prompts_app, ["preview", str(bad)])
    assert result.exit_code == 2 and "bad.yaml" in result.output
