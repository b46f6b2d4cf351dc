"""The one identity recipe: campaign images and comment replies get their ids and keys from
tasks.content.identity, and the keys are those zpipe always made (pinned)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from tasks.comments.ledger import CommentState
from tasks.comments.reply import plan_reply
from tasks.config.schema import EngineSettings, load_campaign
from tasks.content.identity import TURBO_STEPS, content_id, image_fields
from tasks.content.plan import ImageJob, brand_fingerprint, plan_week
from tasks.trends.sources import Trend
from zengine import SIZE_PRESETS, GenerationRequest

REPO = Path(__file__).resolve().parents[3]
ENGINE = EngineSettings(preview_scale=0.25)
RECEIVED = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)


def _campaign_jobs() -> tuple[list[ImageJob], str]:
    bundle = load_campaign(REPO / "configs/campaigns/weekly-demo.yaml")
    fingerprint = brand_fingerprint(bundle)
    trends = [Trend(title="秋冬围巾穿搭", source="t", rank=1)]
    return plan_week(bundle, "2026-W48", date(2026, 11, 23), trends, ENGINE, fingerprint), fingerprint


def _reply_job() -> ImageJob:
    brand = load_campaign(REPO / "configs/campaigns/weekly-demo.yaml").brand
    comment = CommentState(id="c-1", brand=brand.slug, author="ann", post_id="p1", text="拿铁",
                           keywords=["拿铁"], state="queued", received_at=RECEIVED, updated_at=RECEIVED)
    return plan_reply(brand, comment, ENGINE)


def _base(job: ImageJob) -> dict:
    return image_fields(prompt=job.prompt, seed=job.seed, size=(job.width, job.height), model=job.model_id,
                        revision=job.revision, output=job.output.model_dump())


def test_keys_are_unchanged() -> None:
    jobs, _ = _campaign_jobs()
    assert jobs[0].key == "demo/weekly-demo/2026-W48/mon/1x1-v1-28cf55b90854.jpg"
    assert jobs[-1].key == "demo/weekly-demo/2026-W48/sun/9x16-v1-a531af2775e2.jpg"
    assert _reply_job().key == "demo/comments/2026-11-24/c-1-d805e3249720.jpg"


def test_campaign_and_reply_ids_come_from_the_one_recipe() -> None:
    jobs, fingerprint = _campaign_jobs()
    job = next(j for j in jobs if not j.overlay_lines)
    assert content_id(_base(job) | {"brand": fingerprint}) == job.content_id
    reply = _reply_job()
    brand = load_campaign(REPO / "configs/campaigns/weekly-demo.yaml").brand
    extra = {"label": brand.label.model_dump(), "comment": "c-1",
             "loras": [(Path(lora.path).name, lora.weight) for lora in brand.loras]}
    assert content_id(_base(reply) | extra) == reply.content_id


def test_a_campaign_image_and_a_reply_image_from_the_same_inputs_agree() -> None:
    jobs, _ = _campaign_jobs()
    campaign, reply = jobs[0], _reply_job()
    same = reply.model_copy(update={"prompt": campaign.prompt, "seed": campaign.seed,
                                    "width": campaign.width, "height": campaign.height,
                                    "output": campaign.output})
    assert _base(same) == _base(campaign)
    assert content_id(_base(same)) == content_id(_base(campaign))
    assert campaign.steps == reply.steps == TURBO_STEPS


def test_shared_facts_are_zengines() -> None:
    from tasks.config.schema import FORMATS

    assert tuple(SIZE_PRESETS) == FORMATS
    assert TURBO_STEPS == GenerationRequest(prompt="x", width=64, height=64, seed=1).steps == 8
