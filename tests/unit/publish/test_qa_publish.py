"""The QA gate inside publish_batch: every sidecar gets its `qa` block, a text mismatch comes
back as a retry with the next seed and ends typeset, a flagged image is held under `held/`
and a reviewer releases or deletes it. Real labelling, real OCR and NudeNet, real stores
(SeaweedFS S3 with auth, and a LocalStore).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest

from tasks.config.schema import EngineSettings, load_campaign
from tasks.content.plan import brand_fingerprint, plan_week
from tasks.orchestration.approval import HeldDecision
from tasks.publish.batch import find_missing, is_done, publish_batch
from tasks.publish.review import apply_held_decision, delete_held, list_held, release_held
from tasks.qa import Detection, QASettings
from tasks.qa.settings import TextCheckSettings
from tasks.store.objects import LocalStore, open_store
from tasks.store.spool import Spool
from tests.conftest import REPO
from tests.helpers import check_campaign_objects, noise_result

DEMO = REPO / "configs/campaigns/weekly-demo.yaml"
READ = QASettings(min_side_px=512)  # the fixture's 1:1 images are 512²: read them
NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


class Flagging:
    """An NSFW detector at NudeNet's own interface that flags everything it is shown.

    A positive sample cannot be shipped in the tests: the hold path is tested by injecting
    this result where the real detector's result would come from (`detector=`)."""

    def detect(self, image):
        return [Detection(label="FEMALE_GENITALIA_EXPOSED", score=0.88, box=(10, 10, 50, 50))]


@pytest.fixture(scope="module")
def bundle():
    return load_campaign(DEMO)


@pytest.fixture(scope="module")
def jobs(bundle):
    engine = EngineSettings(model="tiny", preview_scale=0.5)
    planned = plan_week(bundle, "2026-W48", date(2026, 11, 23), [], engine, brand_fingerprint(bundle))
    return [job for job in planned if job.format == "1:1"][:3]  # 512x512, daily-poster


def test_every_published_image_has_its_qa_block_on_s3(s3_server, s3_bucket, bundle, jobs,
                                                      monkeypatch, tmp_path):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    store = open_store(f"s3://{s3_bucket}/qa")
    outcome = publish_batch(store, jobs, [noise_result(j) for j in jobs], bundle.brand,
                            Spool(tmp_path / "spool", store.describe()), patience_s=0, qa=READ)
    assert [p.key for p in outcome.published] == [j.key for j in jobs]
    assert outcome.held == [] and outcome.retry == [] and outcome.failed == []
    assert all(p.qa_decision == "publish" and p.qa_score is not None for p in outcome.published)
    sidecars = check_campaign_objects(store, len(jobs))
    for sidecar in sidecars:
        qa = sidecar["qa"]
        assert qa["decision"] == "publish" and qa["schema"] == "zpipe.qa/1"
        assert set(qa["checks"]) == {"nsfw", "label", "text", "palette"}
        for check in qa["checks"].values():
            assert {"value", "threshold", "verdict"} <= set(check)
        assert qa["checks"]["nsfw"]["verdict"] == "pass"  # the real detector, on every image
        assert qa["checks"]["label"]["verdict"] == "pass"
        readings = qa["checks"]["label"]["detail"]["readings"]
        assert [r["copy_name"] for r in readings] == ["full", "repost"]
        assert qa["checks"]["text"]["verdict"] == "skipped"  # tiny model: draws no text
        assert qa["checks"]["palette"]["value"] is not None


def test_a_text_mismatch_is_retried_with_the_next_seed_then_typeset(bundle, jobs, tmp_path):
    store, spool = LocalStore(tmp_path / "out"), Spool(tmp_path / "spool", "x")
    qa = READ.model_copy(update={"retries": 1, "text": TextCheckSettings(enabled="on")})
    job = jobs[0]

    # 1. Noise draws no copy: sent back with seed + 1, nothing stored
    first = publish_batch(store, [job], [noise_result(job)], bundle.brand, spool, patience_s=0, qa=qa)
    assert first.published == [] and first.held == []
    [retry] = first.retry
    assert retry.job.seed == job.seed + 1 and retry.job.key == job.key
    assert [a.seed for a in retry.attempts] == [job.seed] and retry.attempts[0].decision == "retry"
    assert "drawn copy" in retry.reasons[0]
    assert store.list() == [] and spool.committed() == []

    # 2. The retry fails too, and retries are spent: the exact copy is typeset and published
    second = publish_batch(store, [retry.job], [noise_result(retry.job)], bundle.brand, spool,
                           patience_s=0, qa=qa, attempts={job.key: retry.attempts})
    assert [p.key for p in second.published] == [job.key] and second.retry == []
    assert second.published[0].qa_decision == "overlay"
    [sidecar] = check_campaign_objects(store, 1)
    assert sidecar["seed"] == job.seed + 1
    assert sidecar["headline_overlay"]["lines"] == [job.prompt.draw_text["zh"], job.prompt.draw_text["en"]]
    assert sidecar["headline_overlay"]["plate_color"] == "#C8102E"  # opaque: covers garbled copy
    qa_block = sidecar["qa"]
    assert qa_block["decision"] == "overlay" and qa_block["fallback"] == "overlay"
    assert qa_block["attempt"] == 1 and [a["seed"] for a in qa_block["attempts"]] == [job.seed, job.seed + 1]
    assert [a["decision"] for a in qa_block["attempts"]] == ["retry", "overlay"]
    assert qa_block["checks"]["overlay_text"]["verdict"] == "pass"


def test_a_flagged_image_is_held_released_or_deleted_and_never_public(bundle, jobs, tmp_path):
    """Hold path by injection (see `Flagging`): no positive sample can ship in the tests."""
    store, spool = LocalStore(tmp_path / "out"), Spool(tmp_path / "spool", "x")
    outcome = publish_batch(store, jobs, [noise_result(j) for j in jobs], bundle.brand, spool,
                            patience_s=0, qa=READ, detector=Flagging())
    assert outcome.published == [] and outcome.failed == [] and spool.committed() == []
    assert [h.key for h in outcome.held] == [j.key for j in jobs]

    # 1. Nothing under the public prefix; each image and its sidecar under held/, with the reason
    public = [k for k in store.list() if not k.startswith("held/")]
    assert public == []
    for job in jobs:
        sidecar = json.loads(store.get(f"held/{job.key}.json"))
        assert sidecar["key"] == f"held/{job.key}" and sidecar["qa"]["decision"] == "hold"
        assert "FEMALE_GENITALIA_EXPOSED 0.88" in sidecar["held"]["reasons"][0]
        assert sidecar["held"]["public_key"] == job.key
    assert is_done(store, jobs[0].key) and find_missing(store, jobs) == []  # a rerun won't remake them

    # 2. The reviewer's view, then release one and delete another
    held = list_held(store)
    assert [h.key for h in held] == sorted(f"held/{j.key}" for j in jobs)
    assert all("FEMALE_GENITALIA_EXPOSED" in h.reasons[0] and h.decision == "hold" for h in held)
    released = release_held(store, f"held/{jobs[0].key}", "lin", NOW, note="a statue: fine")
    assert released == jobs[0].key
    delete_held(store, f"held/{jobs[1].key}")
    sidecar = json.loads(store.get(f"{jobs[0].key}.json"))
    assert sidecar["key"] == jobs[0].key and sidecar["review"]["reviewer"] == "lin"
    assert sidecar["review"]["action"] == "released"
    assert not store.exists(f"held/{jobs[0].key}") and not store.exists(f"held/{jobs[0].key}.json")
    assert not store.exists(f"held/{jobs[1].key}") and not store.exists(jobs[1].key)
    check_campaign_objects(LocalStore(tmp_path / "out"), 2)  # the released one + the one still held

    # 3. The same through the reviewer's form (the UI's RunInput)
    outcome = apply_held_decision(store, HeldDecision(delete=[f"held/{jobs[2].key}"], reviewer="lin"), NOW)
    assert outcome.deleted == [f"held/{jobs[2].key}"] and list_held(store) == []
    with pytest.raises(Exception, match="released or deleted already"):
        release_held(store, f"held/{jobs[2].key}", "lin", NOW)


def test_a_gated_campaigns_held_image_is_released_straight_to_published(bundle, jobs, tmp_path):
    store, spool = LocalStore(tmp_path / "out"), Spool(tmp_path / "spool", "x")
    job = jobs[0].model_copy(update={"key": f"pending/{jobs[0].key}"})
    outcome = publish_batch(store, [job], [noise_result(job)], bundle.brand, spool, patience_s=0,
                            qa=READ, detector=Flagging())
    assert outcome.held[0].held_key == f"held/pending/{jobs[0].key}"
    assert release_held(store, outcome.held[0].held_key, "lin", NOW) == f"published/{jobs[0].key}"
    assert is_done(store, job.key)
