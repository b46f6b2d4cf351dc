"""Invisible watermark: the content id survives JPEG, WebP and resizes; unmarked images stay unread."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from tasks.core.errors import ZpipeError
from tasks.labels.invisible import (
    CHASE_BITS,
    DEFAULT_KEY,
    N_BITS,
    WatermarkError,
    _list_decode,
    _payload_bits,
    detect,
    embed,
    false_positive_bound,
)
from tasks.labels.watermark import (
    ImplicitLabel,
    LabelSpec,
    OutputSpec,
    aigc_xmp,
    apply_label,
    encode_image,
    find_cjk_font,
    read_labels,
)

CONTENT_ID = "c0ffee123456"


# --- Test images -----------------------------------------------------------------------


def _textured(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Colour 1/f² noise: the spectrum of natural photographs."""
    rng = np.random.default_rng(seed)
    w, h = size
    f = np.hypot(np.fft.rfftfreq(w)[None, :], np.fft.fftfreq(h)[:, None])
    f[0, 0] = 1.0
    spec = (rng.standard_normal((3, *f.shape)) + 1j * rng.standard_normal((3, *f.shape))) / f
    spec[:, 0, 0] = 0.0
    x = np.moveaxis(np.fft.irfft2(spec, s=(h, w)), 0, -1)
    x = 128 + 40 * (x - x.mean()) / x.std()
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def _poster(size: tuple[int, int], background: tuple[int, int, int] | None = None,
            seed: int = 0) -> Image.Image:
    """A flat poster: solid (or vertical-gradient) background, two shapes, big CJK text."""
    rng = np.random.default_rng(seed)
    w, h = size
    if background is None:  # a gradient between two brand-like colours
        t = np.linspace(0.0, 1.0, h)[:, None, None]
        a = (1 - t) * np.array([30, 90, 200]) + t * np.array([240, 200, 120])
        im = Image.fromarray(np.broadcast_to(a, (h, w, 3)).round().astype(np.uint8))
    else:
        im = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(im)
    draw.rectangle((w // 10, h // 8, w // 2, h // 3), fill=(230, 40, 40))
    accent = tuple(int(v) for v in rng.integers(0, 256, 3))
    draw.ellipse((w // 2, h // 2, w * 9 // 10, h * 9 // 10), fill=accent)
    font = ImageFont.truetype(str(find_cjk_font()), h // 8)
    draw.text((w // 12, h * 2 // 5), "新品上市 限时特惠", font=font, fill=(20, 20, 20))
    return im


def _reencode(image: Image.Image, fmt: str, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, fmt, quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return im.convert("RGB")


def _half_and_back(image: Image.Image) -> Image.Image:
    w, h = image.size
    return image.resize((w // 2, h // 2), Image.Resampling.LANCZOS).resize((w, h), Image.Resampling.BICUBIC)


def _psnr(a: Image.Image, b: Image.Image) -> float:
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(10 * np.log10(255.0**2 / np.mean(d * d)))


IMAGES = {
    "textured": lambda: _textured((1024, 1024)),
    "poster-gradient": lambda: _poster((1024, 1024)),
    "poster-white": lambda: _poster((1024, 1024), (255, 255, 255)),
}
ATTACKS = {
    "png": lambda im: im,
    "jpeg-q70": lambda im: _reencode(im, "JPEG", 70),
    "webp-q75": lambda im: _reencode(im, "WEBP", 75),
    "half-and-back": _half_and_back,
    "preview-512": lambda im: im.resize((512, 512), Image.Resampling.LANCZOS),
    "resize-768": lambda im: im.resize((768, 768), Image.Resampling.BILINEAR),
    "stretch-896x1120": lambda im: im.resize((896, 1120), Image.Resampling.BICUBIC),
}


@pytest.fixture(scope="module")
def originals() -> dict[str, Image.Image]:
    return {name: make() for name, make in IMAGES.items()}


@pytest.fixture(scope="module")
def marked(originals: dict[str, Image.Image]) -> dict[str, Image.Image]:
    return {name: embed(im, CONTENT_ID) for name, im in originals.items()}


# --- Round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("kind", list(IMAGES))
def test_content_id_survives(marked: dict[str, Image.Image], kind: str, attack: str):
    found = detect(ATTACKS[attack](marked[kind]))
    assert found.found, f"{kind} after {attack}: {found}"
    assert found.content_id == CONTENT_ID
    assert found.fit == "frame"


def test_other_preset_and_its_preview():
    image = _poster((720, 1280), (250, 245, 235))
    marked = embed(image, 0x0123456789AB)
    for candidate in (_reencode(marked, "JPEG", 70), marked.resize((360, 640), Image.Resampling.LANCZOS)):
        found = detect(candidate)
        assert (found.found, found.content_id) == (True, "0123456789ab")


def test_centre_crop_and_letterbox_are_found_by_size_hypotheses(marked: dict[str, Image.Image]):
    image = marked["poster-gradient"]
    crop = image.crop((102, 0, 922, 1024)).resize((896, 1120), Image.Resampling.LANCZOS)  # 4:5 cover
    found = detect(_reencode(crop, "JPEG", 85))
    assert (found.found, found.content_id, found.fit) == (True, CONTENT_ID, "crop")
    assert found.size_tried == (1024, 1024)
    canvas = Image.new("RGB", (720, 1280))
    canvas.paste(image.resize((720, 720), Image.Resampling.LANCZOS), (0, 280))  # 9:16 contain
    found = detect(_reencode(canvas, "JPEG", 85))
    assert (found.found, found.content_id, found.fit) == (True, CONTENT_ID, "pad")


def test_after_label_and_before_metadata_like_the_pipeline():
    labelled, _ = apply_label(_textured((896, 1120), seed=3), LabelSpec())
    data = encode_image(embed(labelled, CONTENT_ID), OutputSpec(format="jpeg", quality=90),
                        aigc_xmp(ImplicitLabel(content_producer="zpipe", produce_id=CONTENT_ID)))
    with Image.open(io.BytesIO(data)) as im:
        found = detect(im)
    assert (found.found, found.content_id) == (True, CONTENT_ID)
    assert read_labels(data)["aigc"]["ProduceID"] == CONTENT_ID


@pytest.mark.parametrize("content_id", [0, 1, (1 << 48) - 1, 0xA5A5A5A5A5A5, "FFFFFFFFFFFF"])
def test_every_id_round_trips_exactly(content_id: int | str):
    found = detect(embed(_textured((512, 512), seed=5), content_id))
    expected = content_id.lower() if isinstance(content_id, str) else f"{content_id:012x}"
    assert (found.found, found.content_id) == (True, expected)


# --- Invisibility and shape ------------------------------------------------------------


@pytest.mark.parametrize("kind", list(IMAGES))
def test_psnr_is_at_least_38_5_db(originals: dict[str, Image.Image], marked: dict[str, Image.Image],
                                 kind: str):
    assert _psnr(originals[kind], marked[kind]) >= 38.5  # MAX_RMS = 3 grey levels caps the energy


def test_embed_keeps_size_mode_alpha_and_input():
    image = _textured((640, 480)).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize((640, 480)))
    before = image.tobytes()
    out = embed(image, CONTENT_ID)
    assert (out.mode, out.size) == ("RGBA", (640, 480))
    assert out.getchannel("A").tobytes() == image.getchannel("A").tobytes()
    assert image.tobytes() == before
    assert embed(image, CONTENT_ID).tobytes() == out.tobytes()  # deterministic
    assert detect(out).content_id == CONTENT_ID


# --- Unmarked images and wrong keys ----------------------------------------------------


def _unmarked_corpus() -> list[Image.Image]:
    rng = np.random.default_rng(11)
    images = [_textured(size, seed) for seed, size in enumerate([(1024, 1024), (720, 1280), (896, 1120),
                                                                 (512, 512), (1280, 720)])]
    colours = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(4)]
    images += [_poster((1024, 1024), c, seed=s) for s, c in enumerate(colours)]
    images += [_poster((864, 1152)), _poster((1024, 1024), (255, 255, 255)), _poster((768, 768), (0, 0, 0))]
    images += [Image.new("RGB", (1024, 1024), c) for c in ((255, 255, 255), (0, 0, 0), (18, 120, 200))]
    images += [Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8))]
    images += [Image.linear_gradient("L").resize((1024, 1024)).convert("RGB")]
    images += [_reencode(im, "JPEG", 75) for im in images[:6]]
    return images


def test_unmarked_images_are_not_read():
    for i, image in enumerate(_unmarked_corpus()):
        found = detect(image)
        assert not found.found, f"unmarked image {i} ({image.size}) read as {found}"
        assert found.content_id is None and found.bit_errors == -1


def test_wrong_key_reads_nothing(marked: dict[str, Image.Image]):
    for image in marked.values():
        assert not detect(image, key=b"another brand's key").found
    other = embed(_textured((1024, 1024), seed=9), CONTENT_ID, key=b"another brand's key")
    assert detect(other, key=b"another brand's key").content_id == CONTENT_ID
    assert not detect(other).found


def test_false_positive_bound_is_small():
    assert DEFAULT_KEY
    assert false_positive_bound((1024, 1024)) == 9 * 2**CHASE_BITS / 2**32  # own frame + 4 aspects x 2
    assert false_positive_bound((1000, 600)) == 11 * 2**CHASE_BITS / 2**32
    assert false_positive_bound((1000, 600)) < 1e-6


def test_list_decoding_corrects_weak_bits_only():
    bits = _payload_bits(0xC0FFEE123456)
    z = (bits * 2.0 - 1.0) * np.linspace(3.0, 1.0, N_BITS)
    weakest = np.argsort(np.abs(z))[:3]
    z[weakest] *= -0.1  # three wrong but unreliable bits: corrected
    decoded = _list_decode(z)
    assert decoded is not None and np.array_equal(decoded[0], bits) and decoded[1] == 3
    z = (bits * 2.0 - 1.0) * np.linspace(3.0, 1.0, N_BITS)
    z[0] = -z[0]  # a confidently wrong bit is not among the flipped: no valid word
    assert _list_decode(z) is None
    assert _list_decode(np.zeros(N_BITS)) is None  # ties are refused


# --- Errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["c0ffee", "c0ffee12345g", "", 1 << 48, -1, 1.5, None, True])
def test_bad_content_id_is_refused_with_the_format(bad):
    with pytest.raises(WatermarkError, match="12 hex characters"):
        embed(_textured((256, 256)), bad)


def test_too_small_image_and_bad_strength_and_key():
    with pytest.raises(WatermarkError, match=r"100x400; the watermark needs both sides >= 128"):
        embed(Image.new("RGB", (100, 400)), CONTENT_ID)
    with pytest.raises(WatermarkError, match=r"strength must be in \(0, 4\] \(got 0\)"):
        embed(_textured((256, 256)), CONTENT_ID, strength=0)
    with pytest.raises(WatermarkError, match="key must be non-empty bytes"):
        embed(_textured((256, 256)), CONTENT_ID, key=b"")
    assert issubclass(WatermarkError, ZpipeError)
