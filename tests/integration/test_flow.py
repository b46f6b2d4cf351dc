"""The whole weekly campaign, end to end, on a real Prefect server, into local and S3 stores."""

from __future__ import annotations

import json

import pytest

from flows.campaign import weekly_campaign
from tasks.config.schema import EngineSettings
from tasks.store.objects import LocalStore, S3Store
from tests.helpers import check_campaign_objects

CAMPAIGN = "configs/campaigns/weekly-demo.yaml"
ENGINE = EngineSettings(model="tiny", preview_scale=0.25, max_batch=4)
WEEK = "2026-W48"
DAYS, FORMATS = 7, 2

pytestmark = pytest.mark.slow


def _run(store_url: str):
    return weekly_campaign(campaign=CAMPAIGN, week=WEEK, store=store_url, engine=ENGINE)


def _check_week(store, summary) -> None:
    assert summary.week == WEEK and summary.planned == DAYS * FORMATS
    assert len(summary.created) == DAYS * FORMATS and not summary.failed
    sidecars = check_campaign_objects(store, DAYS * FORMATS)
    assert {s["day"] for s in sidecars} == {"mon", "tue", "wed", "thu", "fri", "sat", "sun"}
    assert {s["format"] for s in sidecars} == {"1:1", "9:16"}
    assert {s["date"] for s in sidecars} == {f"2026-11-{d}" for d in range(23, 30)}
    assert all(s["template"] == {"name": "daily-poster", "version": "1.0.0"} for s in sidecars)
    assert all(s["key"].startswith(f"demo/weekly-demo/{WEEK}/{s['day']}/") for s in sidecars)
    assert len({s["seed"] for s in sidecars}) == DAYS * FORMATS  # one seed per image
    # the bilingual prompt carries the day's theme in both languages
    monday = next(s for s in sidecars if s["day"] == "mon")
    assert "手冲咖啡" in monday["prompt"] and "pour-over" in monday["prompt"]


def test_weekly_campaign_local_store(prefect_api, zpipe_cache, tmp_path):
    store = LocalStore(tmp_path / "out")
    summary = _run(f"file://{tmp_path / 'out'}")
    _check_week(store, summary)

    # the Prefect UI shows a table of every image, a gallery and a finished progress bar
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_latest_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["weekly-demo-images", "weekly-demo-gallery",
                                        "weekly-demo-2026-w48-progress"])))}
    assert artifacts["weekly-demo-images"].type == "table"
    table = artifacts["weekly-demo-images"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert {row["key"] for row in table} == set(summary.created)
    assert {"day", "format", "prompt", "seed", "key", "generate_s"} <= set(table[0])
    gallery = artifacts["weekly-demo-gallery"].data  # a grid of embedded thumbnails, captioned
    assert gallery.count("![") == gallery.count("](data:image/jpeg;base64,") == DAYS * FORMATS
    assert gallery.count("new · seed ") == DAYS * FORMATS
    assert f"_sheets/demo/weekly-demo/{WEEK}/index.html" in gallery  # where the contact sheet is
    assert float(artifacts["weekly-demo-2026-w48-progress"].data) == 100.0

    # a second run of the same week adds nothing and rewrites nothing
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}
    again = _run(f"file://{tmp_path / 'out'}")
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert again.created == [] and len(again.existing) == DAYS * FORMATS
    assert after == before


@pytest.mark.s3
def test_weekly_campaign_s3_store(prefect_api, zpipe_cache, s3_server, s3_bucket, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    url = f"s3://{s3_bucket}/campaigns"
    summary = _run(url)
    store = S3Store(s3_bucket, prefix="campaigns")
    _check_week(store, summary)
    raw = s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert all(o["Key"].startswith(("campaigns/demo/weekly-demo/", "campaigns/_trends/",
                                    f"campaigns/_sheets/demo/weekly-demo/{WEEK}/")) for o in raw)
    assert any(o["Key"] == f"campaigns/_trends/weekly-demo/weeks/{WEEK}.json" for o in raw)

    again = _run(url)
    assert again.created == []
    assert len(s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]) == len(raw)


def test_half_written_image_is_finished_by_next_run(prefect_api, zpipe_cache, tmp_path):
    """An image without its sidecar (a crash mid-upload) is redone; complete ones are kept."""
    out = tmp_path / "out"
    _run(f"file://{out}")
    sidecars = sorted(out.rglob("*.jpg.json"))
    victim = sidecars[0]
    victim.unlink()
    image = victim.with_suffix("")
    image.write_bytes(b"truncated")
    again = _run(f"file://{out}")
    assert len(again.existing) == DAYS * FORMATS  # keys are content-addressed: same key
    assert victim.exists()
    check_campaign_objects(LocalStore(out), DAYS * FORMATS)
