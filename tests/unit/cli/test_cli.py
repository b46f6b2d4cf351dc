"""The `zpipe` command line, as a user types it."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli.app import app
from tasks.labels.watermark import read_labels

REPO = Path(__file__).resolve().parents[3]
runner = CliRunner()


def test_validate_ok_and_broken(tmp_path: Path) -> None:
    ok = runner.invoke(app, ["validate", "configs/campaigns/weekly-demo.yaml",
                             "configs/brands/demo.yaml", "configs/settings.yaml"])
    assert ok.exit_code == 0, ok.output
    assert "weekly-demo.yaml (campaign)" in ok.output

    broken = tmp_path / "settings.yaml"
    broken.write_text("kind: settings\nengine:\n  max_batch: zero\n")
    result = runner.invoke(app, ["validate", str(broken)])
    assert result.exit_code == 2
    assert str(broken) in result.output and "engine.max_batch" in result.output
    assert "'zero'" in result.output


def test_generate_one_labelled_image(zpipe_cache, tmp_path: Path) -> None:
    out = tmp_path / "poster.webp"
    result = runner.invoke(app, ["generate", "一杯拿铁 a latte on a wooden table", "-o", str(out),
                                 "--seed", "7", "--format", "9:16", "--scale", "0.25",
                                 "--brand", "configs/brands/demo.yaml"])
    assert result.exit_code == 0, result.output
    image = Image.open(io.BytesIO(out.read_bytes()))
    assert image.format == "WEBP" and image.size == (176, 320)
    labels = read_labels(out.read_bytes())
    assert labels["aigc"]["ContentProducer"] == "91310000DEMO00001X"
    assert labels["zpipe"]["seed"] == "7"


def test_generate_rejects_bad_input(zpipe_cache, tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", "   ", "-o", str(tmp_path / "x.png"), "--scale", "0.25"])
    assert result.exit_code == 2 and "prompt" in result.output.lower()
    result = runner.invoke(app, ["generate", "a cat", "-o", str(tmp_path / "x.gif")])
    assert result.exit_code == 2 and "x.gif" in result.output
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.gif").exists()


@pytest.mark.slow
def test_run_demo_campaign(prefect_api, zpipe_cache, tmp_path: Path) -> None:
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(tmp_path / "configs/campaigns/weekly-demo.yaml"),
                                 "--week", "2026-W48", "--store", f"file://{out}",
                                 "--scale", "0.25"])
    assert result.exit_code == 0, result.output
    assert "14 images" in result.output
    assert len(list(out.rglob("*.jpg"))) == 14 and len(list(out.rglob("*.jpg.json"))) == 14


def test_run_bad_week_and_store(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "configs/campaigns/weekly-demo.yaml", "--week", "W48"])
    assert result.exit_code == 2 and "YYYY-Www" in result.output
    result = runner.invoke(app, ["run", "configs/campaigns/nope.yaml"])
    assert result.exit_code == 2 and "nope.yaml" in result.output and "not found" in result.output
