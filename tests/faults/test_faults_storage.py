"""Storage faults: S3 killed mid-campaign, S3 down past the retries, the spool's disk full.

Real parts only: a SeaweedFS server (auth on) that this file starts, SIGKILLs and restarts on
the same port and data dir; the real campaign flow on the tiny model; a real, tiny tmpfs for
the spool. Images generated are counted from the flow's own ProgressEvent stream.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from flows.campaign import CampaignSummary, weekly_campaign
from flows.services.stack import WEED_INTERNAL_PORTS
from tasks.config.schema import EngineSettings
from tasks.core.errors import ConfigError
from tasks.core.progress import ProgressEvent, progress_sink
from tasks.publish.batch import recover_spool, retry_delays, upload_patience_s
from tasks.store.objects import LocalStore, S3Store
from tasks.store.spool import RESERVE_BYTES, STALE_AFTER_S, URL_SUFFIX, Spool, SpoolError
from tests.conftest import REPO, S3Server, _free_port, _weed_binary
from tests.helpers import check_campaign_objects

DEMO = REPO / "configs/campaigns/weekly-demo.yaml"
# 3 days x 2 formats = 6 images in 3 batches: S3 dies after the first, two are still to come
DAYS = ("mon", "tue", "wed")
ENGINE = EngineSettings(model="tiny", preview_scale=0.25, max_batch=2)
WEEK = "2026-W48"
IN_USERNS = "ZPIPE_TEST_IN_USERNS"  # set when this file re-runs itself under `unshare -r -m`


# -- a SeaweedFS server this file may kill ----------------------------------------------------


class KillableS3:
    """`weed mini` with auth on; SIGKILL it and start it again on the same ports and data dir."""

    def __init__(self, data: Path):
        self.data = data
        port = _free_port()
        self.server = S3Server(endpoint_url=f"http://127.0.0.1:{port}",
                               access_key="zpipe-fault-" + uuid.uuid4().hex[:8],
                               secret_key=uuid.uuid4().hex)
        internal = [f"-{name}={_free_port()}" for name in WEED_INTERNAL_PORTS]  # beside other weeds
        self.cmd = [_weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                    "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                    "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.localSocket={data}/s3.sock",
                    f"-filer.localSocket={data}/filer.sock", f"-s3.port={port}", *internal]
        self.proc: subprocess.Popen | None = None

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.server.endpoint_url,
                            aws_access_key_id=self.server.access_key,
                            aws_secret_access_key=self.server.secret_key, region_name="us-east-1",
                            config=Config(connect_timeout=2, read_timeout=10,
                                          retries={"max_attempts": 1}))

    def start(self) -> None:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.server.access_key,
               "AWS_SECRET_ACCESS_KEY": self.server.secret_key}
        log = open(self.data / "weed.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        client = self.client()
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(Exception):
                client.list_buckets()
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("SeaweedFS did not start:\n" + (self.data / "weed.log").read_text()[-3000:])
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Its data dir is thrown away with the test: no need to wait for a clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()

    def sidecars(self, bucket: str, prefix: str) -> list[str]:
        """Image sidecars in the bucket (not the _trends records)."""
        page = self.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/demo/")
        return [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".json")]


@pytest.fixture()
def killable_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KillableS3]:
    s3 = KillableS3(tmp_path / "weed")
    s3.data.mkdir()
    s3.start()
    for name, value in s3.server.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield s3
    finally:
        s3.stop()


# -- the campaign, observed through its progress events -----------------------------------


@pytest.fixture()
def campaign(tmp_path: Path) -> str:
    """The demo weekly campaign cut to three days (paths made absolute, so it can live here)."""
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    base = DEMO.parent
    data["brand"] = str((base / data["brand"]).resolve())
    data["prompts"] = str((base / data["prompts"]).resolve())
    data["days"] = {day: data["days"][day] for day in DAYS}
    for source in data["trends"]["sources"]:
        source["url"] = str((base / source["url"]).resolve())
    data["trends"]["sensitive_terms"] = str((REPO / "configs/safety/sensitive-terms.txt").resolve())
    path = tmp_path / "weekly-demo.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return str(path)


class CampaignRun:
    """One weekly_campaign run in a thread; counts the images it generates."""

    def __init__(self, campaign: str, store_url: str):
        self.events: list[ProgressEvent] = []
        self._lock = threading.Lock()
        context = contextvars.copy_context()  # Prefect's settings (the test API server) go along
        self._pool = ThreadPoolExecutor(max_workers=1)
        self.future: Future = self._pool.submit(context.run, self._run, campaign, store_url)

    def _on_event(self, event: ProgressEvent) -> None:
        with self._lock:
            self.events.append(event)

    def _run(self, campaign: str, store_url: str):
        with progress_sink(self._on_event):
            return weekly_campaign(campaign=campaign, week=WEEK, store=store_url, engine=ENGINE,
                                   return_state=True)

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(e.count for e in self.events if e.kind == kind)

    def planned(self) -> int:
        with self._lock:
            return next(e.total for e in self.events if e.kind == "planned")

    def keys(self, kind: str) -> set[str]:
        with self._lock:
            return {e.detail for e in self.events if e.kind == kind}

    def state(self, timeout: float = 300):
        try:
            return self.future.result(timeout=timeout)
        finally:
            self._pool.shutdown(wait=False)


def _run_campaign(campaign: str, store_url: str) -> tuple[CampaignRun, object]:
    run = CampaignRun(campaign, store_url)
    return run, run.state()


def _wait_until(condition: Callable[[], bool], what: str, run: CampaignRun, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if run.future.done():
            pytest.fail(f"the campaign ended before {what}: {run.future.result()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _spool_files(root: Path) -> list[Path]:
    """Entry files (images, sidecars, temp files) under `root`; not the spools' `<store-id>.url`
    records of their store."""
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not (p.suffix == URL_SUFFIX and p.parent == root)) if root.exists() else []


def _upload_retries(since: datetime) -> list[str]:
    """Warnings, logged since `since`, of publishing tasks that found S3 down and wait to retry."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterLevel, LogFilterTimestamp

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(
            level=LogFilterLevel(ge_=logging.WARNING), timestamp=LogFilterTimestamp(after_=since)))
    return [log.message for log in logs if log.task_run_id and "retrying in" in log.message]


# -- S3 killed mid-campaign ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.s3
def test_s3_killed_mid_campaign_loses_and_regenerates_nothing(prefect_api, zpipe_cache, killable_s3,
                                                              campaign, tmp_path, monkeypatch):
    monkeypatch.setenv("ZPIPE_SPOOL", str(tmp_path / "spool"))
    bucket = "fault-" + uuid.uuid4().hex[:10]
    killable_s3.client().create_bucket(Bucket=bucket)

    started = datetime.now(UTC)
    run = CampaignRun(campaign, f"s3://{bucket}/c")
    _wait_until(lambda: killable_s3.sidecars(bucket, "c"), "the first image in S3", run)
    stored = len(killable_s3.sidecars(bucket, "c"))
    killable_s3.kill()
    # the outage must matter: an image finished after the kill fails to upload and backs off
    _wait_until(lambda: _upload_retries(started), "an upload retrying while S3 is down", run)
    killable_s3.start()

    state = run.state()
    summary: CampaignSummary = state.result()
    assert summary.planned == run.planned() > stored > 0
    assert not summary.failed and len(summary.created) == summary.planned
    assert run.count("generated") == summary.planned  # every image made exactly once
    check_campaign_objects(S3Store(bucket, prefix="c"), summary.planned)
    assert _spool_files(tmp_path / "spool") == []  # every spool entry was uploaded and removed
    retries = _upload_retries(started)  # uploads really rode out the outage, images kept meanwhile
    assert retries and all("wait in the spool" in line for line in retries), retries


@pytest.mark.slow
@pytest.mark.s3
def test_s3_down_past_the_retries_then_next_run_uploads_the_spool(prefect_api, zpipe_cache,
                                                                  killable_s3, campaign, tmp_path,
                                                                  monkeypatch):
    spool_root = tmp_path / "spool"
    monkeypatch.setenv("ZPIPE_SPOOL", str(spool_root))
    monkeypatch.setenv("ZPIPE_UPLOAD_PATIENCE_S", "2")  # give up quickly
    bucket = "fault-" + uuid.uuid4().hex[:10]
    killable_s3.client().create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/c"

    # 1. S3 dies after the first image and stays down: the run fails, saying what it kept
    run = CampaignRun(campaign, url)
    _wait_until(lambda: killable_s3.sidecars(bucket, "c"), "the first image in S3", run)
    killable_s3.kill()
    state = run.state()
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    spool = Spool.for_store(url)
    kept = set(spool.committed())
    assert kept and all(spool.load(key) is not None for key in kept)
    assert f"{len(kept)} of them are finished and kept in the local spool {spool.dir}" in message
    assert "is unreachable" in message and "rerun the same week" in message
    planned = run.planned()
    assert run.count("generated") == planned

    # 2. S3 is back: the next run uploads the spooled images first and generates nothing
    killable_s3.start()
    stored_before = {k.removeprefix("c/").removesuffix(".json") for k in killable_s3.sidecars(bucket, "c")}
    every_key = run.keys("failed") | run.keys("published")
    assert len(every_key) == planned and kept | stored_before == every_key  # nothing lost
    rerun, state = _run_campaign(campaign, url)
    summary: CampaignSummary = state.result()
    assert rerun.count("generated") == 0
    assert set(summary.from_spool) == kept - stored_before and summary.from_spool
    assert not summary.failed and not summary.created
    assert len(summary.from_spool) + len(summary.existing) == planned
    check_campaign_objects(S3Store(bucket, prefix="c"), planned)
    assert _spool_files(spool_root) == []


# -- the spool's own guarantees ------------------------------------------------------------------


def _entry(key: str, data: bytes) -> bytes:
    """A sidecar with the fields the upload reads (the full one comes from build_sidecar)."""
    return json.dumps({"key": key, "content_id": "c0ffee", "seed": 7,
                       "template": {"name": "daily-poster", "version": "1.0.0"},
                       "output": {"bytes": len(data), "content_type": "image/jpeg"}}).encode()


def test_recovery_uploads_whole_entries_and_discards_broken_ones(tmp_path):
    store = LocalStore(tmp_path / "store")
    spool = Spool(tmp_path / "spool", store.describe())
    good, bad_json, wrong_size, half, live = (f"demo/w/{n}.jpg"
                                              for n in ("good", "json", "size", "half", "live"))
    for key in (good, bad_json, wrong_size, half, live):
        spool.put(key, b"jpeg " + key.encode(), _entry(key, b"jpeg " + key.encode()))
    (spool.dir / f"{bad_json}.json").write_text("{not json")
    (spool.dir / wrong_size).write_bytes(b"truncated")
    (spool.dir / f"{half}.json").unlink()  # a writer died before its commit marker ...
    long_ago = time.time() - STALE_AFTER_S - 60  # ... long ago (a fresh one may be a live writer)
    os.utime(spool.dir / half, (long_ago, long_ago))
    (spool.dir / f"{live}.json").unlink()  # a run writing right now: its sidecar comes next

    recovery = recover_spool(store, spool)

    assert recovery.uploaded == [good]
    assert store.list() == [good, f"{good}.json"]
    assert store.get(good) == b"jpeg " + good.encode()
    reasons = "\n".join(recovery.discarded)
    for key, why in ((bad_json, "unreadable sidecar"), (wrong_size, "image is 9 bytes"),
                     (half, "half-written")):
        assert f"{key!r}" in reasons and why in reasons, reasons
    assert live not in reasons
    assert _spool_files(spool.dir) == [spool.dir / live]  # left to its writer


def test_spools_of_two_stores_never_mix(tmp_path):
    a, b = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    spool_a, spool_b = Spool(tmp_path / "spool", a.describe()), Spool(tmp_path / "spool", b.describe())
    assert spool_a.dir != spool_b.dir
    spool_a.put("k/a.jpg", b"aa", _entry("k/a.jpg", b"aa"))
    spool_b.put("k/b.jpg", b"bbb", _entry("k/b.jpg", b"bbb"))
    assert recover_spool(a, spool_a).uploaded == ["k/a.jpg"]
    assert b.list() == [] and spool_b.committed() == ["k/b.jpg"]


def test_upload_patience_is_checked_and_spent_as_backoff(monkeypatch):
    delays = retry_delays(60)
    assert sum(delays) == 60 and delays[0] == 1 and max(delays) <= 15
    assert delays == sorted(delays)
    monkeypatch.setenv("ZPIPE_UPLOAD_PATIENCE_S", "soon")
    with pytest.raises(ConfigError, match=r"ZPIPE_UPLOAD_PATIENCE_S.*number of seconds.*'soon'"):
        upload_patience_s()


# -- the spool's disk is full ---------------------------------------------------------------------


def _can_mount(where: Path) -> bool:
    where.mkdir(exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "zpipe-probe", str(where)],
                       check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    subprocess.run(["umount", str(where)], check=True, timeout=10)
    return True


def _rerun_in_user_namespace(request: pytest.FixtureRequest) -> None:
    """Run this one test again as root of a new user + mount namespace, where tmpfs mounts."""
    if os.environ.get(IN_USERNS):
        pytest.skip("cannot mount a tmpfs even inside `unshare -r -m`")
    try:
        subprocess.run(["unshare", "-r", "-m", "true"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("a tiny disk for the spool needs a tmpfs: run as root (mount -t tmpfs) or allow "
                    "unprivileged user namespaces (unshare -r -m); neither works here")
    env = {**os.environ, IN_USERNS: "1"}
    if "prefect_api" in request.fixturenames:
        env["ZPIPE_TEST_PREFECT_API_URL"] = request.getfixturevalue("prefect_api")
    done = subprocess.run(["unshare", "-r", "-m", sys.executable, "-m", "pytest", "-q", "-x",
                           "-p", "no:cacheprovider", request.node.nodeid],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


@pytest.fixture()
def small_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | None]:
    """A tmpfs of RESERVE_BYTES + 1 MiB at tmp_path/disk; None: the test already ran elsewhere."""
    disk = tmp_path / "disk"
    if not _can_mount(disk):
        _rerun_in_user_namespace(request)
        yield None  # it ran, and passed, in a user namespace
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={RESERVE_BYTES + 1024 * 1024}",
                    "zpipe-spool", str(disk)], check=True, timeout=10)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True, timeout=10)


def _fill(disk: Path, leave: int) -> Path:
    """Fill the disk with a file until only `leave` bytes (a multiple of 4096) are free."""
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - leave))
    assert shutil.disk_usage(disk).free == leave
    return filler


def test_spool_write_fails_cleanly_when_the_disk_fills(small_disk):
    if small_disk is None:
        return
    spool = Spool(small_disk / "spool", "s3://bucket/prefix", reserve_bytes=None)  # the write itself
    filler = _fill(small_disk, leave=64 * 1024)

    # the image does not fit: ENOSPC mid-write
    big, sidecar = b"x" * 100_000, _entry("demo/w/mon/big.jpg", b"x" * 100_000)
    with pytest.raises(SpoolError) as error:
        spool.put("demo/w/mon/big.jpg", big, sidecar)
    message = str(error.value)
    assert str(spool.dir) in message and "out of disk space" in message
    assert f"needs {len(big) + len(sidecar)} bytes" in message
    assert "Free some space" in message and "ZPIPE_SPOOL" in message
    # the image fits, its sidecar (the commit marker) does not: the image goes too
    image = b"y" * (64 * 1024 - 1000)
    with pytest.raises(SpoolError, match="out of disk space"):
        spool.put("demo/w/mon/fits.jpg", image, _entry("demo/w/mon/fits.jpg", image) + b" " * 3000)
    assert _spool_files(small_disk / "spool") == []  # no temp file, no image without a sidecar

    # with the reserve on, a run stops before generating anything when space is short
    guarded = Spool(small_disk / "spool", "s3://bucket/prefix")
    with pytest.raises(SpoolError, match=rf"the next image needs 0 bytes.*leaves {RESERVE_BYTES} bytes"):
        recover_spool(LocalStore(small_disk / "store"), guarded)

    filler.unlink()  # space returns
    spool.put("demo/w/mon/fits.jpg", image, _entry("demo/w/mon/fits.jpg", image))
    assert spool.committed() == ["demo/w/mon/fits.jpg"] and spool.load("demo/w/mon/fits.jpg").data == image


@pytest.mark.slow
def test_campaign_with_a_full_spool_disk_fails_clearly_then_finishes(prefect_api, zpipe_cache,
                                                                     small_disk, campaign, tmp_path,
                                                                     monkeypatch):
    if small_disk is None:
        return
    monkeypatch.setenv("ZPIPE_SPOOL", str(small_disk / "spool"))
    filler = _fill(small_disk, leave=RESERVE_BYTES + 4096)  # above the reserve, below any image
    out = tmp_path / "out"
    store = LocalStore(out)

    # 1. Every image is made, none can be spooled: the run fails and says why and what to do
    started = datetime.now(UTC)
    run, state = _run_campaign(campaign, store.describe())
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    spool_dir = Spool.for_store(store.describe()).dir
    planned = run.planned()
    assert f"{planned} of {planned} images failed" in message
    assert f"SpoolError: the local spool {spool_dir} is out of disk space" in message
    assert "Free some space on that disk, or set ZPIPE_SPOOL" in message
    assert _spool_files(small_disk / "spool") == []  # nothing half-written
    assert [k for k in store.list() if not k.startswith("_")] == []  # no image reached the store
    assert _upload_retries(started) == []  # a full disk is not retried: it needs a person

    # 2. Space returns: the same week runs to the end
    filler.unlink()
    rerun, state = _run_campaign(campaign, store.describe())
    summary: CampaignSummary = state.result()
    assert len(summary.created) == planned and rerun.count("generated") == planned
    check_campaign_objects(store, planned)
    assert _spool_files(small_disk / "spool") == []


def test_every_spool_records_its_store_so_another_process_can_drain_it(tmp_path):
    a, b = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    Spool(tmp_path / "spool", a.describe()).put("k/a.jpg", b"aa", _entry("k/a.jpg", b"aa"))
    Spool(tmp_path / "spool", b.describe()).put("k/b.jpg", b"bbb", _entry("k/b.jpg", b"bbb"))
    (tmp_path / "spool" / "stray.url").write_text("s3://elsewhere/x")  # no spool of that name
    found = Spool.all_under(tmp_path / "spool")
    assert sorted(s.store_url for s in found) == sorted([a.describe(), b.describe()])
    assert {s.store_url: s.committed() for s in found} == {a.describe(): ["k/a.jpg"],
                                                          b.describe(): ["k/b.jpg"]}
    [spool] = [s for s in found if s.store_url == a.describe()]
    long_ago = time.time() + STALE_AFTER_S + 60
    assert spool.sweep(now=long_ago) == []  # the record is beside the entries, never swept
    assert Spool.all_under(tmp_path / "nowhere") == []


def test_a_worker_uploads_its_spool_once_s3_is_back(killable_s3, tmp_path, monkeypatch):
    """A GPU worker on a machine of its own: what S3 refused stays in that machine's spool
    until the worker's drain finds the store back (no campaign flow runs there)."""
    from flows.services.worker import SpoolDrain

    monkeypatch.setenv("ZPIPE_SPOOL", str(tmp_path / "spool"))
    bucket = f"drain-{uuid.uuid4().hex[:8]}"
    killable_s3.client().create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/w"
    key, data = "demo/2026-W48/mon-1x1-v1.jpg", b"\xff\xd8 a finished image"
    Spool.for_store(url).put(key, data, _entry(key, data))  # S3 refused it past the retries
    drain = SpoolDrain(every_s=60)

    killable_s3.kill()
    outcome = drain.drain()[url]
    assert isinstance(outcome, str) and outcome  # why, logged; tried again next time
    assert Spool.for_store(url).committed() == [key]  # kept

    killable_s3.start()
    outcome = drain.drain()[url]
    assert outcome.uploaded == [key]
    assert S3Store(bucket, prefix="w").get(key) == data
    assert Spool.for_store(url).committed() == []
    assert drain.drain() == {}  # nothing left to do
