"""Config loading and the templating/plan stage: errors name file, field and value."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest
import yaml

from tasks.config.schema import EngineSettings, load_campaign, load_config, parse_week
from tasks.content.plan import brand_fingerprint, plan_week
from tasks.core.errors import ConfigError
from tasks.trends.sources import Trend

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"
ENGINE = EngineSettings(preview_scale=0.25)


@pytest.fixture()
def config_tree(tmp_path: Path) -> Path:
    """A writable copy of configs/ to break in tests."""
    shutil.copytree(CONFIGS, tmp_path / "configs")
    return tmp_path / "configs"


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in CONFIGS.rglob("*.yaml")))
def test_every_shipped_config_is_valid(path: str) -> None:
    load_config(REPO / path)


def test_unknown_field_names_file_and_field(config_tree: Path) -> None:
    campaign = config_tree / "campaigns/weekly-demo.yaml"
    _edit(campaign, lambda d: d.update(variantz=2))
    with pytest.raises(ConfigError) as err:
        load_config(campaign)
    assert str(campaign) in str(err.value) and "variantz" in str(err.value)
    assert "unknown field" in str(err.value)


def test_bad_format_value_is_shown(config_tree: Path) -> None:
    campaign = config_tree / "campaigns/weekly-demo.yaml"
    _edit(campaign, lambda d: d.update(formats=["1:1", "2:1"]))
    with pytest.raises(ConfigError, match=r"formats.*2:1.*9:16") as err:
        load_campaign(campaign)
    assert err.value.field == "formats"


def test_bad_nested_value_in_brand_names_brand_file(config_tree: Path) -> None:
    brand = config_tree / "brands/demo.yaml"
    _edit(brand, lambda d: d["label"].update(height_ratio=0.03))
    with pytest.raises(ConfigError) as err:
        load_campaign(config_tree / "campaigns/weekly-demo.yaml")
    assert str(brand) in str(err.value)
    assert err.value.field == "label.height_ratio" and "5%" in str(err.value)


def test_bad_colour_and_weekday(config_tree: Path) -> None:
    brand = config_tree / "brands/demo.yaml"
    _edit(brand, lambda d: d["colours"].update(primary="red"))
    with pytest.raises(ConfigError, match=r"colours.*#RRGGBB.*'red'"):
        load_config(brand)
    campaign = config_tree / "campaigns/weekly-demo.yaml"
    _edit(campaign, lambda d: d["days"].update(funday={"zh": "x", "en": "x"}))
    with pytest.raises(ConfigError, match=r"days.*funday"):
        load_config(campaign)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: brand\nname: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line \d"):
        load_config(bad)


def test_missing_referenced_files(config_tree: Path) -> None:
    campaign = config_tree / "campaigns/weekly-demo.yaml"
    (config_tree / "brands/demo-logo.png").unlink()
    with pytest.raises(ConfigError, match=r"logo.path: logo file not found"):
        load_campaign(campaign)
    _edit(campaign, lambda d: d.update(template="nope"))
    shutil.copy(CONFIGS / "brands/demo-logo.png", config_tree / "brands/demo-logo.png")
    with pytest.raises(ConfigError, match=r"template: not in library.yaml; available: .*daily-poster"):
        load_campaign(campaign)


def test_unknown_kind_and_secrets_not_allowed(config_tree: Path) -> None:
    settings = config_tree / "settings.yaml"
    _edit(settings, lambda d: d.update(aws_secret_access_key="x"))
    with pytest.raises(ConfigError, match=r"aws_secret_access_key.*unknown field"):
        load_config(settings)
    other = config_tree / "other.yaml"
    other.write_text("kind: nonsense\n")
    with pytest.raises(ConfigError, match=r"kind: must be one of"):
        load_config(other)


def test_parse_week() -> None:
    assert parse_week("2026-W48", date(2020, 1, 1)) == ("2026-W48", date(2026, 11, 23))
    assert parse_week(None, date(2026, 11, 26)) == ("2026-W48", date(2026, 11, 23))
    assert parse_week("2027W5", date(2020, 1, 1))[0] == "2027-W05"
    with pytest.raises(ConfigError, match="YYYY-Www"):
        parse_week("48", date(2026, 1, 1))
    with pytest.raises(ConfigError, match="no ISO week 54"):
        parse_week("2026-W54", date(2026, 1, 1))


def test_plan_week_is_deterministic_and_complete() -> None:
    bundle = load_campaign(CONFIGS / "campaigns/weekly-demo.yaml")
    trends = [Trend(title="秋冬围巾穿搭", source="t", rank=1), Trend(title="citywalk", source="t", rank=2)]
    fp = brand_fingerprint(bundle)
    jobs = plan_week(bundle, "2026-W48", date(2026, 11, 23), trends, ENGINE, fp)
    again = plan_week(bundle, "2026-W48", date(2026, 11, 23), trends, ENGINE, fp)
    assert [j.key for j in jobs] == [j.key for j in again]
    assert len(jobs) == 14 and len({j.key for j in jobs}) == 14
    assert all(j.width % 16 == 0 and j.height % 16 == 0 for j in jobs)
    assert jobs[0].trend == "秋冬围巾穿搭" and jobs[2].trend == "citywalk"
    assert "秋冬围巾穿搭" in jobs[0].prompt.text
    next_week = plan_week(bundle, "2026-W49", date(2026, 11, 30), trends, ENGINE, fp)
    assert {j.seed for j in next_week}.isdisjoint({j.seed for j in jobs})
    # anything that changes the pixels changes the key
    bigger = plan_week(bundle, "2026-W48", date(2026, 11, 23), trends,
                       EngineSettings(preview_scale=0.5), fp)
    assert {j.key for j in bigger}.isdisjoint({j.key for j in jobs})


# ---------------------------------------------------------------------------------------------
# Brand fragments, mappings, headline; campaign variants, day themes


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (lambda d: d["fragments"].update({"Bad-Name": {"zh": "x", "en": "x"}}), "fragments",
         "fragment name 'Bad-Name' must be lower-case"),
        (lambda d: d["fragments"].update(film={"zh": "胶片"}), "fragments.film.en", "Field required"),
        (lambda d: d["mappings"].update(sizes={}), "mappings", "mapping table 'sizes' is empty"),
        (lambda d: d["mappings"]["colours"].update(R09="red"), "mappings.colours.R09",
         "valid dictionary"),
        (lambda d: d["headline"].update(height_ratio=0.5), "headline.height_ratio", "less than or equal"),
        (lambda d: d["headline"].update(plate_color="reddish"), "headline.plate_color", "not a colour"),
        (lambda d: d["headline"].update(font="missing.ttf"), "headline.font", "font file not found"),
    ],
)
def test_brand_additions_errors(config_tree: Path, change, field: str, message: str) -> None:
    brand = config_tree / "brands/demo.yaml"
    _edit(brand, change)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(brand)
    assert err.value.field == field and str(brand) in str(err.value)


def test_variants_accept_an_int_or_a_mapping(config_tree: Path) -> None:
    bundle = load_campaign(CONFIGS / "campaigns/weekly-demo.yaml")
    assert bundle.campaign.variants.count == 1 and bundle.campaign.variants.axes == {}
    ab = load_campaign(CONFIGS / "campaigns/ab-demo.yaml").campaign.variants
    assert ab.count == 2 and ab.axes_for(2)["lighting"].zh == "傍晚温暖的逆光"
    campaign = config_tree / "campaigns/weekly-demo.yaml"
    _edit(campaign, lambda d: d.update(variants={"count": 2, "axes": {"copy": ["早安", "晚安"]}},
                                       template="ab-poster", rules=[]))
    variants = load_campaign(campaign).campaign.variants
    assert variants.axes_for(1)["copy"].model_dump() == {"zh": "早安", "en": "早安"}  # a string: both
    _edit(campaign, lambda d: d.update(variants=0))
    with pytest.raises(ConfigError, match=r"variants\.count.*greater than or equal to 1"):
        load_campaign(campaign)


def test_day_theme_copy_needs_a_copy_slot(config_tree: Path) -> None:
    campaign = config_tree / "campaigns/weekly-demo.yaml"
    _edit(campaign, lambda d: d["days"]["mon"].update(copy={"zh": "早安", "en": "Morning"}))
    with pytest.raises(ConfigError, match="template 'daily-poster' has no copy slot") as err:
        load_campaign(campaign)
    assert err.value.field == "days.mon.copy"
    _edit(campaign, lambda d: d.update(template="ab-poster"))
    bundle = load_campaign(campaign)
    jobs = plan_week(bundle, "2026-W48", date(2026, 11, 23), [], ENGINE, "fp")
    assert "“早安”" in jobs[0].prompt.text and jobs[0].copy_text == {"zh": "早安", "en": "Morning"}
    assert jobs[2].copy_text is None  # tuesday has no copy


def test_keys_do_not_depend_on_where_the_config_tree_lives(config_tree: Path) -> None:
    here = load_campaign(CONFIGS / "campaigns/weekly-demo.yaml")
    there = load_campaign(config_tree / "campaigns/weekly-demo.yaml")
    assert brand_fingerprint(here) == brand_fingerprint(there)
    brand = config_tree / "brands/demo.yaml"
    _edit(brand, lambda d: d["label"].update(text="AI生成"))
    assert brand_fingerprint(load_campaign(config_tree / "campaigns/weekly-demo.yaml")) != \
        brand_fingerprint(here)


def test_engine_fp8_is_opt_in_and_reaches_the_engines_fast_path(tmp_path):
    from tasks.config.schema import EngineSettings, load_settings
    from tasks.generation.engine import _engine_for

    assert EngineSettings().fp8 is False  # off unless asked for: judge it on real weights first
    path = tmp_path / "settings.yaml"
    path.write_text("kind: settings\nengine:\n  fp8: true\n  fast_path: \"on\"\n", encoding="utf-8")
    engine = _engine_for(load_settings(path).engine)  # built, not loaded: no weights read here
    assert engine.fast_path.fp8 is True and engine.fast_path.enabled == "on"
    path.write_text("kind: settings\nengine:\n  fp8: maybe\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"engine\.fp8"):
        load_settings(path)
