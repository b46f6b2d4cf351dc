"""Check a finished image's labels: explicit, implicit, invisible watermark, C2PA.

Each check is a plain function that returns a typed section; `verify_bytes` runs them all and
says whether every required one passed. Nothing here fetches anything: the caller (the CLI,
a flow, a test) hands over the bytes, and optionally the image's sidecar and a store.

- **explicit** — the visible label, measured where the sidecar recorded it, else where the
  brand's `label:` spec puts it (the same geometry `apply_label` computes for this image
  size): the plate lies inside the image at its corner, the text's ink is at least 5% of the
  shorter side tall, and text and plate differ by a WCAG contrast ratio of at least 4.5:1;
  then OCR reads it back as a platform would, at full size and after a 50% downscale + JPEG
  q70 (`tasks.qa.read_label`, the very reading the QA gate does before publishing).
- **implicit** — the XMP `TC260:AIGC` JSON (the seven GB 45438 keys, `Label` "1", the brand's
  producer) and IPTC `DigitalSourceType` trainedAlgorithmicMedia.
- **watermark** — the invisible mark's content id (`tasks.labels.invisible.detect`), and the object
  key it resolves to in a store. Skipped, with a note, when `tasks.labels.invisible` is unavailable.
- **c2pa** — absent / valid / trusted / invalid (`tasks.labels.provenance.read_c2pa`); required
  only when asked (`require_c2pa`).
"""

from __future__ import annotations

import importlib
import io
import json
import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image, ImageColor, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from tasks.core.errors import LabelError, StoreError, ZpipeError
from tasks.labels.provenance import C2paStateName, ProvenanceError, load_trust_anchors, read_c2pa
from tasks.labels.watermark import (
    DIGITAL_SOURCE_TYPE_AI,
    MIN_HEIGHT_RATIO,
    Corner,
    LabelSpec,
    apply_label,
    read_labels,
)

if TYPE_CHECKING:
    from tasks.config.schema import BrandConfig
    from tasks.store.objects import ObjectStore

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
CheckStatus = Literal["pass", "fail", "not_checked"]

TC260_KEYS = ("Label", "ContentProducer", "ProduceID", "ReservedCode1", "ContentPropagator",
              "PropagateID", "ReservedCode2")
MIN_CONTRAST = 4.5  # WCAG 2 AA for body text; the label must stay legible on any picture
INK_COVERAGE = 0.25  # a pixel is text ink when it is a quarter of the way from plate to text
HEIGHT_TOLERANCE_PX = 1  # rows inked below INK_COVERAGE (anti-aliased edges) are not measured
MIN_TEXT_MATCH = 0.5  # overlap of the found text with the label text rendered where expected
_LUMA = np.array([0.299, 0.587, 0.114])  # Pillow's "L" (ITU-R 601 luma), 0..255
MAX_SIDECAR_SCAN = 5000  # sidecars read when resolving a content id whose key is not obvious
_CORNERS: tuple[Corner, ...] = ("bottom-right", "bottom-left", "top-right", "top-left")
_WATERMARK_UNAVAILABLE = "watermark: not checked (tasks.labels.invisible unavailable)"


class VerifyInputError(ZpipeError):
    """What was handed to verify is not an image (or the trust anchors are not certificates)."""


# --- Report ------------------------------------------------------------------------------


class Check(BaseModel):
    """One section of the report; `required` sections decide `VerifyReport.ok`."""

    model_config = ConfigDict(extra="forbid")

    status: CheckStatus
    required: bool
    messages: list[str] = Field(default_factory=list)

    @property
    def failed(self) -> bool:
        """True if this section fails the verdict (required and not passing)."""
        return self.required and self.status != "pass"


class ExplicitCheck(Check):
    """The visible label as measured in the pixels."""

    source: Literal["sidecar", "brand", "default"] | None = None  # where the geometry came from
    position: Corner | None = None
    text: str | None = None
    bbox: Box | None = None  # the plate
    text_bbox: Box | None = None
    text_height_px: int | None = None  # measured ink height
    min_required_px: int = 0  # ceil(5% of the shorter side)
    contrast_ratio: float | None = None  # WCAG, text vs the plate under it
    text_match: float | None = None  # overlap with the expected rendering (None: not rendered)
    readback: list[dict[str, Any]] | None = None  # OCR: full size, repost copy (tasks.qa.read_label)

    def summary(self) -> str:
        if self.text_height_px is None:
            return self.messages[0] if self.messages else "not found"
        contrast = f"{self.contrast_ratio:.1f}:1" if self.contrast_ratio else "?"
        read = ""
        if self.readback:
            read = ", OCR " + " / ".join(f"{r['copy_name']} {'✓' if r['passed'] else '✗'} {r['read']!r}"
                                         for r in self.readback)
        return (f"{self.text!r} at {self.position}: text {self.text_height_px} px (needs "
                f">= {self.min_required_px} px, 5%), contrast {contrast}{read} [{self.source}]")


class ImplicitCheck(Check):
    """The XMP implicit label."""

    tc260: dict[str, Any] | None = None
    digital_source_type: str | None = None
    zpipe: dict[str, str] = Field(default_factory=dict)

    def summary(self) -> str:
        if self.tc260 is None:
            return self.messages[0] if self.messages else "missing"
        return (f"TC260:AIGC Label={self.tc260.get('Label')!r} ProduceID="
                f"{self.tc260.get('ProduceID')!r} ContentProducer={self.tc260.get('ContentProducer')!r}; "
                f"DigitalSourceType {(self.digital_source_type or 'missing').rsplit('/', 1)[-1]}")


class WatermarkCheck(Check):
    """The invisible watermark."""

    found: bool | None = None
    content_id: str | None = None
    bit_errors: int | None = None
    score: float | None = None
    size_tried: tuple[int, int] | None = None  # the frame the mark was read in (crop/pad hypotheses)
    fit: str | None = None  # "frame", "crop" or "pad"
    key: str | None = None  # the object key the content id resolves to in the store

    def summary(self) -> str:
        if self.status == "not_checked":
            return self.messages[0] if self.messages else "not checked"
        if not self.found:
            return f"no watermark found (score {self.score or 0:.2f})"
        where = f" -> {self.key}" if self.key else ""
        return f"content id {self.content_id}{where} ({self.bit_errors} bit errors, score {self.score:.2f})"


class C2paCheck(Check):
    """C2PA Content Credentials."""

    state: C2paStateName | None = None
    reasons: list[str] = Field(default_factory=list)
    trust_anchors: bool = False
    content_id: str | None = None
    claim_generator: str | None = None

    def summary(self) -> str:
        if self.state is None:
            return self.messages[0] if self.messages else "not checked"
        by = f" by {self.claim_generator}" if self.claim_generator else ""
        need = "" if self.required else " (not required)"
        return f"{self.state}{by}{need}"


class VerifyReport(BaseModel):
    """Everything `zpipe verify` found about one image."""

    model_config = ConfigDict(extra="forbid")

    target: str
    format: str  # Pillow's name: JPEG, PNG, WEBP
    mime: str
    width: int
    height: int
    size_bytes: int
    sidecar: bool  # a sidecar was given (its recorded label box was used)
    explicit: ExplicitCheck
    implicit: ImplicitCheck
    watermark: WatermarkCheck
    c2pa: C2paCheck
    ok: bool

    def sections(self) -> dict[str, Check]:
        return {"explicit": self.explicit, "implicit": self.implicit,
                "watermark": self.watermark, "c2pa": self.c2pa}

    def failures(self) -> list[str]:
        """Names of the required sections that did not pass."""
        return [name for name, check in self.sections().items() if check.failed]


# --- Entry point -------------------------------------------------------------------------


def verify_bytes(
    data: bytes,
    *,
    brand: BrandConfig | None,
    store: ObjectStore | None,
    trust_anchors: bytes | None,
    require_c2pa: bool = False,
    require_watermark: bool | None = None,
    sidecar: dict[str, Any] | None = None,
    target: str = "<bytes>",
) -> VerifyReport:
    """Run every check on one encoded image; `ok` is True when every required check passes.

    Required: explicit and implicit always; the watermark when `tasks.labels.invisible` is available
    (or as `require_watermark` says); C2PA when `require_c2pa`. `sidecar` is the image's JSON
    sidecar, when there is one: its recorded label box and content id are checked against.
    """
    # 1. Decode (the only input error: everything after it is a finding)
    image, fmt, mime = _decode(data, target)
    if trust_anchors is not None:
        trust_anchors = _anchors(trust_anchors)
    spec = brand.label if brand is not None else LabelSpec()
    sidecar = sidecar if isinstance(sidecar, dict) else None
    recorded = ((sidecar or {}).get("labels") or {}).get("explicit")
    sidecar_id = (sidecar or {}).get("content_id")

    # 2. The four checks
    explicit = check_explicit(image, spec, recorded, "brand" if brand is not None else "default")
    implicit = check_implicit(data, brand, sidecar_id)
    produce_id = (implicit.tc260 or {}).get("ProduceID") or sidecar_id
    watermark = check_watermark(image, store, produce_id, require_watermark)
    c2pa = check_c2pa(data, mime, trust_anchors, require_c2pa, produce_id)

    # 3. Verdict
    ok = not any(check.failed for check in (explicit, implicit, watermark, c2pa))
    return VerifyReport(
        target=target, format=fmt, mime=mime, width=image.width, height=image.height,
        size_bytes=len(data), sidecar=sidecar is not None, explicit=explicit, implicit=implicit,
        watermark=watermark, c2pa=c2pa, ok=ok,
    )


def _decode(data: bytes, target: str) -> tuple[Image.Image, str, str]:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            fmt = im.format or "?"
            mime = Image.MIME.get(fmt, "application/octet-stream")
            return im.convert("RGB"), fmt, mime
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise VerifyInputError(f"{target}: not an image Pillow can read ({len(data)} bytes): {exc}") from None


def _anchors(pem: bytes) -> bytes:
    try:
        return load_trust_anchors(pem)
    except ProvenanceError as exc:
        raise VerifyInputError(str(exc)) from None


# --- Explicit label ----------------------------------------------------------------------


class _Expected(BaseModel):
    """Where the label should be, and (when rendered here) its text's coverage mask."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    position: Corner
    text: str
    bbox: Box
    text_bbox: Box
    mask: Any = None  # uint8 array of the text's coverage over the whole image, or None


def check_explicit(image: Image.Image, spec: LabelSpec, recorded: dict[str, Any] | None = None,
                   spec_source: Literal["brand", "default"] = "brand") -> ExplicitCheck:
    """Measure the visible label where the sidecar recorded it, else where `spec` puts it."""
    short = min(image.size)
    min_px = math.ceil(MIN_HEIGHT_RATIO * short)
    rgb = np.asarray(image)
    text_up = _colour_luminance(spec.text_color) > _colour_luminance(spec.plate_color)

    # 1. The expected geometry: the sidecar's record, else the spec's rendering at this size
    source: Literal["sidecar", "brand", "default"] = spec_source
    if recorded:
        try:
            expected = _from_sidecar(recorded)
        except (KeyError, TypeError, ValueError) as exc:
            return ExplicitCheck(status="fail", required=True, min_required_px=min_px,
                                 messages=[f"the sidecar's labels.explicit is malformed: {exc!r}"])
        rendered = _render(image.size, spec.model_copy(update={"text": expected.text}), expected.position)
        if rendered is not None and rendered.bbox == expected.bbox:
            expected = rendered  # same box: the rendering's text mask applies too
        source = "sidecar"
    else:
        try:
            expected = _render(image.size, spec, spec.position, strict=True)
        except LabelError as exc:
            return ExplicitCheck(status="fail", required=True, min_required_px=min_px,
                                 messages=[f"cannot compute where the label goes: {exc}"])
    assert expected is not None

    # 2. Measure there, then read it back as a platform would
    result = _measure(rgb, expected, text_up, min_px, spec, short)
    result.source = source
    if result.status == "pass":
        _read_back(image, expected, result)
    if result.status == "pass" or recorded:
        return result

    # 3. Not where the spec puts it: look in the other corners, to say where it is
    for corner in _CORNERS:
        if corner == spec.position:
            continue
        other = _render(image.size, spec, corner)
        if other is not None and _measure(rgb, other, text_up, min_px, spec, short).status == "pass":
            result.messages.insert(0, f"the label is at {corner}, but the {spec_source} label spec "
                                      f"puts it at {spec.position}")
            break
    return result


def _read_back(image: Image.Image, expected: _Expected, check: ExplicitCheck) -> None:
    """OCR the label at full size and in a repost copy (the QA gate's reading); fail if unread."""
    from tasks.qa import read_label
    from tasks.qa.settings import QASettings

    settings = QASettings()  # the gate's default thresholds and repost copy
    readings = read_label(image, expected.text_bbox, expected.text, settings.max_cer,
                          settings.label.downscale, settings.label.jpeg_quality)
    check.readback = [reading.model_dump() for reading in readings]
    for reading in readings:
        if not reading.passed:
            worst = max(reading.segments, key=lambda s: s.cer - s.threshold)
            check.messages.append(
                f"OCR cannot read the label in the {reading.copy_name} copy (scale {reading.scale:g}"
                + (f", JPEG q{reading.jpeg_quality}" if reading.jpeg_quality else "")
                + f"): read {reading.read!r}, CER {worst.cer:.2f} on {worst.text!r} > "
                  f"{worst.threshold:.2f}")
            check.status = "fail"


def _from_sidecar(recorded: dict[str, Any]) -> _Expected:
    bbox = tuple(int(v) for v in recorded["bbox"])
    text_bbox = tuple(int(v) for v in recorded["text_bbox"])
    if len(bbox) != 4 or len(text_bbox) != 4:
        raise ValueError("bbox and text_bbox need 4 numbers")
    return _Expected(position=recorded["position"], text=str(recorded["text"]),
                     bbox=bbox, text_bbox=text_bbox)  # type: ignore[arg-type]


def _render(size: tuple[int, int], spec: LabelSpec, position: Corner,
            strict: bool = False) -> _Expected | None:
    """The label `apply_label` draws on an image of `size`: geometry and text mask."""
    mask_spec = spec.model_copy(update={"position": position, "text_color": "#FFFFFF",
                                        "plate_color": "#000000"})
    try:
        drawn, placement = apply_label(Image.new("RGB", size), mask_spec)
    except LabelError:
        if strict:
            raise
        return None
    return _Expected(position=position, text=placement.text, bbox=placement.bbox,
                     text_bbox=placement.text_bbox, mask=np.asarray(drawn.convert("L")))


def _measure(rgb: np.ndarray, expected: _Expected, text_up: bool, min_px: int,
             spec: LabelSpec, short: int) -> ExplicitCheck:
    """Find the text on its plate inside `expected.bbox` and measure height and contrast."""
    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = expected.bbox
    tx0, ty0, tx1, ty1 = expected.text_bbox
    check = ExplicitCheck(status="fail", required=True, position=expected.position,
                          text=expected.text, bbox=expected.bbox, text_bbox=expected.text_bbox,
                          min_required_px=min_px)

    # 1. Inside the image, at its corner, text box inside the plate
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        check.messages.append(f"the label plate {expected.bbox} is not fully inside the "
                              f"{width}x{height} image")
        return check
    if not (x0 <= tx0 < tx1 <= x1 and y0 <= ty0 < ty1 <= y1):
        check.messages.append(f"the text box {expected.text_bbox} is not inside the plate {expected.bbox}")
        return check
    margin = round(spec.margin_ratio * short) + 2
    dx = x0 if expected.position.endswith("left") else width - x1
    dy = y0 if expected.position.startswith("top") else height - y1
    if dx > margin or dy > margin:
        check.messages.append(f"the label plate {expected.bbox} is not at the {expected.position} "
                              "corner of the image")

    # 2. Plate level: the padding around the text, clear of the rounded corners
    sub = rgb[y0:y1, x0:x1].astype(np.float64)  # plate-relative coordinates from here on
    luma, lum = sub @ _LUMA, _relative_luminance(sub)
    pad = max(1, min(tx0 - x0, ty0 - y0, x1 - tx1, y1 - ty1))
    r = pad // 2 + 1  # apply_label rounds the plate's corners with radius pad // 2
    clear = slice(r, (x1 - x0) - r)
    text_at = (slice(ty0 - y0, ty1 - y0), slice(tx0 - x0, tx1 - x0))
    region = luma[:, clear]
    band = np.ones(region.shape, bool)
    band[max(0, ty0 - y0 - 1):ty1 - y0 + 1, max(0, tx0 - x0 - r - 1):tx1 - x0 - r + 1] = False
    if region.size == 0 or band.sum() < 8:
        check.messages.append(f"the label plate {expected.bbox} is too small to measure")
        return check
    plate = float(np.median(region[band]))

    # 3. Text: pixels a quarter of the way (or more) from the plate towards the text colour
    sign = 1.0 if text_up else -1.0
    text_box = luma[text_at]
    text_ref = float(np.percentile(text_box, 98 if text_up else 2))
    span = sign * (text_ref - plate)
    if span < 32:  # an eighth of the grey scale: nothing text-like in the box
        check.messages.append(f"no label text at {expected.position} {expected.text_bbox}: nothing "
                              f"there stands out (luma {plate:.0f} vs {text_ref:.0f} at most)")
        return check
    ink = sign * (region - plate) > INK_COVERAGE * span
    rows = np.flatnonzero(ink.any(axis=1))
    check.text_height_px = int(rows[-1] - rows[0] + 1)
    solid = sign * (text_box - plate) > 0.5 * span
    density = float(solid.mean())
    plate_lum = float(np.median(lum[:, clear][band]))
    text_lum = float(np.median(lum[text_at][solid]))
    check.contrast_ratio = round(_contrast(text_lum, plate_lum), 2)
    if expected.mask is not None:
        want = expected.mask[ty0:ty1, tx0:tx1] >= 128
        union = np.logical_or(want, solid).sum()
        check.text_match = round(float(np.logical_and(want, solid).sum() / union), 3) if union else 0.0

    # 4. Verdict
    if not 0.03 <= density <= 0.8:
        check.messages.append(f"the label box {expected.text_bbox} does not look like text "
                              f"({density:.0%} of it is ink)")
    if check.text_height_px + HEIGHT_TOLERANCE_PX < min_px:
        check.messages.append(f"label text is {check.text_height_px} px tall; GB 45438-2025 needs "
                              f">= {min_px} px (5% of the shorter side, {short} px)")
    if check.contrast_ratio < MIN_CONTRAST:
        check.messages.append(f"label contrast is {check.contrast_ratio:.2f}:1 against its plate; "
                              f"legible text needs >= {MIN_CONTRAST}:1")
    if check.text_match is not None and check.text_match < MIN_TEXT_MATCH:
        check.messages.append(f"the text in the label box does not match {expected.text!r} "
                              f"(overlap {check.text_match:.0%})")
    check.status = "fail" if check.messages else "pass"
    return check


def _relative_luminance(rgb: np.ndarray) -> np.ndarray:
    """WCAG 2 relative luminance of sRGB values 0..255 (last axis R, G, B)."""
    c = rgb / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return linear @ np.array([0.2126, 0.7152, 0.0722])


def _colour_luminance(colour: str) -> float:
    return float(_relative_luminance(np.asarray(ImageColor.getrgb(colour)[:3], np.float64)))


def _contrast(a: float, b: float) -> float:
    """WCAG 2 contrast ratio of two relative luminances (1..21)."""
    return (max(a, b) + 0.05) / (min(a, b) + 0.05)


# --- Implicit label ----------------------------------------------------------------------


def check_implicit(data: bytes, brand: BrandConfig | None = None,
                   content_id: str | None = None) -> ImplicitCheck:
    """Read XMP TC260:AIGC and IPTC DigitalSourceType; check keys, producer and content id."""
    try:
        labels = read_labels(data)
    except LabelError as exc:
        if not _has_xmp(data):
            message = ("no XMP TC260:AIGC label: the file was stripped of metadata (it has no XMP "
                       "packet; a re-save or re-encode after labelling drops it)")
        else:
            message = f"no valid XMP TC260:AIGC label: {exc}"
        return ImplicitCheck(status="fail", required=True, messages=[message])

    aigc, dst = labels["aigc"], labels["digital_source_type"]
    check = ImplicitCheck(status="fail", required=True, tc260=aigc if isinstance(aigc, dict) else None,
                          digital_source_type=dst or None, zpipe=labels["zpipe"])
    if check.tc260 is None:
        check.messages.append(f"TC260:AIGC is not a JSON object (got {aigc!r})")
        return check
    if missing := [key for key in TC260_KEYS if key not in aigc]:
        check.messages.append(f"TC260:AIGC lacks {', '.join(missing)} (GB 45438-2025 has seven keys)")
    if str(aigc.get("Label")) != "1":
        check.messages.append(f"TC260:AIGC Label is {aigc.get('Label')!r}; AI-generated content is '1'")
    if not aigc.get("ContentProducer"):
        check.messages.append("TC260:AIGC ContentProducer is empty")
    elif brand is not None and aigc["ContentProducer"] != brand.producer.id:
        check.messages.append(f"TC260:AIGC ContentProducer {aigc['ContentProducer']!r} is not the "
                              f"brand's producer.id {brand.producer.id!r}")
    if not aigc.get("ProduceID"):
        check.messages.append("TC260:AIGC ProduceID is empty")
    elif content_id and aigc["ProduceID"] != content_id:
        check.messages.append(f"TC260:AIGC ProduceID {aigc['ProduceID']!r} is not the sidecar's "
                              f"content_id {content_id!r}")
    if not dst:
        check.messages.append("no IPTC DigitalSourceType in the XMP")
    elif dst != DIGITAL_SOURCE_TYPE_AI:
        check.messages.append(f"IPTC DigitalSourceType is {dst!r}, not {DIGITAL_SOURCE_TYPE_AI}")
    check.status = "fail" if check.messages else "pass"
    return check


def _has_xmp(data: bytes) -> bool:
    """True if the file carries any XMP packet (Pillow's view, or the raw bytes)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.info.get("xmp"):
                return True
    except (OSError, UnidentifiedImageError):
        pass  # not an image Pillow knows: the byte search below still answers
    return b"<x:xmpmeta" in data


# --- Invisible watermark -----------------------------------------------------------------


def check_watermark(image: Image.Image, store: ObjectStore | None = None,
                    content_id: str | None = None,
                    required: bool | None = None) -> WatermarkCheck:
    """Detect the invisible watermark; resolve its content id to an object key in `store`."""
    # 1. The detector is optional (another module); without it the check is skipped
    detect = _watermark_detector()
    if detect is None:
        return WatermarkCheck(status="fail" if required else "not_checked", required=bool(required),
                              messages=[_WATERMARK_UNAVAILABLE])
    check = WatermarkCheck(status="fail", required=True if required is None else required)
    try:
        found = detect(image)
    except (ZpipeError, ValueError) as exc:
        check.messages.append(f"watermark detection failed: {exc}")
        return check
    check.found = bool(getattr(found, "found", False))
    check.content_id = getattr(found, "content_id", None)
    check.bit_errors = getattr(found, "bit_errors", None)
    check.score = getattr(found, "score", None)
    check.size_tried = getattr(found, "size_tried", None)
    check.fit = getattr(found, "fit", None)
    if not check.found or not check.content_id:
        check.messages.append("no invisible watermark found: the image was never marked, or was "
                              "cropped, rotated or flipped")
        return check

    # 2. Consistent with the labels, and known to the store
    if content_id and check.content_id != content_id:
        check.messages.append(f"the watermark's content id {check.content_id} differs from the "
                              f"label's {content_id}: the metadata belongs to another image")
    if store is not None:
        try:
            check.key = find_content_key(store, check.content_id)
        except StoreError as exc:
            check.messages.append(f"could not search {store.describe()}: {exc}")
        else:
            if check.key is None:
                check.messages.append(f"content id {check.content_id} matches no sidecar in "
                                      f"{store.describe()}")
    mismatch = content_id and check.content_id != content_id
    check.status = "fail" if mismatch else "pass"
    return check


def _watermark_detector() -> Any:
    """`tasks.labels.invisible.detect`, or None when the module (or the function) is unavailable."""
    try:
        invisible = importlib.import_module("tasks.labels.invisible")
    except ImportError:
        return None
    return getattr(invisible, "detect", None)


def find_content_key(store: ObjectStore, content_id: str) -> str | None:
    """The key of the image whose sidecar records `content_id`, or None.

    Keys end in their content id (`...-v1-3f0c2a9b1d4e.jpg`), so sidecars named after it are
    read first; the rest (up to MAX_SIDECAR_SCAN) only if none matches.
    """
    sidecars = [k for k in store.list() if k.endswith(".json") and not k.startswith("_")]
    named = [k for k in sidecars if content_id in k.rsplit("/", 1)[-1]]
    others = [k for k in sidecars if content_id not in k.rsplit("/", 1)[-1]][:MAX_SIDECAR_SCAN]
    for key in named + others:
        try:
            doc = json.loads(store.get(key))
        except (StoreError, ValueError):
            continue  # a half-written or foreign JSON object: not a sidecar
        if isinstance(doc, dict) and doc.get("content_id") == content_id:
            return str(doc.get("key") or key.removesuffix(".json"))
    return None


# --- C2PA --------------------------------------------------------------------------------


def check_c2pa(data: bytes, mime: str, trust_anchors: bytes | None, required: bool = False,
               content_id: str | None = None) -> C2paCheck:
    """Read the C2PA manifest; passing = trusted (or valid when no trust anchors are given)."""
    check = C2paCheck(status="fail", required=required, trust_anchors=bool(trust_anchors))
    try:
        found = read_c2pa(data, mime, trust_anchors)
    except ProvenanceError as exc:
        check.status = "fail" if required else "not_checked"
        check.messages.append(f"C2PA not checked: {exc}")
        return check
    check.state, check.reasons = found.state, found.reasons
    manifest = found.manifest or {}
    generators = manifest.get("claim_generator_info") or []
    if generators and isinstance(generators[0], dict):
        g = generators[0]
        check.claim_generator = f"{g.get('name', '?')}/{g.get('version', '?')}"
    check.content_id = (found.aigc or {}).get("content_id")

    if found.state == "absent":
        check.messages.append("no C2PA manifest (Content Credentials) in the file")
    elif found.state == "invalid":
        check.messages.append("the C2PA manifest is invalid: " + "; ".join(found.reasons))
    elif found.state == "valid" and trust_anchors:
        check.messages.append("the C2PA signature checks, but its certificate does not chain to "
                              "the given trust anchors")
    if found.state in ("valid", "trusted"):
        actions = found.assertion("c2pa.actions.v2") or found.assertion("c2pa.actions") or {}
        created = [a for a in actions.get("actions", []) if a.get("action") == "c2pa.created"]
        if not any(a.get("digitalSourceType") == DIGITAL_SOURCE_TYPE_AI for a in created):
            check.messages.append("the C2PA manifest has no c2pa.created action with "
                                  "digitalSourceType trainedAlgorithmicMedia")
        if content_id and check.content_id and check.content_id != content_id:
            check.messages.append(f"the C2PA content id {check.content_id} differs from the "
                                  f"label's {content_id}")
    check.status = "fail" if check.messages else "pass"
    return check
