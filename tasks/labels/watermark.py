"""Explicit and implicit AIGC labels (GB 45438-2025): a visible label, a logo, and TC260 XMP.

The image steps are pure (PIL image in, PIL image out); `label_image` is the whole stage as
bytes in, bytes out, encoding once with the metadata written last.
"""

from __future__ import annotations

import functools
import io
import json
import math
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

from PIL import Image, ImageColor, ImageDraw, ImageFont, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.core.base import check_colour
from tasks.core.errors import LabelError
from tasks.core.settings import env_name, env_raw

Corner = Literal["bottom-right", "bottom-left", "top-right", "top-left"]

MIN_HEIGHT_RATIO = 0.05  # GB 45438-2025: text height >= 5% of the image's shorter side
TC260_NS = "http://www.tc260.org.cn/ns/AIGC/1.0/"
IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
ZPIPE_NS = "https://zpipe.dev/ns/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DIGITAL_SOURCE_TYPE_AI = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"

_CJK_PROBE = "生"  # a common hanzi every CJK font has
_FONT_FIX = "apt-get install fonts-wqy-microhei (or fonts-noto-cjk), or set ZPIPE_FONT"
_KNOWN_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",  # Fedora
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",  # Arch
    "/System/Library/Fonts/PingFang.ttc",  # macOS
    "C:/Windows/Fonts/msyh.ttc",  # Windows
)
_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_XML_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_XMPMETA = re.compile(rb"<x:xmpmeta\b.*?</x:xmpmeta>", re.DOTALL)
_SEGMENT_SPLIT = re.compile(r"\s*[·|]\s*")


# --- Specs -----------------------------------------------------------------------------


class LabelSpec(BaseModel):
    """The visible (explicit) AIGC label."""

    model_config = ConfigDict(extra="forbid")

    text: str = "AI生成 · AI-generated"
    position: Corner = "bottom-right"
    height_ratio: float = 0.06  # a margin above the 5% minimum survives resizing
    font: str | None = None  # path to a font file; None -> find_cjk_font()
    text_color: str = "#FFFFFF"
    plate_color: str = "#000000B3"  # RGBA: a plate keeps the text readable on any image
    margin_ratio: float = Field(default=0.02, ge=0.0, le=0.2)

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("label text is empty: GB 45438-2025 needs visible text like 'AI生成'")
        return v

    @field_validator("height_ratio")
    @classmethod
    def _at_least_five_percent(cls, v: float) -> float:
        if v < MIN_HEIGHT_RATIO:
            raise ValueError(
                f"height_ratio must be >= 0.05 (got {v}): GB 45438-2025 requires label text at "
                "least 5% of the image's shorter side; use 0.05 or more (default 0.06)"
            )
        if v > 0.5:
            raise ValueError(f"height_ratio must be <= 0.5 (got {v}); the default is 0.06")
        return v

    @field_validator("text_color", "plate_color")
    @classmethod
    def _is_colour(cls, value: str) -> str:
        return check_colour(value)


class LogoSpec(BaseModel):
    """Where and how large the brand logo goes."""

    model_config = ConfigDict(extra="forbid")

    path: str  # already resolved by the config loader
    position: Corner = "top-left"
    width_ratio: float = Field(default=0.15, gt=0.0, le=0.5)  # logo width / image width
    opacity: float = Field(default=0.9, ge=0.0, le=1.0)


class ImplicitLabel(BaseModel):
    """The TC260 implicit-label fields embedded as XMP `TC260:AIGC`."""

    model_config = ConfigDict(extra="forbid")

    content_producer: str
    produce_id: str
    content_propagator: str = ""
    propagate_id: str = ""
    reserved_code1: str = ""
    reserved_code2: str = ""

    def to_tc260_json(self) -> str:
        """Return the compact TC260 JSON (Label "1" = AI-generated content)."""
        return json.dumps(
            {
                "Label": "1",
                "ContentProducer": self.content_producer,
                "ProduceID": self.produce_id,
                "ReservedCode1": self.reserved_code1,
                "ContentPropagator": self.content_propagator,
                "PropagateID": self.propagate_id,
                "ReservedCode2": self.reserved_code2,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )


class OutputSpec(BaseModel):
    """The encoded file format."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: int = Field(default=90, ge=1, le=100)  # JPEG/WebP only

    @property
    def ext(self) -> str:
        """File extension without the dot."""
        return {"jpeg": "jpg", "png": "png", "webp": "webp"}[self.format]

    @property
    def content_type(self) -> str:
        """MIME type for uploads."""
        return f"image/{self.format}"


class LabelPlacement(BaseModel):
    """Where the visible label (and logo) were drawn, for audits and tests."""

    model_config = ConfigDict(extra="forbid")

    text: str
    bbox: tuple[int, int, int, int]  # the plate, x0 y0 x1 y1
    text_bbox: tuple[int, int, int, int]  # the text's ink box
    text_height_px: int
    min_required_px: int  # ceil(5% of the shorter side)
    font: str  # file name
    position: Corner
    logo_bbox: tuple[int, int, int, int] | None = None


# --- Fonts -----------------------------------------------------------------------------


def find_cjk_font(explicit: str | None = None) -> Path:
    """Return a font file that draws Chinese: explicit, $ZPIPE_FONT, fc-match, known paths."""
    for source, value in (("font", explicit), (env_name("font"), env_raw("font"))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise LabelError(f"{source}: font file {value!r} does not exist; {_FONT_FIX}")
            if not _renders_cjk(str(path)):
                raise LabelError(
                    f"{source}: font {value!r} has no Chinese glyphs (draws boxes); {_FONT_FIX}"
                )
            return path
    candidates = [_fc_match_cjk(), *_KNOWN_FONTS]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and _renders_cjk(candidate):
            return Path(candidate)
    raise LabelError(f"no font with Chinese glyphs found: {_FONT_FIX}")


@functools.cache
def _fc_match_cjk() -> str | None:
    """Ask fontconfig for its Chinese sans-serif font (None if fontconfig is absent)."""
    try:
        done = subprocess.run(
            ["fc-match", "-f", "%{file}", "sans-serif:lang=zh-cn"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


@functools.cache
def _renders_cjk(path: str) -> bool:
    """True if the font draws a real glyph for 生, not a tofu box or nothing."""
    try:
        font = ImageFont.truetype(path, 48)
    except OSError:
        return False

    def mask(text: str) -> tuple[tuple[int, int], bytes]:
        m = font.getmask(text)
        return m.size, bytes(m)

    glyph = mask(_CJK_PROBE)
    if not any(glyph[1]):
        return False
    return glyph != mask("\uffff") and glyph != mask("成")


@functools.lru_cache(maxsize=256)
def _load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """Load a font at a pixel size (cached: sizes repeat across a batch)."""
    return ImageFont.truetype(path, size)


# --- Explicit label --------------------------------------------------------------------


def apply_label(
    image: Image.Image,
    label: LabelSpec,
    logo: Image.Image | None = None,
    logo_spec: LogoSpec | None = None,
) -> tuple[Image.Image, LabelPlacement]:
    """Return a new RGB image with the logo and the visible AIGC label drawn on a plate."""
    # 1. Validate
    if (logo is None) != (logo_spec is None):
        raise LabelError("pass both logo and logo_spec, or neither")
    if logo_spec is not None and logo_spec.position == label.position:
        raise LabelError(
            f"logo and label are both at {label.position!r}; move the logo "
            "(brand logo.position) or the label (label.position) to another corner"
        )
    font_path = find_cjk_font(label.font)
    width, height = image.size
    short = min(width, height)
    margin = round(label.margin_ratio * short)
    min_px = math.ceil(MIN_HEIGHT_RATIO * short)

    # 2. Logo
    canvas = image.convert("RGBA")
    logo_bbox = None
    if logo is not None and logo_spec is not None:
        logo_bbox = _composite_logo(canvas, logo, logo_spec, margin)
    canvas = canvas.convert("RGB")

    # 3. Fit the text: the full label, else its first segment ("AI生成"), never below 5%
    want_px = max(min_px, math.ceil(label.height_ratio * short))
    fit = None
    for text in _label_variants(label.text):
        fit = _fit_text(text, str(font_path), width - 2 * margin, height - 2 * margin,
                        want_px, min_px)
        if fit is not None:
            break
    if fit is None:
        raise LabelError(
            f"label {label.text!r} does not fit a {width}x{height} image at 5% text height "
            f"({min_px}px); use a shorter label.text (e.g. 'AI生成') or a larger image"
        )
    text, font, (left, top, right, bottom), pad = fit

    # 4. Draw plate and text at the corner
    ink_w, ink_h = right - left, bottom - top
    plate_w, plate_h = ink_w + 2 * pad, ink_h + 2 * pad
    x0, y0 = _corner(label.position, width, height, plate_w, plate_h, margin)
    draw = ImageDraw.Draw(canvas, "RGBA")
    draw.rounded_rectangle((x0, y0, x0 + plate_w - 1, y0 + plate_h - 1), radius=pad // 2,
                           fill=ImageColor.getrgb(label.plate_color))
    tx, ty = x0 + pad, y0 + pad
    draw.text((tx - left, ty - top), text, font=font, fill=ImageColor.getrgb(label.text_color))

    return canvas, LabelPlacement(
        text=text,
        bbox=(x0, y0, x0 + plate_w, y0 + plate_h),
        text_bbox=(tx, ty, tx + ink_w, ty + ink_h),
        text_height_px=ink_h,
        min_required_px=min_px,
        font=font_path.name,
        position=label.position,
        logo_bbox=logo_bbox,
    )


def _label_variants(text: str) -> list[str]:
    """The label text, then its first segment ('AI生成 · AI-generated' -> 'AI生成')."""
    first = _SEGMENT_SPLIT.split(text.strip())[0]
    return [text] if not first or first == text else [text, first]


def _fit_text(
    text: str, font_path: str, max_w: int, max_h: int, want_px: int, min_px: int
) -> tuple[str, ImageFont.FreeTypeFont, tuple[int, int, int, int], int] | None:
    """Largest font size whose plate fits, with ink height in [min_px, want_px]; None if none."""

    def plate(size: int) -> tuple[ImageFont.FreeTypeFont, tuple[int, int, int, int], int, bool]:
        font = _load_font(font_path, size)
        box = font.getbbox(text)
        ink_h = box[3] - box[1]
        pad = _plate_pad(ink_h)
        fits = box[2] - box[0] + 2 * pad <= max_w and ink_h + 2 * pad <= max_h
        return font, box, pad, fits

    lo = _size_for_height(font_path, text, min_px)
    hi = _size_for_height(font_path, text, want_px)
    if not plate(lo)[3]:
        return None
    best = hi if plate(hi)[3] else lo
    if best != hi:  # binary search the largest fitting size in (lo, hi)
        a, b = lo, hi
        while b - a > 1:
            mid = (a + b) // 2
            if plate(mid)[3]:
                a = mid
            else:
                b = mid
        best = a
    font, box, pad, _ = plate(best)
    return text, font, box, pad


def _size_for_height(font_path: str, text: str, px: int) -> int:
    """Smallest font size whose ink height (getbbox) for `text` is at least `px`."""

    def ink(size: int) -> int:
        box = _load_font(font_path, size).getbbox(text)
        return box[3] - box[1]

    ref = max(1, ink(100))
    size = max(1, math.floor(px * 100 / ref) - 1)
    while ink(size) < px:
        size += 1
    while size > 1 and ink(size - 1) >= px:
        size -= 1
    return size


def _plate_pad(ink_h: int) -> int:
    """Padding between the text and the plate's edge."""
    return max(2, round(0.25 * ink_h))


def _corner(position: str, width: int, height: int, w: int, h: int, margin: int) -> tuple[int, int]:
    """Top-left corner of a w x h box placed at `position` with `margin`."""
    x = margin if position.endswith("left") else width - margin - w
    y = margin if position.startswith("top") else height - margin - h
    return x, y


def _composite_logo(
    canvas: Image.Image, logo: Image.Image, spec: LogoSpec, margin: int
) -> tuple[int, int, int, int]:
    """Alpha-composite the logo onto `canvas` (RGBA, in place) and return its box."""
    width, height = canvas.size
    if logo.width < 1 or logo.height < 1:
        raise LabelError(f"logo {spec.path!r} is empty ({logo.width}x{logo.height})")
    w = max(1, round(width * spec.width_ratio))
    h = max(1, round(logo.height * w / logo.width))
    room = max(1, height - 2 * margin)
    if h > room:  # a tall logo: fit the height instead
        w, h = max(1, round(w * room / h)), room
    mark = logo.convert("RGBA").convert("RGBa").resize((w, h), Image.Resampling.LANCZOS)
    mark = mark.convert("RGBA")  # premultiplied resize: no dark fringes at the edges
    if spec.opacity < 1.0:
        mark.putalpha(mark.getchannel("A").point(lambda a: round(a * spec.opacity)))
    x, y = _corner(spec.position, width, height, w, h, margin)
    canvas.alpha_composite(mark, dest=(x, y))
    return x, y, x + w, y + h


# --- Implicit label --------------------------------------------------------------------


def aigc_xmp(label: ImplicitLabel, extra: dict[str, str] | None = None) -> bytes:
    """Return an XMP packet with TC260:AIGC, the IPTC DigitalSourceType and zpipe: extras."""
    tc260 = label.to_tc260_json()
    _check_xml_text("implicit label", tc260)
    props = [
        f"   <TC260:AIGC>{escape(tc260)}</TC260:AIGC>",
        f"   <Iptc4xmpExt:DigitalSourceType>{DIGITAL_SOURCE_TYPE_AI}"
        "</Iptc4xmpExt:DigitalSourceType>",
    ]
    for key, value in (extra or {}).items():
        if not _XML_NAME.match(key):
            raise LabelError(
                f"metadata key {key!r} is not a valid XMP property name; "
                "use letters, digits, '_', '-', '.' (starting with a letter)"
            )
        _check_xml_text(f"metadata {key!r}", str(value))
        props.append(f"   <zpipe:{key}>{escape(str(value))}</zpipe:{key}>")
    packet = "\n".join([
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>',
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">',
        f" <rdf:RDF xmlns:rdf={quoteattr(RDF_NS)}>",
        '  <rdf:Description rdf:about=""',
        f"    xmlns:TC260={quoteattr(TC260_NS)}",
        f"    xmlns:Iptc4xmpExt={quoteattr(IPTC_EXT_NS)}",
        f"    xmlns:zpipe={quoteattr(ZPIPE_NS)}>",
        *props,
        "  </rdf:Description>",
        " </rdf:RDF>",
        "</x:xmpmeta>",
        '<?xpacket end="w"?>',
    ])
    return packet.encode("utf-8")


def _check_xml_text(what: str, text: str) -> None:
    """Refuse characters XML 1.0 cannot carry (the packet must parse back)."""
    if bad := _XML_BAD_CHARS.search(text):
        raise LabelError(
            f"{what} contains {bad.group()!r}, which XML cannot carry; remove control characters"
        )


def encode_image(image: Image.Image, output: OutputSpec, xmp: bytes) -> bytes:
    """Encode once with the XMP packet embedded (JPEG/WebP APP1/chunk, PNG iTXt)."""
    if image.mode not in ("RGB", "RGBA") or (output.format == "jpeg" and image.mode != "RGB"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    try:
        if output.format == "png":
            info = PngInfo()
            info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8"), zip=False)
            image.save(buf, "PNG", pnginfo=info)
        elif output.format == "jpeg":
            image.save(buf, "JPEG", quality=output.quality, xmp=xmp)
        else:
            image.save(buf, "WEBP", quality=output.quality, xmp=xmp)
    except (ValueError, OSError) as exc:
        raise LabelError(
            f"could not encode {output.format} with {len(xmp)} bytes of XMP: {exc}; "
            "shorten the extra metadata (JPEG allows about 64 KB)"
        ) from exc
    return buf.getvalue()


def read_labels(data: bytes) -> dict:
    """Return {'aigc': TC260 dict, 'digital_source_type': str, 'zpipe': {...}} from file bytes."""
    # 1. Find the XMP packet: Pillow's parsed metadata, else a byte search
    xmp: bytes | None = None
    try:
        with Image.open(io.BytesIO(data)) as im:
            raw = im.info.get("xmp")
            xmp = raw.encode("utf-8") if isinstance(raw, str) else raw
    except (OSError, UnidentifiedImageError):
        pass  # not an image Pillow knows: fall back to the byte search below
    found = _XMPMETA.search(xmp or b"") or _XMPMETA.search(data)
    if not found:
        raise LabelError("no XMP metadata found: the file carries no implicit AIGC label")
    try:
        root = ET.fromstring(found.group())
    except ET.ParseError as exc:
        raise LabelError(f"the XMP packet is not well-formed XML: {exc}") from exc

    # 2. Pick the properties (element or attribute form)
    aigc_text = _xmp_property(root, TC260_NS, "AIGC")
    if aigc_text is None:
        raise LabelError("the XMP has no TC260:AIGC property: no implicit AIGC label")
    try:
        aigc = json.loads(aigc_text)
    except json.JSONDecodeError as exc:
        raise LabelError(f"TC260:AIGC is not JSON ({aigc_text[:80]!r}): {exc}") from exc
    zpipe: dict[str, str] = {}
    for desc in root.iter(f"{{{RDF_NS}}}Description"):
        for name, value in desc.attrib.items():
            if name.startswith(f"{{{ZPIPE_NS}}}"):
                zpipe[name.split("}", 1)[1]] = value
        for child in desc:
            if child.tag.startswith(f"{{{ZPIPE_NS}}}"):
                zpipe[child.tag.split("}", 1)[1]] = child.text or ""
    return {
        "aigc": aigc,
        "digital_source_type": _xmp_property(root, IPTC_EXT_NS, "DigitalSourceType") or "",
        "zpipe": zpipe,
    }


def _xmp_property(root: ET.Element, ns: str, name: str) -> str | None:
    """A simple XMP property's value, written as an element, an rdf:resource, or an attribute."""
    tag = f"{{{ns}}}{name}"
    for desc in root.iter(f"{{{RDF_NS}}}Description"):
        if tag in desc.attrib:
            return desc.attrib[tag]
        element = desc.find(tag)
        if element is not None:
            return element.get(f"{{{RDF_NS}}}resource") or (element.text or "").strip()
    return None


# --- The stage -------------------------------------------------------------------------


def label_image(
    png: bytes,
    label: LabelSpec,
    logo_bytes: bytes | None,
    logo_spec: LogoSpec | None,
    implicit: ImplicitLabel,
    output: OutputSpec,
    extra: dict[str, str] | None = None,
    content_id: str | None = None,
) -> tuple[bytes, LabelPlacement]:
    """Decode, draw the visible label and logo, watermark the content id, embed the XMP, encode once."""
    image = decode_image(png, "the generated image")
    logo = None
    if logo_bytes is not None:
        logo = decode_image(logo_bytes, f"logo {logo_spec.path!r}" if logo_spec else "the logo")
    labelled, placement = apply_label(image, label, logo, logo_spec)
    if content_id is not None:  # invisible watermark: after the visible label, before metadata
        from tasks.labels.invisible import embed

        labelled = embed(labelled, content_id)
    return encode_image(labelled, output, aigc_xmp(implicit, extra)), placement


MAX_LOGO_BYTES = 10 * 1024 * 1024  # a logo file; bigger is the wrong file (or a bomb)
MAX_LOGO_PIXELS = 4096 * 4096  # drawn at most half an image's width: 4096 px wide is plenty
LOGO_FORMATS = ("PNG", "JPEG", "WEBP")


def check_logo(path: str | Path) -> tuple[int, int]:
    """Decode a logo file fully, within size limits, and return its (width, height).

    Run when a brand is loaded, so a broken logo fails `zpipe validate` instead of every
    image of a campaign after generation. The pixel count is read from the header before any
    decoding: a small file that claims a huge image (a decompression bomb) is refused unread.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise LabelError(f"logo {str(path)!r} is an empty file; export the logo as PNG again")
    if size > MAX_LOGO_BYTES:
        raise LabelError(f"logo {str(path)!r} is {size} bytes, over the {MAX_LOGO_BYTES}-byte limit; "
                         "export a smaller PNG (a logo needs at most 4096 px a side)")
    try:
        with Image.open(path, formats=LOGO_FORMATS) as im:
            pixels = im.width * im.height
            if pixels > MAX_LOGO_PIXELS:
                raise LabelError(f"logo {str(path)!r} is {im.width}x{im.height} pixels, over the "
                                 f"{MAX_LOGO_PIXELS}-pixel limit; scale it down to at most 4096 px "
                                 "a side")
            im.load()
            return im.size
    except Image.DecompressionBombError as exc:
        raise LabelError(f"logo {str(path)!r} refused as a decompression bomb ({exc}); use a real "
                         "logo of at most 4096 px a side") from None
    except UnidentifiedImageError:
        raise LabelError(f"logo {str(path)!r} is not a {', '.join(LOGO_FORMATS)} image (its first "
                         f"bytes: {path.read_bytes()[:8].hex(' ')}); export the logo as PNG") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt image data
        raise LabelError(f"logo {str(path)!r} cannot be decoded ({exc}); the file is truncated or "
                         "corrupt: export it again") from None


def decode_image(data: bytes, what: str) -> Image.Image:
    """Decode image bytes fully, or raise LabelError naming what they were."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.copy()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise LabelError(f"cannot decode {what} ({len(data)} bytes): {exc}") from exc
