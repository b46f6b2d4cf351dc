"""Headline overlay: the exact copy typeset over a generated image in the brand font.

Image models garble text now and then; a template with `headline_overlay: true` asks the
model for clean space at the top instead, and this step draws the copy there, centred on a
translucent plate that keeps it readable on any picture. It runs before the AIGC labels, so
the logo and the explicit label are always drawn on top of it; `keep_clear` boxes (the logo's)
push the headline below them.

Pure: PIL image in, new PIL image out.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

from PIL import Image, ImageColor, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.core.base import check_colour
from tasks.core.errors import LabelError

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)
MIN_FONT_PX = 6  # below this a headline is unreadable on any screen


class HeadlineStyle(BaseModel):
    """How a brand's headline overlay looks (brand config `headline:`)."""

    model_config = ConfigDict(extra="forbid")

    font: str | None = Field(default=None, description="font file; default: the label font, "
                                                       "else a system CJK font")
    position: Literal["top"] = "top"  # the templates ask the model for clean space at the top
    height_ratio: float = Field(default=0.07, ge=0.03, le=0.2,
                                description="first line's font size / the shorter side")
    subline_ratio: float = Field(default=0.6, gt=0.2, le=1.0, description="later lines vs the first")
    max_width_ratio: float = Field(default=0.9, gt=0.3, le=1.0)
    margin_ratio: float = Field(default=0.04, ge=0.0, le=0.2)
    text_color: str = "#FFFFFF"
    plate_color: str = "#00000099"  # RGBA: translucent, so the picture shows through

    @field_validator("text_color", "plate_color")
    @classmethod
    def _is_colour(cls, value: str) -> str:
        return check_colour(value)


class OverlayPlacement(BaseModel):
    """Where and how the headline was drawn: enough to redraw it exactly (tests, audits)."""

    model_config = ConfigDict(extra="forbid")

    lines: list[str]
    bbox: Box  # the plate
    line_boxes: list[Box]  # each line's ink box
    origins: list[tuple[int, int]]  # the xy passed to ImageDraw.text for each line
    font_sizes: list[int]
    font: str  # file name
    text_color: str
    plate_color: str


@functools.lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _fit(text: str, font_path: str, want: int, max_w: int) -> tuple[ImageFont.FreeTypeFont, Box]:
    """The largest font size <= `want` whose ink width fits `max_w`."""
    size = max(MIN_FONT_PX, want)
    while True:
        font = _font(font_path, size)
        box = font.getbbox(text)
        width = box[2] - box[0]
        if width <= max_w or size <= MIN_FONT_PX:
            return font, box
        size = max(MIN_FONT_PX, min(size - 1, math.floor(size * max_w / width)))


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw_headline(
    image: Image.Image,
    lines: Sequence[str],
    style: HeadlineStyle,
    font_path: str,
    keep_clear: Sequence[Box] = (),
) -> tuple[Image.Image, OverlayPlacement]:
    """Return a new RGB image with `lines` centred at the top on a plate, below `keep_clear`."""
    # 1. Validate
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise LabelError("headline overlay has no text; give the template copy or turn it off")
    width, height = image.size
    short = min(width, height)
    margin = round(style.margin_ratio * short)
    max_w = max(1, min(round(style.max_width_ratio * width), width - 2 * margin))

    # 2. Fit each line: the first at height_ratio, later ones at subline_ratio of it
    first = round(style.height_ratio * short)
    fitted = [_fit(line, font_path, first if i == 0 else round(first * style.subline_ratio), max_w)
              for i, line in enumerate(lines)]
    ink_h = [box[3] - box[1] for _, box in fitted]
    ink_w = [box[2] - box[0] for _, box in fitted]
    gap = max(1, round(0.3 * ink_h[0]))
    pad = max(2, round(0.35 * ink_h[0]))
    plate_w = min(width, max(ink_w) + 2 * pad)
    plate_h = sum(ink_h) + gap * (len(lines) - 1) + 2 * pad

    # 3. Place the plate: top centre, moved below anything it must keep clear of
    x0 = (width - plate_w) // 2
    y0 = margin
    for _ in range(len(keep_clear) + 1):
        plate = (x0, y0, x0 + plate_w, y0 + plate_h)
        hits = [box for box in keep_clear if _overlaps(plate, box)]
        if not hits:
            break
        y0 = max(box[3] for box in hits) + max(1, margin // 2)
    if y0 + plate_h > height:
        raise LabelError(f"headline {lines!r} does not fit a {width}x{height} image below the logo; "
                         "shorten the copy or lower headline.height_ratio")

    # 4. Draw plate and lines
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas, "RGBA")
    draw.rounded_rectangle((x0, y0, x0 + plate_w - 1, y0 + plate_h - 1), radius=max(1, pad // 2),
                           fill=ImageColor.getrgb(style.plate_color))
    fill = ImageColor.getrgb(style.text_color)
    origins, boxes, y = [], [], y0 + pad
    for (font, (left, top, _, _)), line, w, h in zip(fitted, lines, ink_w, ink_h, strict=True):
        x = (width - w) // 2
        origin = (x - left, y - top)
        draw.text(origin, line, font=font, fill=fill)
        origins.append(origin)
        boxes.append((x, y, x + w, y + h))
        y += h + gap

    return canvas, OverlayPlacement(
        lines=list(lines), bbox=(x0, y0, x0 + plate_w, y0 + plate_h), line_boxes=boxes,
        origins=origins, font_sizes=[int(font.size) for font, _ in fitted],
        font=font_path.rsplit("/", 1)[-1], text_color=style.text_color,
        plate_color=style.plate_color,
    )
