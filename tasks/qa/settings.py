"""The `qa:` block of the settings file: which checks run, their thresholds, how often to retry.

Every field has a default, so a settings file without `qa:` runs the whole gate:

    qa:
      retries: 2                 # text mismatch: regenerate with seed+1, seed+2, then typeset
      min_side_px: 720           # OCR checks read images at least this big (previews are skipped)
      max_cer: {zh: 0.10, en: 0.20}
      text: {enabled: auto}      # auto: off for the tiny test model (random weights draw no text)
      label: {downscale: 0.5, jpeg_quality: 70}
      nsfw: {threshold: 0.45}
      palette: {max_delta_e: null}   # null: reported only; a number: gates (retry, then hold)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# NudeNet 3.4 classes that keep an image off the public prefix. Covered parts, faces, feet,
# bellies, armpits and male chests are ordinary in lifestyle posters and are not listed.
UNSAFE_CLASSES = ("FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED",
                  "BUTTOCKS_EXPOSED", "ANUS_EXPOSED")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MaxCer(_Strict):
    """Largest character error rate accepted, per script (after normalisation, see tasks.qa.text).

    Chinese 0.10: a headline of up to 9 hanzi must be read exactly (one wrong hanzi is the
    garbling users report); English 0.20: OCR confuses a letter now and then on a correct one.
    """

    zh: float = Field(default=0.10, ge=0.0, le=1.0)
    en: float = Field(default=0.20, ge=0.0, le=1.0)

    def for_text(self, text: str) -> float:
        """The threshold for `text`: Chinese if it has any CJK character, else English."""
        return self.zh if any(_is_cjk(c) for c in text) else self.en


def _is_cjk(char: str) -> bool:
    return "\u3400" <= char <= "\u9fff" or "\uf900" <= char <= "\ufaff"


class TextCheckSettings(_Strict):
    """Text fidelity: the copy a template asks the model to draw (`draw_text`), read back."""

    enabled: Literal["auto", "on", "off"] = Field(
        default="auto", description="auto: on, except for the built-in tiny model, whose random "
                                    "weights draw noise and never text")
    band_ratio: float = Field(default=0.45, gt=0.05, le=1.0,
                              description="top share of the image read: the templates ask for "
                                          "the headline across the top; 1.0 reads everything")
    detect_width_px: int = Field(default=384, ge=128, le=2048,
                                 description="the band is searched for text at this width; the "
                                             "lines found are read at full resolution")


class LabelCheckSettings(_Strict):
    """The explicit AIGC label read back as a platform would: full size, then a repost copy."""

    enabled: bool = True
    downscale: float = Field(default=0.5, gt=0.1, le=1.0, description="repost copy: side scale")
    jpeg_quality: int = Field(default=70, ge=10, le=100, description="repost copy: JPEG quality")


class NsfwCheckSettings(_Strict):
    """The NudeNet detector on every image: any unsafe class at or above `threshold` holds it."""

    enabled: bool = True
    threshold: float = Field(default=0.45, gt=0.0, le=1.0)
    classes: tuple[str, ...] = Field(default=UNSAFE_CLASSES, min_length=1)


class PaletteCheckSettings(_Strict):
    """Dominant colours vs the brand's `colours:` (CIEDE2000); reported unless a limit is set."""

    enabled: bool = True
    colours: int = Field(default=5, ge=1, le=16, description="dominant colours measured")
    max_delta_e: float | None = Field(default=None, gt=0.0,
                                      description="share-weighted mean ΔE00 above which the image "
                                                  "fails (retry, then hold); null: report only")


class QASettings(_Strict):
    """The gate between generation and publishing (tasks.qa), run on the publish threads."""

    enabled: bool = True
    retries: int = Field(default=2, ge=0, le=8,
                         description="text mismatch: regenerate with the next seed this many "
                                     "times, then typeset the exact headline, then hold")
    min_side_px: int = Field(default=720, ge=0,
                             description="OCR checks gate images whose shorter side is at least "
                                         "this; smaller previews are skipped (never posted)")
    threads: int = Field(default=1, ge=1, le=64,
                         description="ONNX Runtime threads per model; the publish threads "
                                     "already run batches side by side")
    max_cer: MaxCer = Field(default_factory=MaxCer)
    text: TextCheckSettings = Field(default_factory=TextCheckSettings)
    label: LabelCheckSettings = Field(default_factory=LabelCheckSettings)
    nsfw: NsfwCheckSettings = Field(default_factory=NsfwCheckSettings)
    palette: PaletteCheckSettings = Field(default_factory=PaletteCheckSettings)
