"""A brand's real product in the scene: Z-Image inpaints the scene around a product cutout.

The product comes as a PNG with alpha (or any image plus a mask, white = product). It is
placed by a layout (anchor, scale, margin) into the output frame; diffusers'
`ZImageInpaintPipeline`, made with `from_pipe` from the engine's resident text-to-image
pipeline (same weights, nothing loads twice), generates everything outside the product; then
the placed product is composited back over the result with its alpha, so wherever the
product's alpha is 255 the output pixel IS the placed product pixel (bit for bit), and its
anti-aliased edge is the usual alpha blend. The placed product is the product image resized
(Lanczos, premultiplied alpha) to the layout's box: a box of the image's own size keeps the
file's pixels untouched.

Pure geometry (`place_product`) and image steps (`product_layer`, `composite_product`) need
only Pillow and numpy; torch and diffusers are imported only by `run_product_pipeline`.
No Prefect.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image

ANCHORS = ("top-left", "top-center", "top-right", "center-left", "center", "center-right",
           "bottom-left", "bottom-center", "bottom-right")
MAX_PRODUCT_BYTES = 20 * 1024 * 1024  # a product cutout; bigger is the wrong file (or a bomb)
MAX_PRODUCT_PIXELS = 4096 * 4096
OPAQUE = 255  # alpha of the pixels that are the product itself, kept exactly
BACKGROUND_GREY = (127, 127, 127)  # under the regenerated area: strength 1.0 starts it from noise

Box = tuple[int, int, int, int]  # x, y, width, height
_ANCHOR_SIDES = {"center": ("center", "center"), "center-left": ("center", "left"),
                 "center-right": ("center", "right")} | {
    anchor: tuple(anchor.split("-")) for anchor in ANCHORS if not anchor.startswith("center")}


class ProductError(ValueError):
    """A product image, mask or placement that cannot be used; the message says the fix."""


@dataclass(frozen=True)
class ProductPlacement:
    """Where one product goes in one output image. Small and hashable: it travels in requests."""

    image: str  # path to a PNG with alpha, or an image with `mask`
    box: Box  # (x, y, width, height) of the product in the output frame
    mask: str | None = None  # greyscale, white = product, same size as `image`
    sha256: str | None = None  # of the image file as planned: a changed file is refused
    mask_sha256: str | None = None


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (what the sidecar records)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- geometry ---------------------------------------------------------------------------


def place_product(product_size: tuple[int, int], frame: tuple[int, int], anchor: str = "bottom-center",
                  scale: float = 0.5, margin: float = 0.05) -> Box:
    """The product's box in a `frame` (width, height): `scale` of the frame's height, anchored.

    `margin` is a share of the frame's shorter side kept free at the anchored edges; the box
    shrinks (aspect kept) to fit inside the margins when the product is wide.
    """
    if anchor not in ANCHORS:
        raise ProductError(f"Anchor must be one of {', '.join(ANCHORS)} (got {anchor!r}).")
    if not 0 < scale <= 1:
        raise ProductError(f"Scale must be in (0, 1], the product's height as a share of the "
                           f"image height (got {scale!r}); e.g. 0.5.")
    if not 0 <= margin < 0.5:
        raise ProductError(f"Margin must be in [0, 0.5), a share of the shorter side (got "
                           f"{margin!r}); e.g. 0.05.")
    pw, ph = product_size
    width, height = frame
    if pw < 1 or ph < 1:
        raise ProductError(f"The product image is empty ({pw}x{ph}).")
    gap = round(margin * min(width, height))
    room_w, room_h = width - 2 * gap, height - 2 * gap
    h = min(round(scale * height), room_h)
    w = round(pw * h / ph)
    if w > room_w:  # a wide product: fit the width instead
        w, h = room_w, round(ph * room_w / pw)
    w, h = max(1, w), max(1, h)
    vertical, horizontal = _ANCHOR_SIDES[anchor]
    x = {"left": gap, "center": (width - w) // 2, "right": width - gap - w}[horizontal]
    y = {"top": gap, "center": (height - h) // 2, "bottom": height - gap - h}[vertical]
    return x, y, w, h


# -- images -----------------------------------------------------------------------------


def load_product(image: str, mask: str | None = None) -> Image:
    """The product as RGBA at its own size: the PNG's alpha, or the mask as alpha."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    def read(path: str, what: str) -> PILImage.Image:
        file = Path(path)
        if not file.is_file():
            raise ProductError(f"Product {what} not found: {path!r}; give an existing file "
                               "(relative paths resolve against the config file's folder).")
        size = file.stat().st_size
        if size > MAX_PRODUCT_BYTES:
            raise ProductError(f"Product {what} {path!r} is {size} bytes, over "
                               f"{MAX_PRODUCT_BYTES}; export a smaller cutout.")
        try:
            with PILImage.open(file) as opened:
                if opened.width * opened.height > MAX_PRODUCT_PIXELS:
                    raise ProductError(f"Product {what} {path!r} is {opened.width}x{opened.height}"
                                       f", over {MAX_PRODUCT_PIXELS} pixels; export it smaller.")
                opened.load()
                return opened.copy()
        except (UnidentifiedImageError, OSError) as exc:
            raise ProductError(f"Product {what} {path!r} is not an image Pillow can read "
                               f"({exc}); save it as PNG.") from None

    picture = read(image, "image")
    if mask is not None:
        alpha = read(mask, "mask").convert("L")
        if alpha.size != picture.size:
            raise ProductError(f"Product mask {mask!r} is {alpha.width}x{alpha.height} but the "
                               f"image {image!r} is {picture.width}x{picture.height}; export both "
                               "at the same size.")
        product = picture.convert("RGB").convert("RGBA")
        product.putalpha(alpha)
    elif picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        product = picture.convert("RGBA")
    else:
        raise ProductError(f"Product image {image!r} has no alpha channel (mode {picture.mode}); "
                           "save the cutout as a PNG with transparency, or declare a `mask` "
                           "(white = product).")
    if product.getchannel("A").getextrema()[1] < OPAQUE:
        raise ProductError(f"Product {image!r} has no fully opaque pixel (its mask is empty or "
                           "all translucent): the product must be opaque where it is.")
    return product


def validate_placement(placement: ProductPlacement, width: int, height: int) -> None:
    """Raise ProductError naming the bad value: box outside the frame, missing or changed files."""
    x, y, w, h = placement.box
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ProductError(f"Product box {placement.box} (x, y, width, height) does not fit "
                           f"the {width}x{height} image; place it with place_product() for this "
                           "size (lower the layout's scale or margin).")
    for path, digest, what in ((placement.image, placement.sha256, "image"),
                               (placement.mask, placement.mask_sha256, "mask")):
        if path is None:
            continue
        if not Path(path).is_file():
            raise ProductError(f"Product {what} not found: {path!r}; every worker needs the "
                               "product files at the planned path.")
        if digest is not None and file_sha256(path) != digest:
            raise ProductError(f"Product {what} {path!r} changed since the image was planned "
                               f"(sha256 {file_sha256(path)[:12]}..., planned {digest[:12]}...); "
                               "plan the run again so its keys and sidecar match the file.")


def product_layer(placement: ProductPlacement, width: int, height: int) -> Image:
    """A transparent width x height RGBA frame holding the placed product (what is kept)."""
    from PIL import Image as PILImage

    product = load_product(placement.image, placement.mask)
    x, y, w, h = placement.box
    if product.size != (w, h):  # premultiplied resize: no dark fringe at the cutout's edge
        product = product.convert("RGBa").resize((w, h), PILImage.Resampling.LANCZOS).convert("RGBA")
    layer = PILImage.new("RGBA", (width, height), (0, 0, 0, 0))
    layer.paste(product, (x, y))
    return layer


def scene_inputs(layer: Image) -> tuple[Image, Image]:
    """(start image, inpaint mask) for the pipeline: regenerate everything not fully product."""
    from PIL import Image as PILImage

    start = PILImage.new("RGB", layer.size, BACKGROUND_GREY)
    start.paste(layer, (0, 0), layer)
    alpha = layer.getchannel("A")
    mask = alpha.point(lambda a: 0 if a == OPAQUE else 255)  # white = make, black = keep
    return start, mask


def composite_product(generated: Image, layer: Image) -> Image:
    """The generated scene with the product over it: exact where alpha is 255, blended on edges."""
    import numpy as np
    from PIL import Image as PILImage

    if generated.size != layer.size:
        raise ProductError(f"Generated image is {generated.size} but the product layer is "
                           f"{layer.size}; both must be the output size.")
    scene = np.asarray(generated.convert("RGB"), dtype=np.uint32)
    rgba = np.asarray(layer, dtype=np.uint32)
    alpha = rgba[..., 3:4]
    # (p*a + s*(255-a) + 127) // 255: a == 255 gives p exactly, a == 0 gives s exactly
    out = (rgba[..., :3] * alpha + scene * (OPAQUE - alpha) + 127) // OPAQUE
    return PILImage.fromarray(out.astype(np.uint8), "RGB")


def product_mask(layer: Image) -> Any:
    """Boolean array: the pixels that must equal the placed product exactly (alpha 255)."""
    import numpy as np

    return np.asarray(layer.getchannel("A")) == OPAQUE


# -- generation -------------------------------------------------------------------------


def run_product_pipeline(pipe: Any, cache: dict[str, Any], requests: Sequence[Any], device: str,
                         callback: Callable[..., dict[str, Any]],
                         max_sequence_length: int) -> list[Image]:
    """Make one scene per request around their shared product, then put the product back.

    `pipe` is the engine's loaded `ZImagePipeline`; the inpainting pipeline is made from it
    once with `from_pipe` (shared modules: no second copy of the weights) and kept in `cache`.
    Every request of the call has the same size, steps and product (the engine groups them).
    """
    import torch
    from diffusers import ZImageInpaintPipeline

    # 1. The inpainting pipeline over the resident weights, made once per engine
    inpaint = cache.get("inpaint")
    if inpaint is None:
        inpaint = ZImageInpaintPipeline.from_pipe(pipe)
        inpaint.set_progress_bar_config(disable=True)
        cache["inpaint"] = inpaint

    # 2. The product placed in the frame, the start image and the mask
    first = requests[0]
    layer = product_layer(first.product, first.width, first.height)
    start, mask = scene_inputs(layer)

    # 3. Generate the scene (strength 1.0: everything outside the product starts from noise)
    images = inpaint(
        prompt=[r.prompt for r in requests],  # a fresh list: the pipeline rewrites it in place
        image=start,
        mask_image=mask,
        strength=1.0,
        width=first.width,
        height=first.height,
        num_inference_steps=first.steps,
        guidance_scale=first.guidance_scale,
        generator=[torch.Generator(device).manual_seed(r.seed) for r in requests],
        max_sequence_length=max_sequence_length,
        callback_on_step_end=callback,
        output_type="pil",
    ).images

    # 4. The product's own pixels back over the scene
    return [composite_product(image, layer) for image in images]
