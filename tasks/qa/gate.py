"""The gate: run the checks on one finished image and decide publish / retry / overlay / hold.

Decision, most serious first:
1. NSFW flagged -> hold (never public; a reviewer releases or deletes it);
2. the explicit label not legible -> hold (a label spec or plate problem: another seed won't fix it);
3. typeset headline not legible -> hold (the font lacks glyphs);
4. model-drawn copy not read back -> retry with the next seed while `attempt < retries`, then
   overlay (typeset the exact copy), and after the overlay, hold if it still fails;
5. palette over `max_delta_e` (only when set) -> retry while tries remain, then hold;
6. otherwise publish.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from tasks.qa import models
from tasks.qa.nsfw import NsfwDetector, NudeNetDetector, check_nsfw
from tasks.qa.palette import check_palette
from tasks.qa.report import CheckResult, Decision, QAAttempt, QAReport
from tasks.qa.settings import QASettings
from tasks.qa.text import Box, check_drawn_text, check_label, check_typeset_text

HOLD_FIRST = ("nsfw", "label", "overlay_text")  # failures no other seed is trusted to fix


@dataclass(frozen=True)
class Subject:
    """One finished image as the gate sees it: pixels, and what was meant to be in them."""

    generated: Image.Image  # the model's picture, before any drawing (text, NSFW and palette)
    final: Image.Image  # the labelled picture as published (label and overlay read-backs)
    seed: int
    label_text: str
    label_box: Box  # the label's ink box in `final`
    draw_text: dict[str, str] = field(default_factory=dict)  # copy the prompt asked the model to draw
    overlay_lines: Sequence[tuple[str, Box]] = ()  # typeset lines and their ink boxes in `final`
    brand_colours: dict[str, str] = field(default_factory=dict)
    model_draws_text: bool = True  # False for the tiny test model (random weights)


def inspect(subject: Subject, settings: QASettings, *, attempt: int = 0,
            attempts: Sequence[QAAttempt] = (), fallback: bool = False,
            detector: NsfwDetector | None = None) -> QAReport:
    """Run every enabled check on `subject` and decide what happens to it.

    `attempt` counts earlier tries of this image (each with the next seed), `attempts` holds
    their outcomes; `fallback` says the exact headline was typeset because they all failed.
    `detector` replaces the NSFW detector (tests inject results here; default NudeNet).
    """
    checks: dict[str, CheckResult] = {}
    timings: dict[str, float] = {}
    readable = min(subject.final.size) >= settings.min_side_px
    small = (f"not read: the image's shorter side {min(subject.final.size)} px < qa.min_side_px "
             f"{settings.min_side_px} (a preview)")

    def run(name: str, check) -> None:
        started = time.perf_counter()
        checks[name] = check()
        timings[name] = round(time.perf_counter() - started, 4)

    # 1. Safety first: it decides alone whether the image may ever be public
    if settings.nsfw.enabled:
        run("nsfw", lambda: check_nsfw(subject.generated, settings.nsfw,
                                       detector or NudeNetDetector(settings.threads)))

    # 2. The explicit label, read as a platform would
    if settings.label.enabled:
        run("label", lambda: check_label(subject.final, subject.label_box, subject.label_text, settings)
            if readable else _skipped(small))

    # 3. Text: the typeset overlay when there is one, else the copy the model was asked to draw
    if subject.overlay_lines:
        run("overlay_text", lambda: check_typeset_text(subject.final, subject.overlay_lines, settings)
            if readable else _skipped(small))
    elif any(text.strip() for text in subject.draw_text.values()):
        enabled = settings.text.enabled == "on" or (settings.text.enabled == "auto"
                                                    and subject.model_draws_text)
        if not enabled:
            why = ("off: the tiny test model's random weights draw no text" if settings.text.enabled
                   == "auto" else "off (qa.text.enabled)")
            run("text", lambda: _skipped(why))
        else:
            run("text", lambda: check_drawn_text(subject.generated, subject.draw_text, settings)
                if readable else _skipped(small))

    # 4. Brand fit
    if settings.palette.enabled:
        run("palette", lambda: check_palette(subject.generated, subject.brand_colours, settings.palette))

    # 5. Decide
    decision, reasons = decide(checks, attempt, settings.retries, fallback)
    scores = [c.score for c in checks.values() if c.score is not None and c.verdict != "skipped"]
    return QAReport(checks=checks, score=round(sum(scores) / len(scores), 4) if scores else 1.0,
                    decision=decision, reasons=reasons, seed=subject.seed, attempt=attempt,
                    retries=settings.retries, attempts=list(attempts),
                    fallback="overlay" if fallback else None, models=models.versions(),
                    timings_s=timings)


def decide(checks: dict[str, CheckResult], attempt: int, retries: int,
           fallback: bool = False) -> tuple[Decision, list[str]]:
    """The decision for these check results (see the module docstring), and its reasons."""
    failed = {name: check for name, check in checks.items() if check.failed}
    reasons = [failed[name].reason or f"{name} failed" for name in (*HOLD_FIRST, "text", "palette")
               if name in failed]
    if any(name in failed for name in HOLD_FIRST):
        return "hold", reasons
    if "text" in failed:
        if attempt < retries:
            return "retry", reasons
        return ("hold" if fallback else "overlay"), reasons
    if "palette" in failed:
        return ("retry" if attempt < retries and not fallback else "hold"), reasons
    return ("overlay" if fallback else "publish"), reasons


def _skipped(reason: str) -> CheckResult:
    return CheckResult(value=None, threshold=None, verdict="skipped", gating=False, reason=reason)
