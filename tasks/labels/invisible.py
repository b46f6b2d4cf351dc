"""Invisible watermark: the image's 48-bit content id, readable after JPEG, WebP and resizing.

`embed(image, content_id)` goes on after the visible label and before the metadata;
`detect(image)` reads the id back from a published copy. Pure functions: PIL image in, PIL
image (or a `Detection`) out; numpy and Pillow only, no loop over cells or pixels.

Scheme: informed spread spectrum on a frame-relative luma grid
--------------------------------------------------------------
1. Grid. Luma (Pillow "L", ITU-R 601) is box-averaged onto a 128 x 128 grid spanning the
   whole frame, whatever its size. Resizing the whole image (50% and back, a 512 preview, a
   stretch to another preset) maps every cell onto itself, so no size search is needed for
   it; only crops and letterboxes need a size hypothesis (step 5).
2. Features. The detector whitens the grid: r = y - box3x3(y) drops the picture's smooth
   part, and v = r / sqrt(1 + box3x3(r²)) divides by the local RMS, so text edges do not drown
   flat areas and a flat area counts as much as texture.
3. Code. The payload is 80 bits: the 48-bit content id, then CRC-32 (zlib) of its 6 bytes.
   The key (SHAKE-256) deals the 16,384 cells out to the 80 bits (204-205 cells each) and
   gives each cell a +-1 chip. Bit i reads z_i = sum(chip * v) / sqrt(sum(v²)) over its
   cells; the sign of z_i is the bit.
4. Embedding is informed (improved spread spectrum, Malvar and Florencio 2003). The grid
   pattern is beta_i * m * chip * (+-1 for bit i), with m = sqrt(FLOOR² + (K_ACTIVITY *
   activity)²) grey levels: a floor, so flat poster backgrounds carry a signal that survives
   JPEG and WebP quantization, and more where texture masks it. beta_i (two Newton steps on a
   grid model of the whole embed-then-detect chain) cancels the picture's own projection on
   bit i's chips and reaches z_i = Z_TARGET. Cells that would clip (white, black) are shifted
   by their own size, which keeps their swing. The pattern is scaled down if needed so its
   RMS after upsampling is <= MAX_RMS = 3 grey levels (PSNR >= 38.5 dB at strength 1, with
   rounding), then bilinear-upsampled and added equally to R, G and B (hue kept); Pillow
   rounds and clips. `strength` scales the whole pattern.
5. Detection tries the candidate's own frame first; then, for each aspect ratio of
   `try_sizes` (default: the zengine presets) other than the candidate's, "the candidate is a
   centred crop of such an image" (cover fit) and "the candidate holds such an image
   letterboxed" (contain fit). Each hypothesis is list-decoded (Chase): the CHASE_BITS least
   reliable bits are flipped in all 2^CHASE_BITS ways, and a word whose CRC-32 matches is
   accepted (the one flipping the least |z| if several do).

False-positive bound (by design)
--------------------------------
On an unmarked image, or with another key, the chips are independent of the picture.
Negating the chips of bit i negates z_i and changes no other statistic, so given the picture
the 80 signs are independent fair coins, independent of the |z_i| that choose which bits the
list flips (a z_i of exactly 0 is refused). Each of the 2^CHASE_BITS candidate words is then
uniformly random and passes CRC-32 with probability 2^-32. By the union bound over the H
hypotheses tried,

    P(false positive per image) <= H * 2^CHASE_BITS * 2^-32,

with H = 1 + 2 x (preset aspect ratios other than the image's own) <= 11 for the five
presets: <= 6.6e-7 per image, for any picture, flat or textured (`false_positive_bound`).
It assumes only that the key stream looks random.

Limits: the grid is tied to the frame, so a crop other than the centred ones tried, a
rotation or a mirror loses the mark, and so does a deliberate attack. It is a provenance
aid beside the XMP label, not a defence against removal. Measured numbers:
bench/watermark.py and bench/RESULTS.md.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops

from tasks.core.errors import ZpipeError
from zengine.sizes import SIZE_PRESETS

DEFAULT_KEY = b"zpipe-invisible-v1"  # not a secret: anyone may read the id, as with the XMP

GRID = 128  # cells per side: 8 px at 1024, still 2 px in a 256-px preview
ID_BITS = 48  # content_id is 12 hex chars (tasks/content/plan.py)
CRC_BITS = 32
N_BITS = ID_BITS + CRC_BITS
CHASE_BITS = 8  # list decoding flips the 8 least reliable bits: 256 candidates per hypothesis

EPS = 1.0  # grey levels: the local RMS below which a cell counts as flat
FLOOR = 1.5  # grey levels carried even by flat cells (WebP q75 erases ~1)
K_ACTIVITY = 0.1  # extra amplitude per grey level of local activity (masked by texture)
Z_TARGET = 1.5  # per-bit z aimed for, after cancelling the picture's own projection
BETA_MIN, BETA_MAX = 1.0, 4.0  # per-bit gain limits on the amplitude m
NEWTON_STEPS = 2
MAX_RMS = 3.0  # grey levels after upsampling: PSNR >= 10 log10(255² / (3² + 1/12)) = 38.5 dB
MIN_SIDE = GRID  # the grid needs at least one pixel per cell


class WatermarkError(ZpipeError):
    """The invisible watermark could not be embedded (bad content id, image too small)."""


@dataclass(frozen=True)
class Detection:
    """What `detect` found: the id (or None), its reliability, and the size hypothesis used."""

    found: bool
    content_id: str | None  # 12 lowercase hex chars, as in ImageJob.content_id
    bit_errors: int  # hard-decision bits the list decoder flipped; -1 when nothing was found
    score: float  # mean z of the decoded bits (found) or mean |z| of the best hypothesis
    size_tried: tuple[int, int] | None  # the original frame: image's own size or a preset's
    fit: str | None = None  # "frame", "crop" (cover) or "pad" (contain)


# --- Public API ------------------------------------------------------------------------


def embed(
    image: Image.Image,
    content_id: str | int,
    key: bytes = DEFAULT_KEY,
    strength: float = 1.0,
) -> Image.Image:
    """Return a copy of `image` (RGB, or RGBA with alpha kept) carrying `content_id` invisibly."""
    # 1. Validate
    word = _payload_bits(_id_int(content_id))
    if not 0.0 < strength <= 4.0:
        raise WatermarkError(f"strength must be in (0, 4] (got {strength!r}); the default is 1.0")
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise WatermarkError(
            f"image is {width}x{height}; the watermark needs both sides >= {MIN_SIDE} px. "
            "Embed before making small previews (previews inherit the mark)."
        )
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    rgb = image if image.mode == "RGB" else image.convert("RGB")

    # 2. Measure the picture on the grid (and a 2x finer grid for in-cell texture)
    luma = rgb.convert("L").convert("F")
    fine = np.asarray(luma.resize((2 * GRID, 2 * GRID), Image.Resampling.BOX), np.float64)
    quads = (fine[0::2, 0::2], fine[0::2, 1::2], fine[1::2, 0::2], fine[1::2, 1::2])
    y = sum(quads) / 4.0
    in_cell = np.maximum(sum(q * q for q in quads) / 4.0 - y * y, 0.0)  # of the 2x2 sub-cells
    headroom = (255.0 - np.maximum.reduce(quads), np.minimum.reduce(quads))  # above, below
    hp = y - _box3(y)
    activity = np.sqrt(_box3(hp * hp) + in_cell)
    amplitude = np.sqrt(FLOOR**2 + (K_ACTIVITY * activity) ** 2)

    # 3. Solve the per-bit gains: cancel the picture's projection, reach Z_TARGET
    bit_of, chip = _layout(key)
    sign = word * 2.0 - 1.0
    pattern = amplitude * chip * sign[bit_of]
    p0, _ = _project(_features(y), bit_of, chip)
    beta = np.ones(N_BITS)
    for _ in range(NEWTON_STEPS):
        delta = _unclipped(pattern * beta[bit_of], headroom)
        p1, norm1 = _project(_features(y + _transfer(delta)), bit_of, chip)
        gain = np.maximum(sign * (p1 - p0) / beta, 1e-6)
        beta = np.clip(beta + (Z_TARGET * norm1 - sign * p1) / gain, BETA_MIN, BETA_MAX)

    # 4. Cap the energy (PSNR), upsample to full size, add to R, G, B (Pillow rounds and clips)
    delta = _unclipped(pattern * beta[bit_of], headroom)
    rms = float(np.sqrt(max(np.mean(delta * _smooth(delta, 1 / 6, 2 / 3)), 1e-12)))
    delta *= strength * min(1.0, MAX_RMS / rms)
    delta = (delta + 128.5).astype(np.float32)  # +128 to fit "L"; +0.5 as F->L truncates
    full = Image.fromarray(delta, "F").resize((width, height), Image.Resampling.BILINEAR).convert("L")
    marked = ImageChops.add(rgb, Image.merge("RGB", (full, full, full)), scale=1.0, offset=-128)
    if alpha is not None:
        marked.putalpha(alpha)
    return marked


def detect(
    image: Image.Image,
    key: bytes = DEFAULT_KEY,
    try_sizes: Sequence[tuple[int, int]] | None = None,
) -> Detection:
    """Read the content id from `image`: its own frame, then crops/letterboxes of `try_sizes`."""
    luma = image.convert("L").convert("F")
    bit_of, chip = _layout(key)
    best = Detection(False, None, -1, 0.0, None)
    for size, fit in _hypotheses(image.size, SIZE_PRESETS.values() if try_sizes is None else try_sizes):
        v = _hypothesis_features(luma, size, fit)
        p, norm = _project(v, bit_of, chip)
        if np.any(norm <= 0.0):
            continue  # a bit with no signal at all (e.g. a solid colour): nothing to read
        z = p / norm
        decoded = _list_decode(z)
        if decoded is not None:
            bits, flips = decoded
            score = float(np.mean(z * (bits * 2.0 - 1.0)))
            return Detection(True, f"{_bits_to_int(bits[:ID_BITS]):012x}", flips, score, size, fit)
        score = float(np.mean(np.abs(z)))
        if score > best.score:
            best = Detection(False, None, -1, score, size, fit)
    return best


def false_positive_bound(image_size: tuple[int, int],
                         try_sizes: Sequence[tuple[int, int]] | None = None) -> float:
    """Upper bound on P(detect finds an id in an unmarked image of this size)."""
    sizes = SIZE_PRESETS.values() if try_sizes is None else try_sizes
    hypotheses = sum(1 for _ in _hypotheses(image_size, sizes))
    return hypotheses * 2.0**CHASE_BITS * 2.0**-CRC_BITS


# --- Payload ---------------------------------------------------------------------------


def _id_int(content_id: str | int) -> int:
    """The 48-bit integer of a content id given as 12 hex chars or an int."""
    if isinstance(content_id, str):
        text = content_id.strip().lower()
        if len(text) != ID_BITS // 4 or any(c not in "0123456789abcdef" for c in text):
            raise WatermarkError(
                f"content_id must be 12 hex characters like 'c0ffee123456' (got {content_id!r})"
            )
        return int(text, 16)
    try:
        value = operator.index(content_id) if not isinstance(content_id, bool) else None
    except TypeError:
        value = None
    if value is None or not 0 <= value < 1 << ID_BITS:
        raise WatermarkError(
            f"content_id must be 12 hex characters or an int in [0, 2**48) (got {content_id!r})"
        )
    return value


def _payload_bits(value: int) -> np.ndarray:
    """80 bits, most significant first: the 48-bit id, then CRC-32 of its 6 bytes."""
    crc = zlib.crc32(value.to_bytes(ID_BITS // 8, "big"))
    word = (value << CRC_BITS) | crc
    return np.array([(word >> (N_BITS - 1 - i)) & 1 for i in range(N_BITS)], np.uint8)


def _bits_to_int(bits: np.ndarray) -> int:
    return int("".join("1" if b else "0" for b in bits), 2)


@functools.cache
def _crc_columns() -> np.ndarray:
    """Syndrome change when each payload bit flips (CRC-32 is affine in the message)."""
    zero = zlib.crc32(bytes(ID_BITS // 8))
    cols = [zlib.crc32((1 << (ID_BITS - 1 - i)).to_bytes(ID_BITS // 8, "big")) ^ zero
            for i in range(ID_BITS)]
    cols += [1 << (CRC_BITS - 1 - i) for i in range(CRC_BITS)]
    return np.array(cols, np.uint64)


@functools.cache
def _flip_patterns() -> np.ndarray:
    """All 2^CHASE_BITS flip patterns as a (2^L, L) 0/1 matrix."""
    n = np.arange(1 << CHASE_BITS)[:, None]
    return ((n >> np.arange(CHASE_BITS)[None, :]) & 1).astype(np.uint64)


def _list_decode(z: np.ndarray) -> tuple[np.ndarray, int] | None:
    """Chase decoding: (bits, flips) of the likeliest CRC-valid word near sign(z), or None."""
    if np.any(z == 0.0):
        return None  # a tie is not a fair coin: refuse rather than bias the bound
    hard = (z > 0).astype(np.uint8)
    value = _bits_to_int(hard)
    syndrome = zlib.crc32((value >> CRC_BITS).to_bytes(ID_BITS // 8, "big")) ^ (value & 0xFFFFFFFF)
    weak = np.argsort(np.abs(z), kind="stable")[:CHASE_BITS]
    flips = _flip_patterns()
    syndromes = np.bitwise_xor.reduce(flips * _crc_columns()[weak][None, :], axis=1)
    ok = np.flatnonzero(syndromes == np.uint64(syndrome))
    if ok.size == 0:
        return None
    cost = flips[ok].astype(np.float64) @ np.abs(z[weak])
    chosen = flips[ok[np.argmin(cost)]].astype(bool)
    bits = hard.copy()
    bits[weak[chosen]] ^= 1
    return bits, int(chosen.sum())


# --- Grid, features, key ---------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _layout(key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The keyed cell -> bit assignment (balanced) and +-1 chips, from SHAKE-256 of the key."""
    if not isinstance(key, bytes) or not key:
        raise WatermarkError(f"key must be non-empty bytes (got {key!r})")
    cells = GRID * GRID
    stream = hashlib.shake_256(b"zpipe-wm-layout\0" + key).digest(4 * cells + cells // 8)
    order = np.argsort(np.frombuffer(stream[: 4 * cells], "<u4"), kind="stable")
    bit_of = np.empty(cells, np.intp)
    bit_of[order] = np.arange(cells) % N_BITS
    chip = np.unpackbits(np.frombuffer(stream[4 * cells:], np.uint8)).astype(np.float64) * 2 - 1
    bit_of.flags.writeable = chip.flags.writeable = False
    return bit_of.reshape(GRID, GRID), chip.reshape(GRID, GRID)


def _pad1(x: np.ndarray) -> np.ndarray:
    """Pad one cell on every side, mirrored about the edge cell (numpy's 'reflect')."""
    p = np.empty((x.shape[0] + 2, x.shape[1] + 2))
    p[1:-1, 1:-1] = x
    p[0, 1:-1], p[-1, 1:-1] = x[1], x[-2]
    p[:, 0], p[:, -1] = p[:, 2], p[:, -3]
    return p


def _box3(x: np.ndarray) -> np.ndarray:
    """3x3 mean with mirrored edges."""
    p = _pad1(x)
    s = p[:-2] + p[1:-1] + p[2:]
    return (s[:, :-2] + s[:, 1:-1] + s[:, 2:]) / 9.0


def _smooth(x: np.ndarray, side: float, centre: float) -> np.ndarray:
    """Separable 3-tap filter [side, centre, side] with mirrored edges."""
    p = _pad1(x)
    s = side * (p[:-2] + p[2:]) + centre * p[1:-1]
    return side * (s[:, :-2] + s[:, 2:]) + centre * s[:, 1:-1]


def _transfer(x: np.ndarray) -> np.ndarray:
    """Grid model of bilinear upsampling then box averaging: separable [1/8, 3/4, 1/8]."""
    return _smooth(x, 0.125, 0.75)


def _unclipped(delta: np.ndarray, headroom: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Shift each cell's delta by its own size where it would clip (white or black areas).

    On white, +a/-a becomes 0/-2a: the swing the detector sees (its high-pass ignores the
    offset, and |delta| does not depend on the chip) is kept, where clipping would halve it.
    """
    size = np.abs(delta)
    above, below = headroom
    return delta - np.maximum(0.0, size - above) + np.maximum(0.0, size - below)


def _features(y: np.ndarray) -> np.ndarray:
    """Whitened grid: high-pass residual over its local RMS (floored at EPS grey levels)."""
    r = y - _box3(y)
    return r / np.sqrt(EPS**2 + _box3(r * r))


def _project(v: np.ndarray, bit_of: np.ndarray, chip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-bit correlation with the chips and the norm of v over the bit's cells."""
    idx = bit_of.ravel()
    p = np.bincount(idx, (chip * v).ravel(), N_BITS)
    norm = np.sqrt(np.bincount(idx, (v * v).ravel(), N_BITS))
    return p, norm


# --- Size hypotheses -------------------------------------------------------------------


def _hypotheses(
    size: tuple[int, int], try_sizes: Iterable[tuple[int, int]]
) -> Iterator[tuple[tuple[int, int], str]]:
    """(original size, fit) pairs: the own frame, then crop and pad per other aspect ratio."""
    width, height = size
    yield (width, height), "frame"
    seen = [width / height]
    for w, h in try_sizes:
        aspect = w / h
        if any(abs(aspect / s - 1.0) < 0.01 for s in seen):
            continue  # same frame as one tried already: a resize, which the grid absorbs
        seen.append(aspect)
        yield (w, h), "crop"
        yield (w, h), "pad"


def _hypothesis_features(luma: Image.Image, original: tuple[int, int], fit: str) -> np.ndarray:
    """Whitened grid of the candidate under one hypothesis (zeros where the frame is missing)."""
    width, height = luma.size
    if fit == "frame":
        return _features(_grid(luma, (0, 0, width, height), (GRID, GRID)))
    aspect = original[0] / original[1]
    wider = aspect > width / height  # the original frame is wider than the candidate
    if fit == "pad":  # the original sits centred inside the candidate, with bars
        w, h = (width, width / aspect) if wider else (height * aspect, height)
        x0, y0 = (width - w) / 2, (height - h) / 2
        return _features(_grid(luma, (x0, y0, x0 + w, y0 + h), (GRID, GRID)))
    # crop: the candidate is the centre of the original; only whole cells inside it are read
    frame = height * aspect if wider else width / aspect  # the original's long side, in px
    side = width if wider else height
    cell = frame / GRID
    lost = (frame - side) / 2
    first, last = int(np.ceil(lost / cell - 1e-9)), int(np.floor((lost + side) / cell + 1e-9))
    a, b = max(0.0, first * cell - lost), min(float(side), last * cell - lost)
    v = np.zeros((GRID, GRID))
    if last - first < 3:
        return v  # too narrow a strip to read
    if wider:
        v[:, first:last] = _features(_grid(luma, (a, 0, b, height), (last - first, GRID)))
    else:
        v[first:last, :] = _features(_grid(luma, (0, a, width, b), (GRID, last - first)))
    return v


def _grid(luma: Image.Image, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """Box-average a region of the float luma image onto `size` (width, height) cells."""
    return np.asarray(luma.resize(size, Image.Resampling.BOX, box=box), np.float64)
