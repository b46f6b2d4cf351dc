"""Safety of what comes out: NudeNet's detector on every image, before anything is published.

The detector sits behind a one-method interface, `NsfwDetector.detect(image)`, so that the
gate receives it as a parameter: production uses `NudeNetDetector` (the `320n.onnx` inside the
nudenet wheel); tests that need a positive, which cannot be shipped, pass a detector that
returns a chosen result at this same interface.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

from tasks.qa import models
from tasks.qa.report import CheckResult
from tasks.qa.settings import NsfwCheckSettings


class Detection(BaseModel):
    """One region the detector found: its NudeNet class, confidence and box (x, y, w, h)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    score: float
    box: tuple[int, int, int, int]


class NsfwDetector(Protocol):
    def detect(self, image: Image.Image) -> list[Detection]:
        """Every region found in `image`, whatever its class."""
        ...


class NudeNetDetector:
    """NudeNet 3.4 `320n` (the model is loaded once per process, on the first image)."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads

    def detect(self, image: Image.Image) -> list[Detection]:
        rgba = np.ascontiguousarray(np.asarray(image.convert("RGBA")))  # NudeNet reads RGBA arrays
        return [Detection(label=d["class"], score=round(float(d["score"]), 4), box=tuple(d["box"]))
                for d in models.nudenet(self.threads).detect(rgba)]


def check_nsfw(image: Image.Image, settings: NsfwCheckSettings, detector: NsfwDetector) -> CheckResult:
    """Fail when any unsafe class scores at least `settings.threshold`; value = the top such score."""
    found = detector.detect(image)
    unsafe = sorted((d for d in found if d.label in settings.classes), key=lambda d: -d.score)
    top = unsafe[0].score if unsafe else 0.0
    flagged = [d for d in unsafe if d.score >= settings.threshold]
    reason = "" if not flagged else (
        "NSFW detector: " + ", ".join(f"{d.label} {d.score:.2f}" for d in flagged)
        + f" (threshold {settings.threshold:.2f})")
    return CheckResult(value=round(top, 4), threshold=settings.threshold,
                       verdict="fail" if flagged else "pass", score=round(1.0 - top, 4),
                       reason=reason, detail={"detections": [d.model_dump() for d in found]})
