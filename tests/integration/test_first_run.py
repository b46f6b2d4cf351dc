"""The first five minutes of a new user: the README's main job on a cold, loaded machine.

`zpipe run` without `PREFECT_API_URL` starts Prefect's temporary API server, which migrates a
new database on first use. On a fresh 2-core machine with both cores busy that took longer
than Prefect's 20 s default, and the first command of the README failed with "Timed out while
attempting to connect to ephemeral Prefect API server". These tests start from nothing: a
fresh PREFECT_HOME, a fresh model cache, and two busy processes competing for the CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.campaign import finished_week, weekly_campaign
from tasks.config.schema import EngineSettings
from tasks.orchestration.progress import RunProgress
from tasks.store.spool import Spool

REPO = Path(__file__).resolve().parents[2]
ZPIPE = Path(sys.executable).parent / "zpipe"
CAMPAIGN = "configs/campaigns/weekly-demo.yaml"
WEEK = "2026-W48"
THIRD_PARTY_CHATTER = ("Loading weights", "Loading pipeline components", "Writing model shards",
                       "it/s]")


@pytest.fixture()
def busy_cpus() -> Iterator[None]:
    """Every core busy with another process while the test runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()


QUIETING = ("HF_", "TRANSFORMERS_", "DIFFUSERS_")  # an in-process CLI test may have set them


def _zpipe_run(tmp_path: Path, *extra: str, api_url: str | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PREFECT_", "ZPIPE_", *QUIETING))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), ZPIPE_CACHE=str(tmp_path / "cache"),
               ZPIPE_SPOOL=str(tmp_path / "spool"), COLUMNS="120")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run(
        [str(ZPIPE), "run", CAMPAIGN, "--week", WEEK, "--store", f"file://{tmp_path / 'out'}",
         "--scale", "0.25", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_first_run_on_a_cold_loaded_machine_succeeds_quietly(tmp_path: Path, busy_cpus) -> None:
    first = _zpipe_run(tmp_path)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-3000:]
    assert "14 images in" in output
    assert len(list((tmp_path / "out").rglob("*.jpg"))) == 14
    # quiet: zpipe's own bars and one line for the model, no third-party loading bars
    assert not [chatter for chatter in THIRD_PARTY_CHATTER if chatter in output], output[-3000:]
    assert output.count("model tiny loaded on cpu in") == 1  # two generation threads, one line
    sheet = tmp_path / "out/_sheets/demo/weekly-demo" / WEEK / "index.html"
    assert sheet.is_file() and f"Look at them: {sheet.as_uri()}" in output

    # a rerun with nothing to do needs no Prefect API at all: point it at a dead port
    again = _zpipe_run(tmp_path, api_url="http://127.0.0.1:9/api")
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert "nothing to do" in output and "│ 0   │ 14" in output


def test_verbose_run_shows_the_libraries_loading(zpipe_cache, prefect_api, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ZPIPE), "run", CAMPAIGN, "--week", WEEK, "--store", f"file://{tmp_path / 'out'}",
         "--scale", "0.25", "-v"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**{k: v for k, v in os.environ.items() if not k.startswith(QUIETING)},
             "PREFECT_API_URL": prefect_api, "ZPIPE_CACHE": str(zpipe_cache),
             "ZPIPE_SPOOL": str(tmp_path / "spool")})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Loading pipeline components" in output  # -v: nothing hidden
    assert "Runs, artifacts and logs: http://127.0.0.1:" in output


# -- finished_week: when a rerun may skip the flow ------------------------------------------

ENGINE = EngineSettings(model="tiny", preview_scale=0.25, max_batch=4)


@pytest.fixture()
def finished(prefect_api, zpipe_cache, tmp_path: Path, monkeypatch) -> str:
    """A store holding one whole demo week, made by the real flow."""
    monkeypatch.setenv("ZPIPE_SPOOL", str(tmp_path / "spool"))
    url = f"file://{tmp_path / 'out'}"
    summary = weekly_campaign(campaign=CAMPAIGN, week=WEEK, store=url, engine=ENGINE)
    assert len(summary.created) == 14
    return url


def test_finished_week_is_found_without_prefect(finished: str, tmp_path: Path) -> None:
    done = finished_week(CAMPAIGN, WEEK, finished, engine=ENGINE)
    assert done is not None and done.created == [] and len(done.existing) == 14
    assert done.contact_sheet == f"_sheets/demo/weekly-demo/{WEEK}/index.html"
    # the plan it checks is the flow's plan: another engine size is other images, not done
    assert finished_week(CAMPAIGN, WEEK, finished,
                         engine=ENGINE.model_copy(update={"preview_scale": 0.5})) is None


def test_any_missing_image_or_spooled_upload_means_a_real_run(finished: str, tmp_path: Path) -> None:
    sidecar = next((tmp_path / "out").rglob("*.jpg.json"))
    body = sidecar.read_bytes()
    sidecar.unlink()
    assert finished_week(CAMPAIGN, WEEK, finished, engine=ENGINE) is None
    sidecar.write_bytes(body)
    assert finished_week(CAMPAIGN, WEEK, finished, engine=ENGINE) is not None

    sheet = tmp_path / "out" / finished_week(CAMPAIGN, WEEK, finished, engine=ENGINE).contact_sheet
    page = sheet.read_bytes()
    sheet.unlink()  # a week without its contact sheet gets a real run, which writes it
    assert finished_week(CAMPAIGN, WEEK, finished, engine=ENGINE) is None
    sheet.write_bytes(page)
    assert finished_week(CAMPAIGN, WEEK, finished, engine=ENGINE) is not None

    Spool.for_store(finished).put("demo/weekly-demo/x.jpg", b"jpeg", b"{}")
    assert finished_week(CAMPAIGN, WEEK, finished, engine=ENGINE) is None


def test_a_week_never_planned_means_a_real_run(tmp_path: Path) -> None:
    assert finished_week(CAMPAIGN, WEEK, f"file://{tmp_path / 'empty'}", engine=ENGINE) is None


# -- the progress artifact counts results, not states that lag -----------------------------

def test_progress_counts_a_finished_batch_whose_state_lags(prefect_api) -> None:
    """Task-run states reach the API through events, after the result: a Completed run read
    85.7 % (12 of 14). The batch's future here reports a stale Running state, as the API did;
    its result is in hand, so `finish` counts it and the artifact on the server reads 100."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.states import Running

    @task
    def make(n: int) -> int:
        return n

    class LaggingState:
        def __init__(self, future):
            self.future = future

        @property
        def state(self):
            return Running()

    @flow
    def two_batches() -> float:
        progress = RunProgress("test-progress-lag", 4, "lag")
        futures = [make.submit(n) for n in (1, 2)]
        batches = [(["a", "b"], futures[0]), (["c", "d"], LaggingState(futures[1]))]
        for future in futures:
            future.result()
        progress.advance_done(batches)  # the glance sees one batch, the other state lags
        assert progress.done == 2
        for images, future in batches:
            progress.finish(images, future)
        return 100.0 * progress.done / progress.total

    assert two_batches() == 100.0
    with get_client(sync_client=True) as client:
        [artifact] = client.read_latest_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["test-progress-lag"])))
    assert float(artifact.data) == 100.0
