"""Output sizes: one ~1 megapixel preset per social-media aspect ratio."""

from __future__ import annotations

# (width, height). About 1 MP each, every side a multiple of 16 (the VAE's 8x down-sampling
# times the transformer's 2x2 patches), which is what Z-Image-Turbo was trained around.
SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "4:5": (896, 1120),
    "3:4": (864, 1152),
    "9:16": (720, 1280),
    "16:9": (1280, 720),
}

SIZE_MULTIPLE = 16  # width and height must be multiples of 16 (DESIGN.md)
MIN_SIDE = 64  # below 4 latent patches the image is meaningless
MAX_SIDE = 2048  # the engine's upper bound (the transformer's RoPE covers far more)
MAX_SCALE = 2.0


def round_side(value: float) -> int:
    """Round a side length to the nearest multiple of 16 (halves up), at least 64."""
    return max(MIN_SIDE, int(value / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE)


def size_for(fmt: str, scale: float = 1.0) -> tuple[int, int]:
    """Return (width, height) for a format such as "4:5", scaled (e.g. 0.25 for a preview)."""
    if fmt not in SIZE_PRESETS:
        raise ValueError(
            f"Unknown format {fmt!r}. Valid formats: {', '.join(SIZE_PRESETS)}."
        )
    if not 0 < scale <= MAX_SCALE:
        raise ValueError(
            f"Scale must be in (0, {MAX_SCALE:g}] (got {scale!r}) for format {fmt!r}. "
            f"Valid formats: {', '.join(SIZE_PRESETS)}."
        )
    width, height = SIZE_PRESETS[fmt]
    size = (round_side(width * scale), round_side(height * scale))
    if max(size) > MAX_SIDE:
        largest = MAX_SIDE / max(SIZE_PRESETS[fmt])
        raise ValueError(
            f"Scale {scale!r} makes format {fmt!r} {size[0]}x{size[1]}, over the engine's "
            f"{MAX_SIDE}-pixel limit; use a scale of at most {largest:.2f} for {fmt!r}."
        )
    return size
