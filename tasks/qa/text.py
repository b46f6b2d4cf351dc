"""Reading text back with OCR: the drawn headline, the typeset overlay, the explicit AIGC label.

Only the regions that matter are read, never the whole image:
- the model-drawn headline: the top band the templates ask for it in, searched for lines at
  a reduced width (`detect_width_px`), each line then read at full resolution;
- the typeset overlay and the label: their recorded boxes, recognised directly (we drew them,
  so there is nothing to search for; what is in question is whether they can be read).

Comparison is by character error rate (CER): the Levenshtein distance (rapidfuzz) between the
intended text and the best-matching stretch of what OCR read, over the intended length, after
`normalize` (NFKC, case-folded, letters and digits only, l/1/| -> i and 0 -> o, the usual
OCR confusions). Other text in the region (a logo, a price) does not count against it.

`read_label` is also what `zpipe verify` uses (tasks.labels.verify), so the gate and the verifier
read the label the same way: at full size and in a repost copy (50% downscale + JPEG q70).
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict
from rapidfuzz import fuzz
from rapidfuzz.distance import Levenshtein

from tasks.qa import models
from tasks.qa.report import CheckResult
from tasks.qa.settings import MaxCer, QASettings

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
LINE_PAD = 0.25  # a known line box is read with a quarter of its height of margin around it
_CONFUSABLES = str.maketrans({"l": "i", "1": "i", "|": "i", "!": "i", "0": "o"})
SEGMENT_SPLIT = re.compile(r"\s*[·|]\s*")  # "AI生成 · AI-generated": segments checked one by one


# --- Comparing ---------------------------------------------------------------------------


def normalize(text: str) -> str:
    """Text as compared: NFKC, case-folded, OCR confusions folded, letters and digits only."""
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_CONFUSABLES)
    return "".join(c for c in folded if unicodedata.category(c)[0] in "LN")


def cer(expected: str, read: Sequence[str]) -> float:
    """Character error rate of `expected` against the best-matching stretch of the lines `read`.

    Consecutive lines are also tried joined (a headline split in two boxes); a line longer than
    the expected text is compared on its best-aligned window. 0.0 = read exactly; 1.0 or more
    = nothing like it (capped at 1.0).
    """
    want = normalize(expected)
    if not want:
        return 0.0
    lines = [normalize(line) for line in read]
    best = len(want)
    for start in range(len(lines)):
        joined = ""
        for line in lines[start:]:
            joined += line
            best = min(best, _distance(want, joined))
            if len(joined) > 2 * len(want):
                break
    return min(1.0, best / len(want))


def _distance(want: str, got: str) -> int:
    if len(got) <= len(want):
        return Levenshtein.distance(want, got)
    window = fuzz.partial_ratio_alignment(want, got)
    if window is None:
        return Levenshtein.distance(want, got[:len(want)])
    return Levenshtein.distance(want, got[window.dest_start:window.dest_end])


# --- Reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One line of text OCR read, and where (image coordinates)."""

    text: str
    score: float
    box: Box


def _bgr(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def read_lines(image: Image.Image, region: Box, detect_width_px: int, threads: int = 1) -> list[Line]:
    """Find the text lines inside `region` (searched at `detect_width_px`) and read each one."""
    ocr = models.ocr(threads)
    x0, y0, x1, y1 = _clip(region, image.size)
    full = _bgr(image.crop((x0, y0, x1, y1)))
    scale = min(1.0, detect_width_px / max(1, x1 - x0))
    small = full if scale == 1.0 else _bgr(image.crop((x0, y0, x1, y1)).resize(
        (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))), Image.BILINEAR))
    quads = [quad / scale for quad in ocr.detect(small)]
    texts = ocr.recognize(ocr.crops(full, quads))
    lines = []
    for quad, (text, score) in zip(quads, texts, strict=True):
        xs, ys = quad[:, 0], quad[:, 1]
        box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
        lines.append(Line(text=text, score=round(score, 4), box=box))
    return lines


def read_box(image: Image.Image, box: Box, threads: int = 1) -> Line:
    """Read the one line of text known to be in `box` (recognition only, with a margin)."""
    x0, y0, x1, y1 = box
    pad = max(2, round(LINE_PAD * (y1 - y0)))
    padded = _clip((x0 - pad, y0 - pad, x1 + pad, y1 + pad), image.size)
    if padded[2] - padded[0] < 2 or padded[3] - padded[1] < 2:
        return Line(text="", score=0.0, box=padded)
    [(text, score)] = models.ocr(threads).recognize([_bgr(image.crop(padded))])
    return Line(text=text, score=round(score, 4), box=padded)


def _clip(box: Box, size: tuple[int, int]) -> Box:
    x0, y0, x1, y1 = box
    return max(0, x0), max(0, y0), min(size[0], x1), min(size[1], y1)


def repost_copy(image: Image.Image, scale: float, jpeg_quality: int) -> Image.Image:
    """What a platform serves after a repost: the image downscaled, then JPEG-compressed."""
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small = image.convert("RGB").resize(size, Image.LANCZOS) if scale != 1.0 else image.convert("RGB")
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=jpeg_quality)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _repost_region(image: Image.Image, box: Box, scale: float, quality: int) -> tuple[Image.Image, Box]:
    """The repost copy of the neighbourhood of `box` only, and `box` in it.

    Same pixels as `repost_copy` of the whole image there: the crop keeps a margin wider than
    the resampling filter and starts on the full copy's JPEG grid (16 px MCUs at `scale`), so
    only a few percent of the image is resized and encoded (the label is all that is read).
    """
    grid = max(1, round(16 / scale))  # input pixels per MCU of the downscaled copy
    margin = 4 * grid
    x0, y0 = (max(0, v - margin) // grid * grid for v in box[:2])
    x1, y1 = min(image.width, box[2] + margin), min(image.height, box[3] + margin)
    if x1 < image.width:  # end on the grid too, so the crop's scale is exactly `scale`
        x1 = min(image.width, -(-x1 // grid) * grid)
    if y1 < image.height:
        y1 = min(image.height, -(-y1 // grid) * grid)
    region = repost_copy(image.crop((x0, y0, x1, y1)), scale, quality)
    return region, (round((box[0] - x0) * scale), round((box[1] - y0) * scale),
                    round((box[2] - x0) * scale), round((box[3] - y0) * scale))


# --- The explicit label --------------------------------------------------------------------


class SegmentReading(BaseModel):
    """One segment of the label ("AI生成", "AI-generated") against what was read."""

    model_config = ConfigDict(extra="forbid")

    text: str
    cer: float
    threshold: float


class LabelReading(BaseModel):
    """The label read from one copy of the image: full size, or the repost copy."""

    model_config = ConfigDict(extra="forbid")

    copy_name: str  # "full" or "repost"
    scale: float
    jpeg_quality: int | None
    read: str
    confidence: float
    segments: list[SegmentReading]
    passed: bool

    @property
    def cer(self) -> float:
        return max((segment.cer for segment in self.segments), default=0.0)


def read_label(image: Image.Image, text_bbox: Box, label_text: str, max_cer: MaxCer,
               downscale: float = 0.5, jpeg_quality: int = 70, threads: int = 1) -> list[LabelReading]:
    """Read the explicit label at full size and in the repost copy, as a platform would.

    Each segment of the label text (split at "·" or "|") must be read within its script's
    CER threshold: "AI生成" exactly (4 hanzi; one error is 0.25), "AI-generated" within 0.20.
    """
    readings = []
    for name, scale, quality in (("full", 1.0, None), ("repost", downscale, jpeg_quality)):
        if quality is None:
            copy, box = image, text_bbox
        else:
            copy, box = _repost_region(image, text_bbox, scale, quality)
        line = read_box(copy, box, threads)
        segments = [SegmentReading(text=segment, cer=round(cer(segment, [line.text]), 4),
                                   threshold=max_cer.for_text(segment))
                    for segment in SEGMENT_SPLIT.split(label_text.strip()) if normalize(segment)]
        readings.append(LabelReading(
            copy_name=name, scale=scale, jpeg_quality=quality, read=line.text,
            confidence=line.score, segments=segments,
            passed=all(s.cer <= s.threshold for s in segments)))
    return readings


def check_label(image: Image.Image, text_bbox: Box, label_text: str, settings: QASettings) -> CheckResult:
    """The label check of the gate: both readings must pass; value = the worst segment CER."""
    readings = read_label(image, text_bbox, label_text, settings.max_cer, settings.label.downscale,
                          settings.label.jpeg_quality, settings.threads)
    worst = max(readings, key=lambda r: max((s.cer - s.threshold for s in r.segments), default=-1.0))
    segment = max(worst.segments, key=lambda s: s.cer - s.threshold) if worst.segments else None
    passed = all(r.passed for r in readings)
    reason = "" if passed else (
        f"label {label_text!r} not legible in the {worst.copy_name} copy: read {worst.read!r} "
        f"(CER {segment.cer:.2f} on {segment.text!r} > {segment.threshold:.2f})" if segment else "")
    value = max(r.cer for r in readings)
    return CheckResult(value=round(value, 4), threshold=segment.threshold if segment else None,
                       verdict="pass" if passed else "fail", score=round(1.0 - min(1.0, value), 4),
                       reason=reason, detail={"readings": [r.model_dump() for r in readings]})


# --- Headline text -------------------------------------------------------------------------


def check_drawn_text(image: Image.Image, draw_text: dict[str, str], settings: QASettings) -> CheckResult:
    """Text fidelity of copy the model was asked to draw: read the top band, compare by CER.

    A bilingual prompt asks for the headline in both languages and the model draws one: the
    check passes when any language's copy is read within its threshold (value = the best).
    """
    width, height = image.size
    band = (0, 0, width, max(1, round(height * settings.text.band_ratio)))
    lines = read_lines(image, band, settings.text.detect_width_px, settings.threads)
    read = [line.text for line in lines]
    per_language = {lang: {"text": text, "cer": round(cer(text, read), 4),
                           "threshold": settings.max_cer.for_text(text)}
                    for lang, text in draw_text.items() if normalize(text)}
    best_lang = min(per_language, key=lambda k: per_language[k]["cer"] - per_language[k]["threshold"])
    best = per_language[best_lang]
    passed = best["cer"] <= best["threshold"]
    wanted = " / ".join(repr(v["text"]) for v in per_language.values())
    reason = "" if passed else (f"drawn copy {wanted} not found in the top band: read "
                                f"{' | '.join(read) or 'nothing'!r} (best CER {best['cer']:.2f} > "
                                f"{best['threshold']:.2f})")
    return CheckResult(value=best["cer"], threshold=best["threshold"],
                       verdict="pass" if passed else "fail", score=round(1.0 - best["cer"], 4),
                       reason=reason, detail={"source": "model", "language": best_lang,
                                              "languages": per_language, "band": list(band),
                                              "read": [{"text": ln.text, "score": ln.score,
                                                        "box": list(ln.box)} for ln in lines]})


def check_typeset_text(image: Image.Image, lines: Sequence[tuple[str, Box]],
                       settings: QASettings) -> CheckResult:
    """The typeset headline overlay read back line by line (a font without the glyphs fails)."""
    found = []
    for text, box in lines:
        line = read_box(image, box, settings.threads)
        found.append({"text": text, "read": line.text, "score": line.score,
                      "cer": round(cer(text, [line.text]), 4),
                      "threshold": settings.max_cer.for_text(text)})
    worst = max(found, key=lambda f: f["cer"] - f["threshold"])
    passed = all(f["cer"] <= f["threshold"] for f in found)
    reason = "" if passed else (f"typeset headline {worst['text']!r} read as {worst['read']!r} "
                                f"(CER {worst['cer']:.2f} > {worst['threshold']:.2f}): check the "
                                "headline font has these glyphs")
    return CheckResult(value=worst["cer"], threshold=worst["threshold"],
                       verdict="pass" if passed else "fail", score=round(1.0 - worst["cer"], 4),
                       reason=reason, detail={"source": "overlay", "lines": found})
