"""Explicit label (>= 5% text height, really drawn), logo, and TC260 XMP round trips."""

from __future__ import annotations

import io
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont
from pydantic import ValidationError

from tasks.core.errors import LabelError
from tasks.labels.watermark import (
    DIGITAL_SOURCE_TYPE_AI,
    ImplicitLabel,
    LabelSpec,
    LogoSpec,
    OutputSpec,
    aigc_xmp,
    apply_label,
    encode_image,
    find_cjk_font,
    label_image,
    read_labels,
)
from tasks.steps.labels import label_task

REPO = Path(__file__).resolve().parents[3]
DEMO_LOGO = REPO / "configs" / "brands" / "demo-logo.png"
TC260_KEYS = ["Label", "ContentProducer", "ProduceID", "ReservedCode1", "ContentPropagator",
              "PropagateID", "ReservedCode2"]
SIZES = {"1:1": (1024, 1024), "9:16": (576, 1024), "16:9": (1024, 576), "preview": (256, 448)}
IMPLICIT = ImplicitLabel(content_producer="91310000DEMO00001X", produce_id="c0ffee123456")


def _photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A bright, textured stand-in for a generated image."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.linspace(150, 230, w, dtype=np.float32)[None, :, None].repeat(h, 0).repeat(3, 2)
    noise = rng.normal(0, 12, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


# --- Explicit label -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SIZES))
def test_label_ink_height_is_at_least_five_percent(name: str):
    image = _photo(SIZES[name])
    out, placement = apply_label(image, LabelSpec())
    short = min(image.size)
    assert placement.min_required_px == math.ceil(0.05 * short)
    assert placement.text_height_px >= placement.min_required_px
    assert placement.text_height_px >= math.ceil(0.06 * short)  # the default asks for 6%
    # measure the drawn pixels, not just the layout: rows with near-white text inside the plate
    x0, y0, x1, y1 = placement.bbox
    plate = np.asarray(out.convert("L"), dtype=np.int16)[y0:y1, x0:x1]
    rows = np.flatnonzero((plate > 160).any(axis=1))
    assert rows.size and rows[-1] - rows[0] + 1 >= placement.min_required_px, name
    assert out.size == image.size and out.mode == "RGB"


@pytest.mark.parametrize("position", ["bottom-right", "bottom-left", "top-right", "top-left"])
def test_label_is_drawn_at_its_corner_on_a_dark_plate(position: str):
    image = _photo((768, 1024))
    out, placement = apply_label(image, LabelSpec(position=position))
    before = np.asarray(image.convert("L"), dtype=np.int16)
    after = np.asarray(out.convert("L"), dtype=np.int16)
    x0, y0, x1, y1 = placement.bbox
    tx0, ty0, tx1, ty1 = placement.text_bbox
    assert x0 <= tx0 < tx1 <= x1 and y0 <= ty0 < ty1 <= y1
    # the text box changed, its text pixels are near-white
    assert (after[ty0:ty1, tx0:tx1] != before[ty0:ty1, tx0:tx1]).mean() > 0.5
    assert (after[ty0:ty1, tx0:tx1] > 235).mean() > 0.05
    # the plate outside the text is darker than the image under it
    band = slice(y0 + 1, ty0 - 1)
    assert after[band, x0 + 2:x1 - 2].mean() < before[band, x0 + 2:x1 - 2].mean() - 80
    # corner and margin (2% of the shorter side)
    margin = round(0.02 * 768)
    assert (x0 == margin) == position.endswith("left")
    assert (x1 == 768 - margin) == position.endswith("right")
    assert (y0 == margin) == position.startswith("top")
    assert (y1 == 1024 - margin) == position.startswith("bottom")
    # nothing outside the plate changed, and the input was not modified
    mask = np.ones_like(before, dtype=bool)
    mask[y0:y1, x0:x1] = False
    assert (after[mask] == before[mask]).all()
    assert np.array_equal(np.asarray(image.convert("L")), before)


def test_label_on_a_dark_image_stays_readable():
    image = Image.new("RGB", (512, 512), (10, 10, 10))
    out, placement = apply_label(image, LabelSpec())
    tx0, ty0, tx1, ty1 = placement.text_bbox
    assert (np.asarray(out.convert("L"))[ty0:ty1, tx0:tx1] > 235).mean() > 0.05


def test_label_height_ratio_below_five_percent_is_refused():
    with pytest.raises(ValidationError, match="5%") as err:
        LabelSpec(height_ratio=0.04)
    assert "0.04" in str(err.value)
    assert LabelSpec(height_ratio=0.05).height_ratio == 0.05


def test_label_spec_rejects_unknown_fields_and_bad_colours():
    with pytest.raises(ValidationError):
        LabelSpec(size=12)
    with pytest.raises(ValidationError, match="not a colour"):
        LabelSpec(plate_color="blackish")


def test_long_label_shrinks_towards_five_percent_before_shortening():
    _, placement = apply_label(_photo((500, 900)),
                               LabelSpec(text="AI生成 · AI-generated image content label"))
    assert placement.text == "AI生成 · AI-generated image content label"
    assert placement.min_required_px <= placement.text_height_px < math.ceil(0.06 * 500)
    assert placement.bbox[0] >= 0


def test_too_long_label_is_shortened_to_its_first_segment():
    text = "AI生成 · this image was generated by artificial intelligence"
    _, placement = apply_label(_photo((500, 900)), LabelSpec(text=text))
    assert placement.text == "AI生成"
    assert placement.text_height_px >= math.ceil(0.06 * 500)


def test_label_that_cannot_fit_raises():
    with pytest.raises(LabelError, match="does not fit a 500x900 image at 5% text height"):
        apply_label(_photo((500, 900)), LabelSpec(text="人工智能生成内容标识示例人工智能生成内容"))


def test_logo_is_composited_at_its_corner():
    image = _photo((1024, 1024))
    logo = Image.open(DEMO_LOGO)
    assert logo.mode == "RGBA" and logo.getpixel((0, 0))[3] == 0
    out, placement = apply_label(image, LabelSpec(), logo, LogoSpec(path=str(DEMO_LOGO)))
    x0, y0, x1, y1 = placement.logo_bbox
    margin = round(0.02 * 1024)
    assert (x0, y0) == (margin, margin)
    assert x1 - x0 == round(0.15 * 1024)
    assert y1 - y0 == round(logo.height * (x1 - x0) / logo.width)
    region = np.asarray(out, dtype=np.int16)[y0:y1, x0:x1]
    under = np.asarray(image, dtype=np.int16)[y0:y1, x0:x1]
    # the logo's red body shows through at 90% opacity; its transparent corner does not
    cy, cx = region.shape[0] // 2, region.shape[1] // 8
    r, g, b = region[cy, cx]
    assert r > 150 and g < 90 and b < 110, region[cy, cx]
    assert np.array_equal(region[0, 0], under[0, 0])


def test_logo_and_label_in_the_same_corner_are_refused():
    with pytest.raises(LabelError, match="both at 'top-left'"):
        apply_label(_photo((512, 512)), LabelSpec(position="top-left"),
                    Image.open(DEMO_LOGO), LogoSpec(path=str(DEMO_LOGO)))


# --- Fonts ----------------------------------------------------------------------------------


def test_find_cjk_font_renders_chinese():
    path = find_cjk_font()
    font = ImageFont.truetype(str(path), 48)
    glyph = font.getmask("生")
    assert glyph.getbbox() is not None
    assert bytes(glyph) != bytes(font.getmask("\uffff"))
    assert bytes(glyph) != bytes(font.getmask("成"))


def test_find_cjk_font_bogus_explicit_path_names_it():
    with pytest.raises(LabelError, match=r"/no/such/font\.ttc") as err:
        find_cjk_font("/no/such/font.ttc")
    assert "fonts-wqy-microhei" in str(err.value)


def test_find_cjk_font_refuses_a_font_without_cjk(monkeypatch):
    dejavu = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    if not Path(dejavu).exists():
        pytest.skip("DejaVu not installed")
    with pytest.raises(LabelError, match="no Chinese glyphs"):
        find_cjk_font(dejavu)
    monkeypatch.setenv("ZPIPE_FONT", dejavu)
    with pytest.raises(LabelError, match="ZPIPE_FONT"):
        find_cjk_font()


def test_find_cjk_font_honours_zpipe_font(monkeypatch):
    path = find_cjk_font()
    monkeypatch.setenv("ZPIPE_FONT", str(path))
    assert find_cjk_font() == path


# --- Implicit label -------------------------------------------------------------------------


def test_tc260_json_has_exactly_the_seven_keys_in_order():
    data = json.loads(IMPLICIT.to_tc260_json())
    assert list(data) == TC260_KEYS
    assert data["Label"] == "1"
    assert " " not in IMPLICIT.to_tc260_json()  # compact
    assert "晨光" in ImplicitLabel(content_producer="晨光", produce_id="x").to_tc260_json()


def test_aigc_xmp_is_well_formed_and_escapes():
    implicit = ImplicitLabel(content_producer='A&B <"Co">', produce_id="id-1")
    xmp = aigc_xmp(implicit, {"seed": "42", "prompt": "海报 <b>&amp;</b>"})
    assert xmp.startswith(b"<?xpacket begin=")
    assert xmp.rstrip().endswith(b'<?xpacket end="w"?>')
    root = ET.fromstring(xmp)
    assert root.tag == "{adobe:ns:meta/}xmpmeta"
    desc = root.find("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}RDF/"
                     "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
    aigc = desc.find("{http://www.tc260.org.cn/ns/AIGC/1.0/}AIGC").text
    assert json.loads(aigc)["ContentProducer"] == 'A&B <"Co">'
    dst = desc.find("{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}DigitalSourceType").text
    assert dst == DIGITAL_SOURCE_TYPE_AI
    assert desc.find("{https://zpipe.dev/ns/1.0/}prompt").text == "海报 <b>&amp;</b>"


def test_aigc_xmp_refuses_bad_extra():
    with pytest.raises(LabelError, match="'bad key'"):
        aigc_xmp(IMPLICIT, {"bad key": "x"})
    with pytest.raises(LabelError, match="control characters"):
        aigc_xmp(IMPLICIT, {"prompt": "a\x00b"})


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_labels_round_trip_through_every_format(fmt: str):
    output = OutputSpec(format=fmt)
    extra = {"seed": "42", "model": "Tongyi-MAI/Z-Image-Turbo@abc123", "template": "poster@3"}
    data, placement = label_image(_png(_photo((512, 768))), LabelSpec(), None, None, IMPLICIT,
                                  output, extra)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
    assert decoded.size == (512, 768)
    decoded.load()
    labels = read_labels(data)
    assert list(labels["aigc"]) == TC260_KEYS
    assert labels["aigc"] == json.loads(IMPLICIT.to_tc260_json())
    assert labels["digital_source_type"] == DIGITAL_SOURCE_TYPE_AI
    assert labels["zpipe"] == extra
    assert placement.font.endswith((".ttc", ".ttf", ".otf"))


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_encode_image_output_decodes_in_the_right_format(fmt: str):
    image = _photo((320, 240))
    output = OutputSpec(format=fmt, quality=80)
    data = encode_image(image, output, aigc_xmp(IMPLICIT))
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format.lower() == fmt
    assert (decoded.size, decoded.convert("RGB").mode) == ((320, 240), "RGB")
    assert output.ext == {"jpeg": "jpg", "png": "png", "webp": "webp"}[fmt]
    assert output.content_type == f"image/{fmt}"
    diff = np.abs(np.asarray(decoded.convert("RGB"), np.int16) - np.asarray(image, np.int16))
    assert diff.mean() < (0.5 if fmt == "png" else 12)


def test_read_labels_without_xmp_raises():
    with pytest.raises(LabelError, match="no XMP"):
        read_labels(_png(_photo((64, 64))))
    with pytest.raises(LabelError, match="no XMP"):
        read_labels(b"not an image at all")


def test_read_labels_falls_back_to_a_byte_search():
    packet = aigc_xmp(IMPLICIT, {"seed": "7"})
    labels = read_labels(b"\x00garbage" + packet + b"trailer")
    assert labels["aigc"]["ProduceID"] == IMPLICIT.produce_id
    assert labels["zpipe"] == {"seed": "7"}


def test_label_image_with_logo_and_errors():
    data, placement = label_image(_png(_photo((1024, 1024))), LabelSpec(),
                                  DEMO_LOGO.read_bytes(), LogoSpec(path=str(DEMO_LOGO)),
                                  IMPLICIT, OutputSpec(), {"seed": "1"})
    assert placement.logo_bbox is not None
    assert read_labels(data)["aigc"]["Label"] == "1"
    with pytest.raises(LabelError, match=r"logo 'brand/logo\.png'"):
        label_image(_png(_photo((256, 256))), LabelSpec(), b"not a png",
                    LogoSpec(path="brand/logo.png"), IMPLICIT, OutputSpec(), {})
    with pytest.raises(LabelError, match="cannot decode the generated image"):
        label_image(b"junk", LabelSpec(), None, None, IMPLICIT, OutputSpec(), {})


def test_label_task_is_a_thin_wrapper():
    assert label_task.name == "label-image"
    data, _ = label_task.fn(_png(_photo((256, 448))), LabelSpec(), None, None, IMPLICIT,
                            OutputSpec(format="webp"), {"seed": "3"})
    assert read_labels(data)["zpipe"] == {"seed": "3"}
