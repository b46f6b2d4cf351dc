"""Brand fit: the image's dominant colours against the brand palette, by CIEDE2000 (ΔE00).

ΔE00 is implemented here (vectorised numpy, ~40 lines, Sharma, Wu & Dalal 2005, checked
against all 34 pairs of their test data in tests/unit/qa/test_qa.py) rather than pulled in with
scikit-image (~60 MB with SciPy) or colour-science (~20 MB with SciPy) for one formula.

Dominant colours: the image reduced to at most 128 px a side and quantised by median cut
(Pillow) to `colours` colours, each with its share of the pixels. Each is matched to its
nearest brand colour; the check's value is the share-weighted mean ΔE00 (0 = every dominant
colour is a brand colour; ~2 is a just-noticeable difference; above ~25 a different hue).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from tasks.qa.report import CheckResult
from tasks.qa.settings import PaletteCheckSettings

_D65 = np.array([0.95047, 1.0, 1.08883])  # reference white (2° observer)
_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
REDUCED_SIDE = 128  # px: enough for colour shares, ~1 ms to quantise


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    value = colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB values 0..255; last axis R, G, B."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference of Lab arrays (broadcasting; kL = kC = kH = 1)."""
    lab1, lab2 = np.asarray(lab1, np.float64), np.asarray(lab2, np.float64)
    L1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    L2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    # 1. a' and C', h'
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    # 2. ΔL', ΔC', ΔH'
    dLp, dCp = L2 - L1, c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(c1p * c2p == 0, 0.0, dh)
    dHp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2)
    # 3. Means, weights, rotation
    Lp_bar, Cp_bar = (L1 + L2) / 2, (c1p + c2p) / 2
    h_sum = h1p + h2p
    hp_bar = np.where(np.abs(h1p - h2p) > 180,
                      np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2), h_sum / 2)
    hp_bar = np.where(c1p * c2p == 0, h_sum, hp_bar)
    t = (1 - 0.17 * np.cos(np.radians(hp_bar - 30)) + 0.24 * np.cos(np.radians(2 * hp_bar))
         + 0.32 * np.cos(np.radians(3 * hp_bar + 6)) - 0.20 * np.cos(np.radians(4 * hp_bar - 63)))
    d_theta = 30 * np.exp(-(((hp_bar - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(Cp_bar**7 / (Cp_bar**7 + 25.0**7))
    s_l = 1 + 0.015 * (Lp_bar - 50) ** 2 / np.sqrt(20 + (Lp_bar - 50) ** 2)
    s_c = 1 + 0.045 * Cp_bar
    s_h = 1 + 0.015 * Cp_bar * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c
    return np.sqrt((dLp / s_l) ** 2 + (dCp / s_c) ** 2 + (dHp / s_h) ** 2
                   + r_t * (dCp / s_c) * (dHp / s_h))


def dominant_colours(image: Image.Image, count: int) -> list[tuple[tuple[int, int, int], float]]:
    """The `count` main colours of `image` and their share of its pixels, largest first."""
    small = image.convert("RGB")
    small.thumbnail((REDUCED_SIDE, REDUCED_SIDE), Image.BILINEAR)
    quantised = small.quantize(colors=count, method=Image.Quantize.MEDIANCUT)
    palette = quantised.getpalette() or []
    total = small.width * small.height
    found = sorted(quantised.getcolors(maxcolors=256) or [], reverse=True)
    return [(tuple(palette[3 * index:3 * index + 3]), n / total) for n, index in found]  # type: ignore[misc]


def check_palette(image: Image.Image, brand_colours: dict[str, str],
                  settings: PaletteCheckSettings) -> CheckResult:
    """Share-weighted mean ΔE00 from the dominant colours to their nearest brand colours."""
    if not brand_colours:
        return CheckResult(value=None, threshold=settings.max_delta_e, verdict="skipped",
                           gating=False, reason="the brand declares no colours")
    names = list(brand_colours)
    brand_lab = srgb_to_lab(np.array([hex_to_rgb(brand_colours[n]) for n in names]))
    found = dominant_colours(image, settings.colours)
    lab = srgb_to_lab(np.array([rgb for rgb, _ in found]))
    distances = ciede2000(lab[:, None, :], brand_lab[None, :, :])  # dominant x brand
    nearest = distances.argmin(axis=1)
    shares = np.array([share for _, share in found])
    mean = float((distances[np.arange(len(found)), nearest] * shares).sum() / shares.sum())
    gating = settings.max_delta_e is not None
    passed = not gating or mean <= settings.max_delta_e  # type: ignore[operator]
    reason = "" if passed else (f"palette: mean ΔE00 {mean:.1f} from the brand colours > "
                                f"{settings.max_delta_e:.1f}")
    return CheckResult(
        value=round(mean, 2), threshold=settings.max_delta_e, verdict="pass" if passed else "fail",
        gating=gating, score=round(max(0.0, 1.0 - mean / 50.0), 4), reason=reason,
        detail={"dominant": [{"hex": "#{:02X}{:02X}{:02X}".format(*rgb), "share": round(share, 4),
                              "nearest": names[j], "delta_e": round(float(distances[i, j]), 2)}
                             for i, ((rgb, share), j) in enumerate(zip(found, nearest, strict=True))]})
