"""publish_batch: one generated batch -> labelled, spooled, uploaded images, each on its own.

Real labelling (fonts, logo, invisible watermark, XMP), a real spool on disk and a LocalStore;
the store's outage is a LocalStore whose `put` raises the StoreError an unreachable S3 raises.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import date
from pathlib import Path

import pytest

from tasks.config.schema import EngineSettings, load_campaign
from tasks.content.plan import ImageJob, brand_fingerprint, plan_week
from tasks.core.errors import StoreError
from tasks.publish.batch import BatchPublished, PublishError, publish_batch
from tasks.store.objects import LocalStore
from tasks.store.spool import Spool, SpoolError
from tests.conftest import REPO
from tests.helpers import check_campaign_objects, noise_result
from zengine import GenerationResult

DEMO = REPO / "configs/campaigns/weekly-demo.yaml"


class FlakyStore(LocalStore):
    """A LocalStore that is 'unreachable' for its first `down` puts, or for the puts numbered
    in `failing` (1 = the first put)."""

    def __init__(self, root: Path, down: int = 0, failing: frozenset[int] = frozenset()):
        super().__init__(root)
        self.down = down
        self.failing = failing
        self.puts = 0

    def put(self, key, data, content_type="application/octet-stream", metadata=None, overwrite=True):
        self.puts += 1
        if self.puts <= self.down or self.puts in self.failing:
            raise StoreError(f"S3 endpoint http://127.0.0.1:1 is unreachable (put {key!r})")
        return super().put(key, data, content_type, metadata, overwrite=overwrite)


class Log:
    def __init__(self):
        self.warnings: list[str] = []

    def warning(self, message, *args):
        self.warnings.append(message % args)


@pytest.fixture(scope="module")
def batch() -> tuple[list[ImageJob], list[GenerationResult], object]:
    bundle = load_campaign(DEMO)
    engine = EngineSettings(model="tiny", preview_scale=0.25)
    jobs = plan_week(bundle, "2026-W48", date(2026, 11, 23), [], engine, brand_fingerprint(bundle))[:4]
    return jobs, [noise_result(job) for job in jobs], bundle.brand


def test_a_batch_is_published_whole_and_leaves_the_spool_empty(batch, tmp_path):
    jobs, results, brand = batch
    store, spool = LocalStore(tmp_path / "out"), Spool(tmp_path / "spool", "file:///out")
    outcome = publish_batch(store, jobs, results, brand, spool, patience_s=0)
    assert [p.key for p in outcome.published] == [job.key for job in jobs]
    assert all(p.created for p in outcome.published) and outcome.failed == []
    assert outcome.held == [] and outcome.retry == []
    sidecars = check_campaign_objects(store, len(jobs))  # image + sidecar each, labels readable
    # the QA gate ran on every image (these previews are too small to read: OCR checks skipped)
    assert all(s["qa"]["decision"] == "publish" and s["qa"]["checks"]["nsfw"]["verdict"] == "pass"
               for s in sidecars)
    assert spool.committed() == []
    again = publish_batch(store, jobs, results, brand, spool, patience_s=0)  # same keys again
    assert [p.created for p in again.published] == [False] * len(jobs)


def test_one_broken_image_fails_alone(batch, tmp_path):
    jobs, results, brand = batch
    broken = [results[0], dataclasses.replace(results[1], png=b"not a png"), *results[2:]]
    store = LocalStore(tmp_path / "out")
    outcome = publish_batch(store, jobs, broken, brand, Spool(tmp_path / "spool", "x"), patience_s=0)
    assert [p.key for p in outcome.published] == [jobs[0].key, jobs[2].key, jobs[3].key]
    [failure] = outcome.failed
    assert failure.key == jobs[1].key and failure.kind == "LabelError"
    assert "cannot decode the generated image" in failure.message
    assert not store.exists(jobs[1].key) and not store.exists(jobs[1].sidecar_key)
    # a one-image caller (the comment-reply flow) gets the failure as an exception
    with pytest.raises(PublishError, match=rf"{jobs[1].key}: LabelError: cannot decode"):
        outcome.raise_failed()
    BatchPublished(published=outcome.published, failed=[]).raise_failed()  # nothing failed


def test_uploads_ride_out_a_short_outage(batch, tmp_path, monkeypatch):
    jobs, results, brand = batch
    slept: list[float] = []
    monkeypatch.setattr("tasks.publish.batch.time.sleep", slept.append)
    store, spool, log = FlakyStore(tmp_path / "out", down=3), Spool(tmp_path / "spool", "x"), Log()
    outcome = publish_batch(store, jobs, results, brand, spool, patience_s=60, log=log)
    assert len(outcome.published) == len(jobs) and outcome.failed == []
    assert slept == [1.0, 2.0, 4.0]  # backoff, shared by the batch: one wait per failed round
    assert len(log.warnings) == 3 and "4 of 4 images of this batch wait in the spool" in log.warnings[0]
    check_campaign_objects(store, len(jobs))
    assert spool.committed() == []


def test_a_retry_counts_its_own_half_finished_upload_as_new(batch, tmp_path, monkeypatch):
    """S3 dies between an image and its sidecar: after the retry the image is still 'new'."""
    jobs, results, brand = batch
    monkeypatch.setattr("tasks.publish.batch.time.sleep", lambda s: None)
    store = FlakyStore(tmp_path / "out", failing=frozenset({2}))  # the first sidecar's put
    outcome = publish_batch(store, jobs, results, brand, Spool(tmp_path / "spool", "x"), patience_s=60)
    assert [p.created for p in outcome.published] == [True] * len(jobs) and outcome.failed == []
    check_campaign_objects(store, len(jobs))


def test_store_down_past_the_patience_keeps_every_image_in_the_spool(batch, tmp_path, monkeypatch):
    jobs, results, brand = batch
    monkeypatch.setattr("tasks.publish.batch.time.sleep", lambda s: None)
    store, spool = FlakyStore(tmp_path / "out", down=10**6), Spool(tmp_path / "spool", "x")
    outcome: BatchPublished = publish_batch(store, jobs, results, brand, spool, patience_s=3)
    assert outcome.published == [] and [f.key for f in outcome.failed] == [j.key for j in jobs]
    assert all(f.kind == "StoreError" and "is unreachable" in f.message
               and f"kept in the local spool {spool.dir}" in f.message for f in outcome.failed)
    assert spool.committed() == sorted(job.key for job in jobs)
    for job in jobs:  # whole entries, exactly what the next run uploads
        entry = spool.load(job.key)
        assert json.loads(entry.sidecar)["output"]["bytes"] == len(entry.data)


def test_a_full_spool_stops_the_batch_with_its_error(batch, tmp_path):
    jobs, results, brand = batch
    spool = Spool(tmp_path / "spool", "x", reserve_bytes=1 << 60)  # never room enough
    with pytest.raises(SpoolError, match="out of disk space"):
        publish_batch(LocalStore(tmp_path / "out"), jobs, results, brand, spool, patience_s=60)
    assert not (tmp_path / "out").exists()  # nothing reached the store
