"""Label + upload stage: generated PNG -> labelled image + JSON sidecar in the object store.

The image is uploaded first and its sidecar last: a sidecar in the store means the image
beside it is complete, so a run that died half-way is finished by the next run.

Between labelling and upload, the QA gate (tasks.qa) looks at every image, here on the publish
threads so the GPU never waits: an image that passes is published; a flagged one goes under
`held/` (never the public prefix) for a reviewer; one whose drawn copy does not read back is
sent back to be made again with the next seed (`BatchPublished.retry`), up to `qa.retries`
times, then gets the exact copy typeset over it. Every sidecar records the gate's `qa` block.

Before its upload, every finished image is kept in the durable local spool (tasks.store.spool): an
upload that fails after its retries (S3 down for longer than `ZPIPE_UPLOAD_PATIENCE_S`) leaves
the image there, and the next run uploads it first (`recover_spool`) instead of making it again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import posixpath
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image, ImageColor
from pydantic import BaseModel, ConfigDict

from tasks.config.schema import BrandConfig
from tasks.content.plan import ImageJob
from tasks.core.errors import ConfigError, StoreError, ZpipeError
from tasks.core.settings import env_default, env_name, env_raw
from tasks.labels.overlay import Box, OverlayPlacement, draw_headline
from tasks.labels.product import label_clear_of_product, restore_product
from tasks.labels.provenance import load_signing_config
from tasks.labels.provenance import sign as sign_c2pa
from tasks.labels.watermark import (
    ImplicitLabel,
    LabelPlacement,
    LabelSpec,
    LogoSpec,
    aigc_xmp,
    apply_label,
    decode_image,
    encode_image,
    find_cjk_font,
)
from tasks.qa import NsfwDetector, QAAttempt, QAReport, QASettings, Subject, inspect
from tasks.store.keys import HELD, SIDECAR_SUFFIX, held_key
from tasks.store.keys import PENDING as PENDING_PREFIX
from tasks.store.keys import PUBLISHED as PUBLISHED_PREFIX
from tasks.store.objects import ObjectStore
from tasks.store.spool import Spool, SpoolEntryError
from zengine import TINY_MODEL_ID, GenerationResult

SIDECAR_SCHEMA = "zpipe.sidecar/1"
UPLOAD_PATIENCE_S: float = env_default("upload_patience_s")  # rides out an S3 restart or failover
PATIENCE_ENV = env_name("upload_patience_s")
MAX_RETRY_DELAY_S = 15.0  # backoff 1, 2, 4, 8, 15, 15, ... s: an S3 back up is seen within 15 s


class LabelledImage(BaseModel):
    """Final encoded bytes (labels embedded) and where the visible label was drawn."""

    model_config = ConfigDict(extra="forbid")

    data: bytes
    placement: LabelPlacement
    implicit: ImplicitLabel
    label_s: float
    overlay: OverlayPlacement | None = None  # the typeset headline, when the template asked
    steps_s: dict[str, float] = {}  # per post-processing step: draw, watermark, encode, sign
    c2pa_signed: bool = False


class PublishedImage(BaseModel):
    """What the store holds for one job after publishing."""

    model_config = ConfigDict(extra="forbid")

    key: str
    sidecar_key: str
    created: bool
    size_bytes: int
    qa_decision: str | None = None  # publish | overlay (None: the gate is off)
    qa_score: float | None = None


@functools.lru_cache(maxsize=8)
def _read_logo(path: str) -> bytes:
    return Path(path).read_bytes()


def implicit_label_for(job: ImageJob, brand: BrandConfig) -> ImplicitLabel:
    """The TC260 implicit label: producer from the brand, ProduceID = the image's content id."""
    return ImplicitLabel(content_producer=brand.producer.id, produce_id=job.content_id)


def label_job(job: ImageJob, result: GenerationResult, brand: BrandConfig) -> LabelledImage:
    """Typeset the headline (if any), draw the logo and explicit label, embed the implicit label."""
    started = time.perf_counter()
    implicit = implicit_label_for(job, brand)
    extra = {
        "seed": str(job.seed),
        "model": f"{job.model_id}@{job.revision}",
        "template": f"{job.prompt.template}@{job.prompt.version}",
        "contentId": job.content_id,
        "producer": brand.producer.name,
    }
    logo = _read_logo(brand.logo.path) if brand.logo else None
    steps: dict[str, float] = {}
    mark = time.perf_counter()

    # 1. Decode; the headline (if any) goes first, so the logo and AIGC label are drawn over it
    image = decode_image(result.png, "the generated image")
    logo_image = decode_image(logo, f"logo {brand.logo.path!r}") if logo and brand.logo else None
    overlay = None
    if job.overlay_lines:
        extra["headline"] = " / ".join(job.overlay_lines)
        keep_clear = _label_areas(image.size, brand.label, logo_image, brand.logo)
        if job.product is not None:  # the headline never covers the product either
            keep_clear.append(job.product.bbox)
        font = str(find_cjk_font(brand.headline.font or brand.label.font))
        image, overlay = draw_headline(image, job.overlay_lines, brand.headline, font, keep_clear)

    # 2. Explicit label and logo (at corners clear of the product, if the image has one)
    if job.product is not None:
        labelled, placement = label_clear_of_product(image, brand.label, logo_image,
                                                     brand.logo if logo_image else None,
                                                     job.product, what=job.key)
    else:
        labelled, placement = apply_label(image, brand.label, logo_image,
                                          brand.logo if logo_image else None)
    steps["post_draw_s"], mark = time.perf_counter() - mark, time.perf_counter()

    # 3. Invisible watermark carrying the content id (after the visible label)
    labelled = embed_watermark(labelled, job.content_id)
    if job.product is not None:  # the product's own pixels, exactly, over the watermark's
        labelled = restore_product(labelled, job.product)
    steps["post_watermark_s"], mark = time.perf_counter() - mark, time.perf_counter()

    # 4. Encode once, with the implicit label (XMP) in it
    data = encode_image(labelled, job.output, aigc_xmp(implicit, extra))
    steps["post_encode_s"], mark = time.perf_counter() - mark, time.perf_counter()

    # 5. C2PA Content Credentials over the exact final bytes, last (never re-encoded after)
    signing = load_signing_config()  # from the environment, inside the task: keys never travel
    if signing is not None:
        data = sign_c2pa(data, job.output.content_type, implicit.to_tc260_json(), job.content_id,
                         signing)
    steps["post_sign_s"] = time.perf_counter() - mark
    return LabelledImage(data=data, placement=placement, implicit=implicit, overlay=overlay,
                         label_s=time.perf_counter() - started,
                         steps_s={k: round(v, 4) for k, v in steps.items()},
                         c2pa_signed=signing is not None)


def embed_watermark(image: Image.Image, content_id: str) -> Image.Image:
    """The invisible watermark step: the 48-bit content id, resize- and re-encode-robust."""
    from tasks.labels import invisible

    return invisible.embed(image, content_id)


def logo_box(size: tuple[int, int], logo_size: tuple[int, int], spec: LogoSpec,
             label: LabelSpec) -> Box:
    """Where `apply_label` will put the logo (same geometry as tasks.labels.watermark)."""
    width, height = size
    margin = round(label.margin_ratio * min(width, height))
    w = max(1, round(width * spec.width_ratio))
    h = max(1, round(logo_size[1] * w / logo_size[0]))
    room = max(1, height - 2 * margin)
    if h > room:
        w, h = max(1, round(w * room / h)), room
    x = margin if spec.position.endswith("left") else width - margin - w
    y = margin if spec.position.startswith("top") else height - margin - h
    return x, y, x + w, y + h


def _label_areas(size: tuple[int, int], label: LabelSpec, logo: Image.Image | None,
                 logo_spec: LogoSpec | None) -> list[Box]:
    """Boxes the headline keeps clear of: the logo, and a top-corner label's likely place."""
    width, height = size
    areas = []
    if logo is not None and logo_spec is not None:
        areas.append(logo_box(size, logo.size, logo_spec, label))
    if label.position.startswith("top"):  # its exact width is fitted later: reserve half the side
        short = min(width, height)
        band = math.ceil(label.height_ratio * short * 1.6) + 2 * round(label.margin_ratio * short)
        x0 = 0 if label.position.endswith("left") else width // 2
        areas.append((x0, 0, x0 + width // 2, band))
    return areas


def build_sidecar(job: ImageJob, result: GenerationResult, labelled: LabelledImage,
                  qa: QAReport | None = None) -> dict[str, Any]:
    """The JSON record stored beside each image: enough to reproduce and audit it."""
    return {
        "schema": SIDECAR_SCHEMA,
        "key": job.key,
        "content_id": job.content_id,
        "brand": job.brand,
        "campaign": job.campaign,
        "week": job.week,
        "day": job.weekday,
        "date": job.date.isoformat(),
        "format": job.format,
        "variant": job.variant,
        "prompt": job.prompt.text,
        "prompt_parts": job.prompt.parts,
        "language": job.prompt.language,
        "template": {"name": job.prompt.template, "version": job.prompt.version},
        "trend": job.trend,
        "trend_note": job.trend_note,  # why the day has no trend (brand fit), if it has none
        "festivals": job.festivals,
        "rules": job.rules,
        "variant_axes": job.variant_axes,
        "copy": job.copy_text,
        "headline_overlay": labelled.overlay.model_dump() if labelled.overlay else None,
        "seed": result.seed,
        "steps": result.steps,
        "guidance_scale": result.guidance_scale,
        "model": {"id": result.model_id, "revision": result.revision},
        "batch": dataclasses.asdict(result.batch),  # how the batch ran: OOM splits show here
        "size": {"width": result.width, "height": result.height},
        "output": {"format": job.output.format, "quality": job.output.quality,
                   "content_type": job.output.content_type, "bytes": len(labelled.data)},
        "labels": {
            "explicit": labelled.placement.model_dump(),
            "implicit": {
                "xmp_property": "TC260:AIGC",
                "tc260": json.loads(labelled.implicit.to_tc260_json()),
                "digital_source_type":
                    "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia",
            },
        },
        "timings": {**result.timings, "label_s": round(labelled.label_s, 4), **labelled.steps_s},
        "c2pa": {"signed": labelled.c2pa_signed, "assertion": "cn.zpipe.aigc"},
        "qa": qa.record() if qa is not None else None,
        "sku": job.sku,
        "product": job.product.record() if job.product else None,
    }


def sidecar_bytes(sidecar: dict[str, Any]) -> bytes:
    """The sidecar exactly as stored (and spooled)."""
    return json.dumps(sidecar, ensure_ascii=False, indent=2).encode("utf-8")


def object_metadata(sidecar: dict[str, Any]) -> dict[str, str]:
    """S3 user metadata of an image and its sidecar, read from the sidecar (spooled images too)."""
    template = sidecar["template"]
    return {"content-id": sidecar["content_id"], "seed": str(sidecar["seed"]),
            "template": f"{template['name']}@{template['version']}"}


# --- The QA gate ---------------------------------------------------------------------------


class Inspected(BaseModel):
    """One image through label + QA: what to store (unless retried), and the gate's report."""

    model_config = ConfigDict(extra="forbid")

    job: ImageJob  # with the fallback's overlay lines when the exact headline was typeset
    labelled: LabelledImage
    report: QAReport | None  # None: the gate is off


def qa_subject(job: ImageJob, result: GenerationResult, labelled: LabelledImage,
               brand: BrandConfig) -> Subject:
    """What the gate looks at: the model's picture, the published bytes, and what was meant."""
    overlay = labelled.overlay
    return Subject(
        generated=decode_image(result.png, "the generated image"),
        final=decode_image(labelled.data, "the labelled image"),
        seed=result.seed, label_text=labelled.placement.text,
        label_box=labelled.placement.text_bbox, draw_text=dict(job.prompt.draw_text),
        overlay_lines=list(zip(overlay.lines, overlay.line_boxes, strict=True)) if overlay else [],
        brand_colours=dict(brand.colours),
        model_draws_text=TINY_MODEL_ID not in (job.model_id, result.model_id))  # random weights: noise


def fallback_brand(brand: BrandConfig) -> BrandConfig:
    """The brand with an opaque headline plate: the typeset fallback covers the garbled copy."""
    r, g, b, *_ = ImageColor.getrgb(brand.headline.plate_color)
    plate = f"#{r:02X}{g:02X}{b:02X}"
    return brand.model_copy(update={"headline": brand.headline.model_copy(update={"plate_color": plate})})


def label_and_inspect(job: ImageJob, result: GenerationResult, brand: BrandConfig, qa: QASettings,
                      attempts: list[QAAttempt], detector: NsfwDetector | None = None) -> Inspected:
    """Label one image and run the gate; on "overlay", typeset the drawn copy and look again.

    `attempts` are the earlier tries of this job (other seeds); their number is this attempt's.
    """
    labelled = label_job(job, result, brand)
    if not qa.enabled:
        return Inspected(job=job, labelled=labelled, report=None)
    report = inspect(qa_subject(job, result, labelled, brand), qa, attempt=len(attempts),
                     attempts=attempts, detector=detector)
    if report.decision != "overlay":
        return Inspected(job=job, labelled=labelled, report=report)
    # The fallback: the exact copy typeset over the picture (languages in prompt order), seen again
    drawn = job.prompt.draw_text
    typeset = job.model_copy(update={"overlay_lines": [drawn[lang] for lang in ("zh", "en")
                                                       if drawn.get(lang)]})
    labelled = label_job(typeset, result, fallback_brand(brand))
    report = inspect(qa_subject(typeset, result, labelled, brand), qa, attempt=len(attempts),
                     attempts=[*attempts, report.as_attempt()], fallback=True, detector=detector)
    return Inspected(job=typeset, labelled=labelled, report=report)


def next_seed(job: ImageJob) -> ImageJob:
    """The same job with the next seed (same key: the slot's image, whichever seed made it)."""
    return job.model_copy(update={"seed": job.seed + 1})


def upload_image(store: ObjectStore, key: str, data: bytes, sidecar: bytes,
                 existed: bool | None = None) -> bool:
    """Upload the image, then its sidecar (the commit marker that says the image is whole).

    Returns True if the image was not in the store before. An image already at the key is a
    leftover of a run that died mid-upload: keys are content-addressed, so it is overwritten
    by the same picture. A caller retrying its own upload passes `existed` as it was before
    the first try, so its own half-finished upload does not count as an older image.
    """
    record = json.loads(sidecar)
    metadata = object_metadata(record)
    if existed is None:
        existed = store.exists(key)
    store.put(key, data, record["output"]["content_type"], metadata, overwrite=True)
    store.put(key + SIDECAR_SUFFIX, sidecar, "application/json", metadata, overwrite=True)
    return not existed


class PublishFailure(BaseModel):
    """One image of a batch that did not reach the store, and why."""

    model_config = ConfigDict(extra="forbid")

    key: str
    kind: str  # the exception's class name, e.g. StoreError
    message: str


class PublishError(ZpipeError):
    """An image was made but not published; the message names it, the cause, and the spool."""


class HeldByQA(BaseModel):
    """An image the QA gate kept off the public prefix: stored under `held/` with its reasons."""

    model_config = ConfigDict(extra="forbid")

    key: str  # the planned key
    held_key: str  # held/<key>: where it waits for a reviewer (tasks.publish.review.release_held)
    reasons: list[str]
    created: bool


class QARetry(BaseModel):
    """A job the QA gate sent back: make it again with `job` (seed + 1) and publish it with
    `attempts` (the earlier tries, recorded in its sidecar)."""

    model_config = ConfigDict(extra="forbid")

    job: ImageJob
    attempts: list[QAAttempt]
    reasons: list[str]


class BatchPublished(BaseModel):
    """What `publish_batch` did with one generated batch, image by image, in job order."""

    model_config = ConfigDict(extra="forbid")

    published: list[PublishedImage]
    failed: list[PublishFailure]
    held: list[HeldByQA] = []  # flagged by the QA gate: under held/, not public
    retry: list[QARetry] = []  # to generate again with the next seed, then publish again

    def raise_failed(self) -> None:
        """PublishError for the first image that failed, if any (for callers of one image)."""
        for failure in self.failed:
            raise PublishError(f"{failure.key}: {failure.kind}: {failure.message}")


def publish_batch(store: ObjectStore, jobs: list[ImageJob], results: list[GenerationResult],
                  brand: BrandConfig, spool: Spool, patience_s: float,
                  log: Any = None, qa: QASettings | None = None,
                  attempts: dict[str, list[QAAttempt]] | None = None,
                  detector: NsfwDetector | None = None) -> BatchPublished:
    """Label and inspect every image of a generated batch, spool them all, then upload them.

    One call per batch, not per image: on a small model, per-image task bookkeeping costs as
    much as the post-processing itself. Each image still succeeds or fails on its own:
    - an image that cannot be labelled or inspected is reported failed, and the others go on;
    - the QA gate (`qa`, default `QASettings()`) decides per image: publish (at its key),
      hold (under `held/`, with the reasons in its sidecar), or retry (not stored: returned in
      `retry` with the next seed; `attempts` are the earlier tries of such jobs, by key);
    - a full or unwritable spool raises `SpoolError` (a person must free space; no retry);
    - uploads that fail (S3 unreachable) are tried again with backoff for `patience_s`
      seconds, shared by the batch; what is still not stored then is reported failed and
      stays in the spool, so the next run uploads it instead of making it again.
    `detector` replaces the NSFW detector (tests inject a positive result there).
    """
    qa = qa or QASettings()
    attempts = attempts or {}
    failed: list[PublishFailure] = []
    retry: list[QARetry] = []
    spooled: list[tuple[ImageJob, str, bytes, bytes, QAReport | None]] = []
    for job, result in zip(jobs, results, strict=True):
        previous = attempts.get(job.key, [])
        try:
            seen = label_and_inspect(job, result, brand, qa, previous, detector)
        except Exception as exc:  # a broken image must not cost the batch's other images
            failed.append(PublishFailure(key=job.key, kind=type(exc).__name__, message=str(exc)))
            continue
        report = seen.report
        if report is not None and report.decision == "retry":
            retry.append(QARetry(job=next_seed(job), attempts=[*previous, report.as_attempt()],
                                 reasons=report.reasons))
            if log is not None:
                log.warning("QA: %s: retry with seed %d (%d of %d): %s", job.key, job.seed + 1,
                            len(previous) + 1, qa.retries, "; ".join(report.reasons))
            continue
        sidecar = build_sidecar(seen.job, result, seen.labelled, report)
        key = job.key
        if report is not None and report.decision == "hold":
            key = held_key(job.key)
            sidecar["key"] = key
            sidecar["held"] = {"reasons": report.reasons, "public_key": job.key,
                               "held_at": datetime.now(UTC).isoformat()}
            if log is not None:
                log.warning("QA: %s held under %s: %s", job.key, HELD, "; ".join(report.reasons))
        body = sidecar_bytes(sidecar)
        spool.put(key, seen.labelled.data, body)
        spooled.append((job, key, seen.labelled.data, body, report))

    published: dict[str, PublishedImage] = {}
    held: dict[str, HeldByQA] = {}
    existed: dict[str, bool] = {}  # before the first try: a retry finds its own image there
    delays = iter(retry_delays(patience_s))
    while True:
        error: StoreError | None = None
        for job, key, data, body, report in spooled:
            if job.key in published or job.key in held:
                continue
            try:
                if key not in existed:
                    existed[key] = store.exists(key)
                created = upload_image(store, key, data, body, existed[key])
            except StoreError as exc:
                error = exc  # the store is likely down for all of them: wait, then go on
                break
            spool.remove(key)
            if key != job.key:
                held[job.key] = HeldByQA(key=job.key, held_key=key, created=created,
                                         reasons=report.reasons if report else [])
                continue
            published[job.key] = PublishedImage(
                key=job.key, sidecar_key=job.sidecar_key, created=created, size_bytes=len(data),
                qa_decision=report.decision if report else None,
                qa_score=report.score if report else None)
        if error is None:
            break
        delay = next(delays, None)
        left = len(spooled) - len(published) - len(held)
        if delay is None:
            message = (f"{error} (kept in the local spool {spool.dir}; the next run uploads it "
                       "first instead of making it again)")
            failed += [PublishFailure(key=job.key, kind=type(error).__name__, message=message)
                       for job, *_ in spooled if job.key not in published and job.key not in held]
            break
        if log is not None:
            log.warning("upload failed, %d of %d images of this batch wait in the spool: %s; "
                        "retrying in %.0f s", left, len(jobs), error, delay)
        time.sleep(delay)
    order = {job.key: i for i, job in enumerate(jobs)}
    return BatchPublished(published=sorted(published.values(), key=lambda p: order[p.key]),
                          failed=sorted(failed, key=lambda f: order[f.key]),
                          held=sorted(held.values(), key=lambda h: order[h.key]),
                          retry=sorted(retry, key=lambda r: order[r.job.key]))


class SpoolRecovery(BaseModel):
    """What `recover_spool` did: images uploaded from the spool, and entries it threw away."""

    model_config = ConfigDict(extra="forbid")

    spool: str
    uploaded: list[str]
    already_stored: list[str]
    discarded: list[str]


def recover_spool(store: ObjectStore, spool: Spool) -> SpoolRecovery:
    """Upload what earlier runs left in the spool, then check there is room for this run.

    Runs before `find_missing`, so a recovered image counts as done and is never generated
    again. Half-written or corrupt entries are discarded (their images are made again), never
    uploaded. The room check comes last: uploading the leftovers frees their space.
    """
    discarded = spool.sweep()
    uploaded, already = [], []
    for key in spool.committed():
        try:
            entry = spool.load(key)
        except SpoolEntryError as exc:
            spool.remove(key)
            discarded.append(f"{exc}; discarded, the next run makes it again")
            continue
        if entry is None:
            continue  # another run uploaded it meanwhile
        if is_done(store, key):
            already.append(key)
        else:
            upload_image(store, key, entry.data, entry.sidecar)
            uploaded.append(key)
        spool.remove(key)
    spool.check_room(0)
    return SpoolRecovery(spool=str(spool.dir), uploaded=uploaded, already_stored=already,
                         discarded=discarded)


def upload_patience_s() -> float:
    """Seconds uploads keep retrying: `$ZPIPE_UPLOAD_PATIENCE_S`, else UPLOAD_PATIENCE_S."""
    raw = (env_raw("upload_patience_s") or "").strip()
    if not raw:
        return UPLOAD_PATIENCE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise ConfigError("environment", PATIENCE_ENV,
                          "must be a number of seconds from 0 to 86400, e.g. 60", raw)
    return value


def retry_delays(patience_s: float) -> list[float]:
    """Backoff delays (1, 2, 4, ... s, at most MAX_RETRY_DELAY_S each) adding up to `patience_s`."""
    delays: list[float] = []
    step = 1.0
    while sum(delays) < patience_s:
        delays.append(min(step, MAX_RETRY_DELAY_S, patience_s - sum(delays)))
        step *= 2
    return delays


def upload_retries(patience_s: float | None = None) -> dict[str, Any]:
    """Task options for upload retries, e.g. `recover_spool_task.with_options(**upload_retries())`."""
    delays = retry_delays(upload_patience_s() if patience_s is None else patience_s)
    return {"retries": len(delays), "retry_delay_seconds": delays}


def is_done(store: ObjectStore, key: str) -> bool:
    """True if the store holds the sidecar of `key`.

    A key planned under `pending/` also counts as done once it was approved to `published/`;
    any key counts as done while the QA gate holds it under `held/` (a reviewer decides).
    """
    sidecar_key = key + SIDECAR_SUFFIX
    if store.exists(sidecar_key) or store.exists(held_key(sidecar_key)):
        return True
    return key.startswith(PENDING_PREFIX) and store.exists(
        PUBLISHED_PREFIX + sidecar_key.removeprefix(PENDING_PREFIX))


def find_missing(store: ObjectStore, jobs: list[ImageJob]) -> list[ImageJob]:
    """Jobs whose sidecar is not in the store yet (the image may be missing or partial).

    One listing of the folder the jobs share (plus its `published/` twin for a gated
    campaign, and its `held/` twin) instead of a HEAD request per image: a week is one folder.
    """
    if len(jobs) <= 2:
        return [job for job in jobs if not is_done(store, job.key)]
    folder = posixpath.commonpath([job.key.rpartition("/")[0] for job in jobs])
    prefix = f"{folder}/" if folder else ""
    present = set(store.list(prefix))
    present |= {key.removeprefix(HELD) for key in store.list(held_key(prefix))}
    if prefix.startswith(PENDING_PREFIX):
        approved = store.list(PUBLISHED_PREFIX + prefix.removeprefix(PENDING_PREFIX))
        present |= {PENDING_PREFIX + key.removeprefix(PUBLISHED_PREFIX) for key in approved}
    return [job for job in jobs if job.key + SIDECAR_SUFFIX not in present]
