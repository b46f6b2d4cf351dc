"""GB 45438-2025 label compliance, measured in the pixels and read back by a third-party tool.

For every engine size preset, at full size and at the 0.5 preview scale:
- the explicit label's text ink is at least 5% of the image's shorter side tall;
- nothing is drawn outside the label plate, and the plate lies fully inside the image;
- text and the plate under it have a WCAG contrast ratio of at least 4.5:1, on light, dark,
  coloured and noisy pictures.
The implicit label (XMP TC260:AIGC + IPTC DigitalSourceType) of JPEG, PNG and WebP output is
read back with exiftool (Debian package libimage-exiftool-perl), also after C2PA signing.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageColor

from tasks.labels.provenance import SigningConfig, make_dev_cert, sign
from tasks.labels.watermark import (
    DIGITAL_SOURCE_TYPE_AI,
    ImplicitLabel,
    LabelPlacement,
    LabelSpec,
    OutputSpec,
    label_image,
)
from zengine import SIZE_PRESETS, size_for

SIZES = [pytest.param(fmt, scale, id=f"{fmt}@{scale}") for fmt in SIZE_PRESETS for scale in (1.0, 0.5)]
UNIFORM = {"white": "#FFFFFF", "black": "#000000", "grey": "#808080", "red": "#C8102E",
           "cream": "#F5E6C8"}
SPECS = {"default": LabelSpec(), "minimum": LabelSpec(height_ratio=0.05)}
IMPLICIT = ImplicitLabel(content_producer="91310000DEMO00001X", produce_id="3f0c2a9b1d4e")
TC260_KEYS = {"Label", "ContentProducer", "ProduceID", "ReservedCode1", "ContentPropagator",
              "PropagateID", "ReservedCode2"}
WCAG_AA = 4.5


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _label(background: Image.Image, spec: LabelSpec) -> tuple[np.ndarray, LabelPlacement]:
    """label_image's lossless output as an RGB array, and where it says it drew the label."""
    data, placement = label_image(_png(background), spec, None, None, IMPLICIT, OutputSpec(format="png"))
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int32), placement


def _relative_luminance(rgb: np.ndarray) -> np.ndarray:
    """WCAG 2 relative luminance of sRGB 0..255 values (last axis R, G, B)."""
    c = np.asarray(rgb, np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return linear @ np.array([0.2126, 0.7152, 0.0722])


def _contrast(a: float, b: float) -> float:
    return (max(a, b) + 0.05) / (min(a, b) + 0.05)


def _corner_free(bbox: tuple[int, int, int, int]) -> slice:
    """Plate columns clear of its rounded corners (their radius is well under a tenth of its height)."""
    x0, y0, x1, y1 = bbox
    edge = math.ceil((y1 - y0) / 10) + 1
    return slice(x0 + edge, x1 - edge)


# --- Explicit label: size, placement, contrast -------------------------------------------


@pytest.mark.parametrize("spec_name", SPECS)
@pytest.mark.parametrize(("fmt", "scale"), SIZES)
def test_label_text_is_at_least_five_percent_and_inside_the_image(fmt: str, scale: float,
                                                                  spec_name: str) -> None:
    spec = SPECS[spec_name]
    width, height = size_for(fmt, scale)
    min_px = math.ceil(0.05 * min(width, height))
    for name, colour in UNIFORM.items():
        background = Image.new("RGB", (width, height), colour)
        out, placement = _label(background, spec)
        x0, y0, x1, y1 = placement.bbox

        # 1. The plate is fully inside the image, and nothing is drawn outside it
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (name, placement.bbox)
        changed = np.argwhere((out != np.array(ImageColor.getrgb(colour))).any(axis=2))
        if changed.size:  # (a black plate on black changes nothing but the text)
            (cy0, cx0), (cy1, cx1) = changed.min(axis=0), changed.max(axis=0) + 1
            assert x0 <= cx0 and y0 <= cy0 and cx1 <= x1 and cy1 <= y1, (name, placement.bbox)

        # 2. The text's ink, measured in the pixels: every row that any glyph touches
        plate = out[y0:y1, _corner_free(placement.bbox)]
        packed = (plate[..., 0] << 16 | plate[..., 1] << 8 | plate[..., 2]).astype(np.int64).ravel()
        mode = int(np.bincount(packed).argmax())  # the plate over this background
        plate_rgb = np.array([mode >> 16, mode >> 8 & 255, mode & 255])
        deviation = np.abs(plate - plate_rgb).max(axis=2)
        ink_rows = np.flatnonzero((deviation > 2).any(axis=1))
        ink_height = int(ink_rows[-1] - ink_rows[0] + 1)
        assert ink_height >= min_px, (
            f"{spec_name} label on {name} {width}x{height}: text ink {ink_height} px < 5% "
            f"({min_px} px); placement says {placement.text_height_px} px")
        assert abs(ink_height - placement.text_height_px) <= 1, (ink_height, placement)  # same ink
        assert placement.text_height_px >= placement.min_required_px == min_px

        # 3. The default 6% keeps its 5% even counting only half-covered rows (survives JPEG)
        if spec_name == "default":
            full = np.abs(np.array(ImageColor.getrgb(spec.text_color)[:3]) - plate_rgb).max()
            solid_rows = np.flatnonzero((deviation > full / 2).any(axis=1))
            assert solid_rows[-1] - solid_rows[0] + 1 >= min_px, (name, solid_rows)


def _backgrounds(width: int, height: int) -> dict[str, Image.Image]:
    rng = np.random.default_rng(width * height)
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return {**{name: Image.new("RGB", (width, height), colour) for name, colour in UNIFORM.items()},
            "noise": Image.fromarray(noise)}


@pytest.mark.parametrize(("fmt", "scale"), SIZES)
def test_label_text_contrasts_with_the_plate_under_it(fmt: str, scale: float) -> None:
    spec = LabelSpec()
    text_rgb = np.array(ImageColor.getrgb(spec.text_color)[:3])
    width, height = size_for(fmt, scale)
    for name, background in _backgrounds(width, height).items():
        out, placement = _label(background, spec)
        _x0, y0, _x1, y1 = placement.bbox
        plate = out[y0:y1, _corner_free(placement.bbox)]

        # Text: fully covered glyph pixels (the text colour); plate: the padding rows around it
        text = np.abs(plate - text_rgb).max(axis=2) <= 8
        assert text.mean() > 0.01, f"no text-coloured pixels in the label on {name}"
        rows = np.flatnonzero(text.any(axis=1))
        padding = np.concatenate([plate[: max(0, rows[0] - 1)].reshape(-1, 3),
                                  plate[rows[-1] + 2:].reshape(-1, 3)])
        assert len(padding) > 0, placement
        text_lum = float(np.median(_relative_luminance(plate[text])))
        worst_plate = float(np.percentile(_relative_luminance(padding), 99))  # its lightest spots
        ratio = _contrast(text_lum, worst_plate)
        assert ratio >= WCAG_AA, (
            f"label on {name} {width}x{height}: contrast {ratio:.2f}:1 < {WCAG_AA}:1")


@pytest.mark.parametrize("position", ["bottom-right", "bottom-left", "top-right", "top-left"])
def test_label_sits_inside_the_image_at_each_corner(position: str) -> None:
    width, height = size_for("9:16", 0.5)
    spec = LabelSpec(position=position)
    out, placement = _label(Image.new("RGB", (width, height), "white"), spec)
    x0, y0, x1, y1 = placement.bbox
    margin = round(spec.margin_ratio * min(width, height))
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert (x0 if position.endswith("left") else width - x1) == margin
    assert (y0 if position.startswith("top") else height - y1) == margin
    changed = np.argwhere((out != 255).any(axis=2))
    assert changed.min(axis=0).tolist() >= [y0, x0] and (changed.max(axis=0) + 1).tolist() <= [y1, x1]


# --- Implicit label, read by a third-party tool ------------------------------------------


@pytest.fixture(scope="module")
def exiftool() -> str:
    path = shutil.which("exiftool")
    if path is None:
        pytest.fail("exiftool is missing: install the Debian package libimage-exiftool-perl "
                    "(apt-get install libimage-exiftool-perl); these tests read the XMP with it")
    return path


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> SigningConfig:
    _ca, chain, key = make_dev_cert(tmp_path_factory.mktemp("dev-cert"))
    return SigningConfig(cert_chain_pem=chain.read_bytes(), private_key_pem=key.read_bytes())


def _exiftool_xmp(exiftool: str, path: Path) -> dict:
    done = subprocess.run([exiftool, "-json", "-G1", "-XMP:all", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)[0]


@pytest.mark.parametrize("output", ["jpeg", "png", "webp"])
def test_exiftool_reads_the_tc260_label_and_digital_source_type(
    output: str, exiftool: str, signing: SigningConfig, tmp_path: Path
) -> None:
    width, height = size_for("4:5", 0.5)
    spec = OutputSpec(format=output)
    data, _ = label_image(_png(Image.new("RGB", (width, height), "#F5E6C8")), LabelSpec(), None,
                          None, IMPLICIT, spec)
    signed = sign(data, spec.content_type, IMPLICIT.to_tc260_json(), IMPLICIT.produce_id, signing)
    for name, blob in (("labelled", data), ("signed", signed)):
        path = tmp_path / f"{name}.{spec.ext}"
        path.write_bytes(blob)
        found = _exiftool_xmp(exiftool, path)
        assert "XMP-TC260:Aigc" in found, f"exiftool finds no TC260:AIGC in the {name} {output}: {found}"
        aigc = json.loads(found["XMP-TC260:Aigc"])
        assert set(aigc) == TC260_KEYS
        assert aigc == json.loads(IMPLICIT.to_tc260_json())
        assert found["XMP-iptcExt:DigitalSourceType"] == DIGITAL_SOURCE_TYPE_AI
