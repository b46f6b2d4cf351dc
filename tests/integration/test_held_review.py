"""Images the QA gate held, reviewed as a reviewer would: in the Prefect UI (the
`review-held-images` flow pauses with its form, on a real Prefect server), from the terminal
(`zpipe held`), and for a comment reply (held, never published, the ledger says why).

No positive NSFW sample can ship in the tests: the hold path is reached by injecting a
detector result at the detector's own interface (`Flagging`, `_flagging_nudenet`).
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.review import held_folder
from tasks.config.schema import EngineSettings, load_campaign
from tasks.content.plan import brand_fingerprint, plan_week
from tasks.publish.batch import publish_batch
from tasks.publish.review import list_held
from tasks.qa import Detection, QASettings
from tasks.store.objects import LocalStore
from tasks.store.spool import Spool
from tests.conftest import REPO
from tests.helpers import check_campaign_objects, noise_result

DEMO = REPO / "configs/campaigns/weekly-demo.yaml"
READ = QASettings(min_side_px=512)


class Flagging:
    """An NSFW detector at zpipe's detector interface that flags everything it is shown."""

    def detect(self, image):
        return [Detection(label="FEMALE_GENITALIA_EXPOSED", score=0.88, box=(10, 10, 50, 50))]


def _held_week(out: Path, count: int = 3) -> list[str]:
    """Publish `count` demo images through the gate with a flagging detector: all held."""
    bundle = load_campaign(DEMO)
    planned = plan_week(bundle, "2026-W48", date(2026, 11, 23), [],
                        EngineSettings(model="tiny", preview_scale=0.5), brand_fingerprint(bundle))
    jobs = [job for job in planned if job.format == "1:1"][:count]
    store = LocalStore(out)
    outcome = publish_batch(store, jobs, [noise_result(j) for j in jobs], bundle.brand,
                            Spool(out.parent / "spool", store.describe()), patience_s=0, qa=READ,
                            detector=Flagging())
    assert len(outcome.held) == count and outcome.published == []
    return [h.held_key for h in outcome.held]


def test_held_folder_is_the_shared_week_folder():
    assert held_folder(["held/b/c/2026-W48/mon-1x1-v1-ab.jpg", "held/b/c/2026-W48/tue-1x1-v1-cd.jpg"]) \
        == "b/c/2026-W48/"
    assert held_folder(["held/pending/b/c/w/x.jpg"]) == "pending/b/c/w/"
    assert held_folder(["held/a/x.jpg", "held/b/y.jpg"]) == ""


@pytest.mark.slow
def test_the_review_flow_shows_held_images_and_applies_the_form(prefect_api, tmp_path):
    """The UI path: the flow's artifact shows each thumbnail and reason, the run pauses with the
    HeldDecision form, and the reviewer's answer releases one image and deletes another."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    from flows.review import review_held

    out = tmp_path / "out"
    held = _held_week(out)
    prefix = held_folder(held)
    box: dict = {}

    def run() -> None:
        try:
            box["outcome"] = review_held(store=f"file://{out}", prefix=prefix, timeout_s=120)
        except Exception as exc:  # surfaced by the assertions below
            box["error"] = exc

    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,))
    thread.start()
    paused = []
    deadline = time.monotonic() + 120
    while not paused and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.5)
        with get_client(sync_client=True) as client:
            paused = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            paused = [r for r in paused if r.name == f"review held {prefix}"]
    assert paused, f"the review never paused for the reviewer: {box}"

    # 1. What the reviewer sees: a thumbnail per image, where a release goes, and why
    with get_client(sync_client=True) as client:
        [artifact] = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["held-review"])))
    assert artifact.data.count("data:image/jpeg;base64,") == 3
    for key in held:
        assert f"`{key}`" in artifact.data and f"`{key.removeprefix('held/')}`" in artifact.data
    assert artifact.data.count("FEMALE\\_GENITALIA\\_EXPOSED 0.88") == 3

    # 2. Nothing public while it waits; then the form's answer
    assert [k for k in LocalStore(out).list() if not k.startswith("held/")] == []
    resume_flow_run(paused[0].id, run_input={"release": [held[0]], "delete": [held[1]],
                                             "reviewer": "lin", "note": "a statue"})
    thread.join(timeout=120)
    assert "error" not in box, box
    outcome = box["outcome"]
    assert outcome.released == [held[0].removeprefix("held/")] and outcome.deleted == [held[1]]

    store = LocalStore(out)
    check_campaign_objects(store, 2)  # the released image and the one still held, each whole
    sidecar = json.loads(store.get(f"{outcome.released[0]}.json"))
    assert sidecar["key"] == outcome.released[0]
    assert sidecar["review"] == {"action": "released", "reviewer": "lin",
                                 "decided_at": sidecar["review"]["decided_at"], "note": "a statue"}
    assert not store.exists(held[1]) and not store.exists(held[1].removeprefix("held/"))
    assert [h.key for h in list_held(store)] == [held[2]]  # the one left out stays held


def test_nothing_held_ends_the_review_at_once(prefect_api, tmp_path):
    from flows.review import review_held

    (tmp_path / "out").mkdir()
    assert review_held(store=f"file://{tmp_path / 'out'}", prefix="", timeout_s=5) is None


def test_zpipe_held_lists_releases_and_deletes(tmp_path):
    from flows.cli.app import app

    out = tmp_path / "out"
    held = _held_week(out)
    runner = CliRunner()
    store = ["--store", f"file://{out}"]

    listed = runner.invoke(app, ["held", "list", *store])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0] == "3 held image(s); release or delete them by key:"
    for key in held:  # each key whole on its own line, then where it goes and why
        i = lines.index(key)
        assert lines[i + 1] == f"  a release publishes to {key.removeprefix('held/')}"
        assert lines[i + 2].startswith("  why: NSFW detector: FEMALE_GENITALIA_EXPOSED 0.88")

    released = runner.invoke(app, ["held", "release", held[0], "--reviewer", "lin", *store])
    assert released.exit_code == 0, released.output
    public = held[0].removeprefix("held/")
    assert json.loads(LocalStore(out).get(f"{public}.json"))["review"]["reviewer"] == "lin"
    deleted = runner.invoke(app, ["held", "delete", held[1], *store])
    assert deleted.exit_code == 0, deleted.output
    assert [h.key for h in list_held(LocalStore(out))] == [held[2]]

    again = runner.invoke(app, ["held", "release", held[0], "--reviewer", "lin", *store])
    assert again.exit_code == 2 and "released or deleted already" in again.output
    wrong = runner.invoke(app, ["held", "delete", "mon.jpg", *store])
    assert wrong.exit_code == 2 and "not under 'held/'" in wrong.output


class _FlaggingNudeNet:
    """NudeNet's own interface (`tasks.qa.models.nudenet(threads).detect(rgba)`), flagging all."""

    def detect(self, rgba):
        return [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.91, "box": [4, 4, 40, 40]}]


@pytest.mark.slow
def test_a_held_comment_reply_is_never_published_and_the_ledger_says_why(
        prefect_api, zpipe_cache, tmp_path, monkeypatch):
    from flows.comment import comment_reply
    from tasks.comments.ledger import CommentLedger, CommentState, extract_keywords
    from tasks.qa import models

    monkeypatch.setattr(models, "nudenet", lambda threads=1: _FlaggingNudeNet())
    monkeypatch.setenv("ZPIPE_CACHE", str(zpipe_cache))
    out = tmp_path / "out"
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"kind: settings\nengine:\n  preview_scale: 0.5\n  max_batch: 4\n"
                        f"store: file://{out}\ngeneration: local\n", encoding="utf-8")
    ledger = CommentLedger(LocalStore(out))
    now = datetime.now(UTC)
    text = "想要一杯桂花拿铁"
    ledger.claim(CommentState(id="c-held", brand="demo", author="lin", post_id="p-1", text=text,
                              keywords=extract_keywords(text), state="queued", received_at=now,
                              updated_at=now))

    assert comment_reply(comment_id="c-held", brand="demo", brands_dir=str(REPO / "configs/brands"),
                         settings=str(settings)) is None
    record = ledger.get("c-held")
    assert record.state == "held" and record.image_key.startswith("held/demo/comments/")
    assert "FEMALE_BREAST_EXPOSED 0.91" in record.reason
    public = [k for k in LocalStore(out).list("demo/") if not k.startswith("held/")]
    assert public == []
    assert [h.key for h in list_held(LocalStore(out))] == [record.image_key]
    # a repeated event finds it held: nothing is made again
    assert comment_reply(comment_id="c-held", brand="demo", brands_dir=str(REPO / "configs/brands"),
                         settings=str(settings)) is None
    assert [h.key for h in list_held(LocalStore(out))] == [record.image_key]
