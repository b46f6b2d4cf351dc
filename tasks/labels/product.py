"""The brand's real product in the picture: config, per-image placement, labels kept off it.

A brand declares `product:` (a default cutout and its layout, per format if needed); catalogue
rows (tasks.content.catalogue) may bring their own cutout. At plan time every image gets a
`ProductRef`: the files' sha256 (part of the content id: a new cutout makes new keys) and the
product's box in that image. The engine (zengine.product) generates the scene around it and
puts the product's pixels back; here, after the label, logo and invisible watermark are drawn,
`restore_product` puts them back once more, so the product's opaque pixels in the final image
are exactly the placed product's, and `label_clear_of_product` moves the visible label and the
logo to corners that do not cover it (or refuses).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from tasks.core.errors import ConfigError, LabelError
from tasks.labels.watermark import LabelPlacement, LabelSpec, LogoSpec, apply_label
from zengine.product import (
    ProductError,
    ProductPlacement,
    composite_product,
    file_sha256,
    load_product,
    place_product,
    product_layer,
    validate_placement,
)
from zengine.sizes import SIZE_PRESETS

Anchor = Literal["top-left", "top-center", "top-right", "center-left", "center", "center-right",
                 "bottom-left", "bottom-center", "bottom-right"]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), as tasks.watermark / tasks.overlay
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


class ProductLayout(BaseModel):
    """Where the product goes: anchored, `scale` of the image height, `margin` off the edges."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    anchor: Anchor = "bottom-center"
    scale: float = Field(default=0.5, gt=0, le=1, description="product height / image height")
    margin: float = Field(default=0.05, ge=0, lt=0.5, description="share of the shorter side")


class LayoutOverride(BaseModel):
    """A format's changes to the default layout (unset fields keep the default's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    anchor: Anchor | None = None
    scale: float | None = Field(default=None, gt=0, le=1)
    margin: float | None = Field(default=None, ge=0, lt=0.5)


class ProductSpec(BaseModel):
    """A brand's `product:` block: the default cutout and how products are laid out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str | None = Field(default=None, description="PNG with alpha (or an image with `mask`), "
                              "relative to the brand file; catalogue rows may bring their own")
    mask: str | None = Field(default=None, description="greyscale, white = product")
    layout: ProductLayout = Field(default_factory=ProductLayout)
    formats: dict[str, LayoutOverride] = Field(default_factory=dict,
                                               description="format -> layout changes, e.g. 16:9")

    def layout_for(self, fmt: str) -> ProductLayout:
        """The layout of one format: the default with that format's changes."""
        override = self.formats.get(fmt)
        if override is None:
            return self.layout
        return self.layout.model_copy(update=override.model_dump(exclude_none=True))


class ProductRef(BaseModel):
    """The product of one image as planned: files, their hashes, and its box in the image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str  # absolute path
    mask: str | None = None
    sha256: str
    mask_sha256: str | None = None
    declared: str  # the path as written in the config or catalogue (recorded in the sidecar)
    box: tuple[int, int, int, int]  # x, y, width, height in the output image
    layout: ProductLayout

    def placement(self) -> ProductPlacement:
        """What the engine takes."""
        return ProductPlacement(image=self.image, box=self.box, mask=self.mask, sha256=self.sha256,
                                mask_sha256=self.mask_sha256)

    @property
    def bbox(self) -> Box:
        """The box as x0, y0, x1, y1."""
        x, y, w, h = self.box
        return x, y, x + w, y + h

    def record(self) -> dict[str, object]:
        """The sidecar's `product` block."""
        return {"image": self.declared, "path": self.image, "sha256": self.sha256,
                "mask": self.mask, "mask_sha256": self.mask_sha256, "box": list(self.box),
                "layout": self.layout.model_dump(),
                "pixels": "exact where the product's alpha is 255 (before encoding)"}


@functools.lru_cache(maxsize=256)
def _product_size(path: str, mask: str | None, digest: str) -> tuple[int, int]:
    return load_product(path, mask).size  # `digest` keys the cache: a changed file is re-read


def check_product_files(file: str, field: str, image: str, mask: str | None) -> None:
    """Decode a product image (and mask) as the engine will; ConfigError naming file and field."""
    try:
        load_product(image, mask)
    except ProductError as exc:
        raise ConfigError(file, field, str(exc)) from None


def product_ref(spec: ProductSpec, image: str, mask: str | None, declared: str, fmt: str,
                size: tuple[int, int]) -> ProductRef:
    """Place one product in one image of format `fmt` and `size` (width, height)."""
    digest = file_sha256(image)
    mask_digest = file_sha256(mask) if mask else None
    layout = spec.layout_for(fmt)
    native = _product_size(image, mask, f"{digest}:{mask_digest}")
    box = place_product(native, size, layout.anchor, layout.scale, layout.margin)
    return ProductRef(image=image, mask=mask, sha256=digest, mask_sha256=mask_digest,
                      declared=declared, box=box, layout=layout)


def restore_product(image: Image.Image, product: ProductRef) -> Image.Image:
    """The image with the placed product's pixels put back (after label and watermark)."""
    validate_placement(product.placement(), image.width, image.height)
    return composite_product(image, product_layer(product.placement(), image.width, image.height))


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _corner_order(position: str) -> list[str]:
    """The declared corner first, then its mirror across, then above/below, then opposite."""
    vertical, horizontal = position.split("-")
    flip_h = {"left": "right", "right": "left"}[horizontal]
    flip_v = {"top": "bottom", "bottom": "top"}[vertical]
    return [position, f"{vertical}-{flip_h}", f"{flip_v}-{horizontal}", f"{flip_v}-{flip_h}"]


def label_clear_of_product(image: Image.Image, label: LabelSpec, logo: Image.Image | None,
                           logo_spec: LogoSpec | None, product: ProductRef,
                           what: str = "") -> tuple[Image.Image, LabelPlacement]:
    """`apply_label` with the label and logo at corners that do not cover the product.

    The declared corners are kept when they are clear; otherwise the label (then the logo) moves
    to the next corner in `_corner_order`. No clear pair of corners: LabelError naming the
    boxes and the fix (a smaller product scale, or another anchor).
    """
    box = product.bbox
    logo_corners = _corner_order(logo_spec.position) if logo_spec else [None]
    for label_corner in _corner_order(label.position):
        for logo_corner in logo_corners:
            if logo_corner == label_corner:
                continue
            placed_label = label.model_copy(update={"position": label_corner})
            placed_logo = (logo_spec.model_copy(update={"position": logo_corner})
                           if logo_spec is not None else None)
            out, placement = apply_label(image, placed_label, logo, placed_logo)
            covered = _overlaps(placement.bbox, box) or (
                placement.logo_bbox is not None and _overlaps(placement.logo_bbox, box))
            if not covered:
                return out, placement
    x, y, w, h = product.box
    raise LabelError(
        f"{what + ': ' if what else ''}the visible label and the logo cover the product (box x={x} "
        f"y={y} {w}x{h} in a {image.width}x{image.height} image, layout {product.layout.anchor} "
        f"scale {product.layout.scale}) at every corner; lower the brand's product.layout.scale "
        "(or this format's product.formats entry) or anchor the product away from the corners "
        "(e.g. center)")


def resolve_product_spec(path: Path, spec: ProductSpec) -> ProductSpec:
    """The brand's product block with its files resolved against the brand file and checked."""
    def resolve(value: str) -> str:
        candidate = Path(value).expanduser()
        return str(candidate if candidate.is_absolute() else (path.parent / candidate).resolve())

    updates: dict[str, str | None] = {}
    for field in ("image", "mask"):
        value = getattr(spec, field)
        if value is None:
            continue
        resolved = resolve(value)
        if not Path(resolved).is_file():
            raise ConfigError(str(path), f"product.{field}", "product file not found", value)
        updates[field] = resolved
    if spec.mask is not None and spec.image is None:
        raise ConfigError(str(path), "product.mask", "a mask needs its product.image", spec.mask)
    if "image" in updates:
        check_product_files(str(path), "product.image", updates["image"], updates.get("mask"))
    for fmt in spec.formats:
        if fmt not in SIZE_PRESETS:
            raise ConfigError(str(path), f"product.formats.{fmt}",
                              f"unknown format; use one of {', '.join(SIZE_PRESETS)}", fmt)
    return spec.model_copy(update=updates)
