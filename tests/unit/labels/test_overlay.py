"""Headline overlay: the exact copy typeset in the brand font, before the AIGC labels."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageColor, ImageDraw, ImageFont

from tasks.config.schema import EngineSettings, load_campaign, parse_week
from tasks.content.plan import brand_fingerprint, plan_week_slots
from tasks.core.errors import LabelError
from tasks.labels.overlay import HeadlineStyle, draw_headline
from tasks.labels.watermark import LabelSpec, LogoSpec, apply_label, find_cjk_font, read_labels
from tasks.publish.batch import label_job, logo_box
from tests.helpers import assert_visible_label
from zengine import GenerationResult

REPO = Path(__file__).resolve().parents[3]
STYLE = HeadlineStyle()


@pytest.fixture(scope="module")
def font() -> str:
    return str(find_cjk_font())


def _grey(width: int = 512, height: int = 512) -> Image.Image:
    return Image.new("RGB", (width, height), (128, 128, 128))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_overlay_draws_exactly_the_text(font: str) -> None:
    """A reference render of the same lines, fonts and places gives the same pixels."""
    lines = ["新春快乐", "Happy Spring Festival"]
    drawn, placement = draw_headline(_grey(), lines, STYLE, font)
    reference = _grey()
    draw = ImageDraw.Draw(reference, "RGBA")
    x0, y0, x1, y1 = placement.bbox
    pad = max(2, round(0.35 * (placement.line_boxes[0][3] - placement.line_boxes[0][1])))
    draw.rounded_rectangle((x0, y0, x1 - 1, y1 - 1), radius=max(1, pad // 2),
                           fill=ImageColor.getrgb(STYLE.plate_color))
    for line, origin, size in zip(lines, placement.origins, placement.font_sizes, strict=True):
        draw.text(origin, line, font=ImageFont.truetype(font, size), fill=ImageColor.getrgb(STYLE.text_color))
    assert np.array_equal(_pixels(drawn), _pixels(reference))
    assert placement.lines == lines and placement.font == Path(font).name

    # other text, same box: other pixels; the same text again: the same pixels
    other, _ = draw_headline(_grey(), ["新春快东", "Happy Spring Festival"], STYLE, font)
    again, _ = draw_headline(_grey(), lines, STYLE, font)
    assert not np.array_equal(_pixels(other), _pixels(drawn))
    assert np.array_equal(_pixels(again), _pixels(drawn))


def test_overlay_sits_at_the_top_centre_and_changes_only_its_plate(font: str) -> None:
    image = _grey(576, 1024)
    drawn, placement = draw_headline(image, ["中秋快乐"], STYLE, font)
    x0, y0, x1, y1 = placement.bbox
    assert y0 == round(STYLE.margin_ratio * 576) and abs((x0 + x1) / 2 - 288) <= 1
    diff = np.abs(_pixels(drawn) - _pixels(image)).sum(axis=2)
    assert diff[y0:y1, x0:x1].any()
    outside = diff.copy()
    outside[y0:y1, x0:x1] = 0
    assert not outside.any()
    text = np.asarray(drawn.convert("L"))[slice(*placement.line_boxes[0][1::2]),
                                          slice(*placement.line_boxes[0][0::2])]
    assert (text > 200).mean() > 0.05  # light text on the dark plate
    # the first line is about height_ratio of the shorter side, within the width limit
    assert placement.font_sizes == [round(STYLE.height_ratio * 576)]


def test_long_lines_shrink_to_fit(font: str) -> None:
    _, placement = draw_headline(_grey(256, 256), ["一二三四五六七八九十一二"], STYLE, font)
    box = placement.line_boxes[0]
    assert box[2] - box[0] <= 0.9 * 256 and placement.font_sizes[0] < round(STYLE.height_ratio * 256) + 1


def test_overlay_keeps_clear_of_the_logo_and_refuses_no_text(font: str) -> None:
    logo = (0, 0, 400, 60)
    _, placement = draw_headline(_grey(), ["新春快乐"], STYLE, font, keep_clear=[logo])
    assert placement.bbox[1] >= 60
    with pytest.raises(LabelError, match="no text"):
        draw_headline(_grey(), ["  "], STYLE, font)


@pytest.mark.parametrize("size", [(256, 256), (512, 912), (912, 512), (300, 64)])
@pytest.mark.parametrize("position", ["top-left", "top-right", "bottom-left"])
def test_logo_box_matches_where_apply_label_draws_the_logo(size, position) -> None:
    logo = Image.new("RGBA", (256, 96), (200, 20, 40, 255))
    spec = LogoSpec(path="logo.png", position=position, width_ratio=0.18)
    label = LabelSpec(position="bottom-right", margin_ratio=0.02)
    _, placement = apply_label(Image.new("RGB", size), label, logo, spec)
    assert logo_box(size, logo.size, spec, label) == placement.logo_bbox


def test_label_job_typesets_the_headline_before_the_labels() -> None:
    bundle = load_campaign(REPO / "configs/campaigns/weekly-demo.yaml")
    label, monday = parse_week("2027-W05", date(2027, 1, 1))
    plan = plan_week_slots(bundle, label, monday, [], EngineSettings(preview_scale=0.5),
                           brand_fingerprint(bundle))
    job = next(j for j in plan.jobs if j.weekday == "sat" and j.format == "9:16")
    noise = np.random.default_rng(1).integers(60, 200, (job.height, job.width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")
    result = GenerationResult(png=buf.getvalue(), prompt=job.prompt.text, seed=job.seed, steps=8,
                              guidance_scale=0.0, width=job.width, height=job.height,
                              model_id="tiny", revision="r")
    labelled = label_job(job, result, bundle.brand)
    overlay = labelled.overlay
    assert overlay is not None and overlay.lines == ["新春快乐", "Happy Spring Festival"]
    # the headline is below/beside the logo, never under it, and the AIGC label is intact
    logo = labelled.placement.logo_bbox
    plate = overlay.bbox
    assert not (plate[0] < logo[2] and logo[0] < plate[2] and plate[1] < logo[3] and logo[1] < plate[3])
    image = Image.open(io.BytesIO(labelled.data)).convert("RGB")
    assert_visible_label(image, labelled.placement.model_dump())
    labels = read_labels(labelled.data)
    assert labels["zpipe"]["headline"] == "新春快乐 / Happy Spring Festival"
    assert overlay.plate_color == bundle.brand.headline.plate_color
    # the plate shows the brand red behind the text
    x0, y0, x1, _ = plate
    corner = np.asarray(image)[y0 + 2, x0 + max(2, (x1 - x0) // 20)].astype(int)
    assert corner[0] > corner[1] + 60 and corner[0] > corner[2] + 60
