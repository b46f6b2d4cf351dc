"""The QA gate's checks as functions (tasks.qa): OCR read-back, CER, label legibility, NSFW,
palette ΔE00, and the decision table. Real models (PP-OCRv4 through rapidocr, NudeNet 320n),
real fonts (the project's CJK font), synthetic backgrounds like the tiny model's noise.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from tasks.labels.overlay import HeadlineStyle, draw_headline
from tasks.labels.watermark import LabelSpec, apply_label, find_cjk_font
from tasks.qa import Detection, NudeNetDetector, QASettings, Subject, decide, inspect, read_label
from tasks.qa.palette import check_palette, ciede2000, dominant_colours, srgb_to_lab
from tasks.qa.report import CheckResult
from tasks.qa.settings import MaxCer, PaletteCheckSettings
from tasks.qa.text import cer, check_drawn_text, check_label, check_typeset_text, normalize

ZH, EN = "春日限定桂花拿铁", "Osmanthus Latte"
READ_ALL = QASettings(min_side_px=0)  # read whatever the size


def _background(size: tuple[int, int] = (1024, 1024), seed: int = 3) -> Image.Image:
    """A smooth colour-noise picture, like the tiny model's output."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
    return Image.fromarray(low).resize(size, Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))


def _font() -> str:
    return str(find_cjk_font())


def _headline(image: Image.Image, lines: list[str], plate: str = "#00000099"):
    return draw_headline(image, lines, HeadlineStyle(plate_color=plate), _font())


# --- CER -----------------------------------------------------------------------------------


def test_normalize_folds_width_case_punctuation_and_ocr_confusions() -> None:
    assert normalize("ＡＩ生成 · AI-Generated.") == normalize("ai生成aigenerated")
    assert normalize("Al-generated") == normalize("AI-generated")  # l / I: OCR's classic
    assert normalize("  ") == ""


def test_cer_takes_the_best_matching_stretch_of_what_was_read() -> None:
    assert cer(ZH, [ZH]) == 0.0
    assert cer(ZH, ["咖啡馆 LOGO", ZH, "¥28"]) == 0.0  # other text in the band does not count
    assert cer(ZH, ["春日限定", "桂花拿铁"]) == 0.0  # one headline split in two boxes
    assert cer(ZH, ["春日限定桂花拿铁 NEW"]) == 0.0  # extra text in the same line is trimmed
    assert cer(ZH, ["春日限定桂花拿秩"]) == pytest.approx(1 / 8)  # one garbled hanzi
    assert cer(ZH, []) == 1.0
    assert cer("Osmanthus Latte", ["OSMANTHUS LATTE."]) == 0.0


def test_cer_thresholds_hold_chinese_to_exact_and_english_to_a_letter_or_two() -> None:
    limits = MaxCer()
    assert limits.for_text(ZH) == 0.10 and limits.for_text(EN) == 0.20
    assert cer(ZH, ["春日限定桂花拿秩"]) > limits.for_text(ZH)  # 1 wrong hanzi of 8: fails
    assert cer(EN, ["Osmanthus Lalte"]) <= limits.for_text(EN)  # 1 wrong letter of 14: passes
    assert cer(EN, ["Osmantus Lat"]) > limits.for_text(EN)  # 3 missing of 14: fails


# --- Headline read-back ---------------------------------------------------------------------


def test_a_typeset_chinese_and_english_headline_reads_back_exactly() -> None:
    image, placement = _headline(_background(), [ZH, EN])
    result = check_typeset_text(image, list(zip(placement.lines, placement.line_boxes, strict=True)),
                                READ_ALL)
    assert result.verdict == "pass", result.reason
    assert [line["cer"] for line in result.detail["lines"]] == [0.0, 0.0], result.detail


def test_copy_drawn_in_the_top_band_is_found_and_read() -> None:
    """As if the model drew it: no plate, text straight on the picture, found by detection."""
    image, _ = _headline(_background(seed=8), [ZH, EN], plate="#00000000")
    result = check_drawn_text(image, {"zh": ZH, "en": EN}, READ_ALL)
    assert result.verdict == "pass", result.reason
    assert result.value == 0.0 and result.detail["languages"]["zh"]["cer"] == 0.0


def test_garbled_or_missing_copy_fails_with_what_was_read() -> None:
    image, _ = _headline(_background(seed=9), ["春日限定桂花拿秩"], plate="#00000000")
    garbled = check_drawn_text(image, {"zh": ZH}, READ_ALL)
    assert garbled.verdict == "fail" and garbled.value == pytest.approx(0.125)
    assert "春日限定桂花拿秩" in garbled.reason and "0.12 > 0.10" in garbled.reason
    missing = check_drawn_text(_background(seed=10), {"zh": ZH, "en": EN}, READ_ALL)
    assert missing.verdict == "fail" and missing.value == 1.0


# --- The explicit label ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1024, 1024), (720, 1280), (1280, 720)])
def test_the_label_reads_back_at_full_size_and_after_a_repost(size) -> None:
    image, placement = apply_label(_background(size), LabelSpec())
    readings = read_label(image, placement.text_bbox, placement.text, MaxCer())
    assert [r.copy_name for r in readings] == ["full", "repost"]
    assert readings[1].scale == 0.5 and readings[1].jpeg_quality == 70
    assert all(r.passed for r in readings), [r.model_dump() for r in readings]
    assert all(s.cer == 0.0 for s in readings[0].segments if s.text == "AI生成")


def test_a_low_contrast_label_fails_the_read_back() -> None:
    spec = LabelSpec(text_color="#767676", plate_color="#747474")  # contrast 1.02:1
    image, placement = apply_label(_background(), spec)
    result = check_label(image, placement.text_bbox, placement.text, READ_ALL)
    assert result.verdict == "fail" and result.gating
    assert "not legible" in result.reason and result.value > 0.2


def test_a_label_too_small_fails_the_read_back_after_the_repost() -> None:
    """8 px text (0.8% of 1024: far below the 5% rule) is gone once the repost halves it."""
    image = _background()
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(_font(), 8)
    draw.rectangle((900, 990, 1020, 1010), fill="#000000")
    draw.text((905, 995), "AI生成 · AI-generated", font=font, fill="#FFFFFF")
    box = draw.textbbox((905, 995), "AI生成 · AI-generated", font=font)
    readings = read_label(image, box, "AI生成 · AI-generated", MaxCer())
    assert not readings[1].passed, readings[1].model_dump()


# --- NSFW: real detector, negative path -------------------------------------------------------


def test_the_real_detector_finds_nothing_unsafe_in_the_test_images() -> None:
    """Negative path only: a positive sample cannot ship in the tests (see test_qa_publish)."""
    settings = QASettings()
    detector = NudeNetDetector()
    images = [_background(seed=s) for s in range(3)]
    images.append(_headline(_background(seed=4), [ZH, EN])[0])
    images.append(apply_label(_background((720, 1280)), LabelSpec())[0])
    from tasks.qa.nsfw import check_nsfw

    for image in images:
        result = check_nsfw(image, settings.nsfw, detector)
        assert result.verdict == "pass", result.detail
        assert result.threshold == 0.45


# --- Palette ------------------------------------------------------------------------------

# Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula", Table 1: L1 a1 b1 L2 a2 b2 ΔE00
SHARMA = """
50.0000 2.6772 -79.7751 50.0000 0.0000 -82.7485 2.0425
50.0000 3.1571 -77.2803 50.0000 0.0000 -82.7485 2.8615
50.0000 2.8361 -74.0200 50.0000 0.0000 -82.7485 3.4412
50.0000 -1.3802 -84.2814 50.0000 0.0000 -82.7485 1.0000
50.0000 -1.1848 -84.8006 50.0000 0.0000 -82.7485 1.0000
50.0000 -0.9009 -85.5211 50.0000 0.0000 -82.7485 1.0000
50.0000 0.0000 0.0000 50.0000 -1.0000 2.0000 2.3669
50.0000 -1.0000 2.0000 50.0000 0.0000 0.0000 2.3669
50.0000 2.4900 -0.0010 50.0000 -2.4900 0.0009 7.1792
50.0000 2.4900 -0.0010 50.0000 -2.4900 0.0010 7.1792
50.0000 2.4900 -0.0010 50.0000 -2.4900 0.0011 7.2195
50.0000 2.4900 -0.0010 50.0000 -2.4900 0.0012 7.2195
50.0000 -0.0010 2.4900 50.0000 0.0009 -2.4900 4.8045
50.0000 -0.0010 2.4900 50.0000 0.0010 -2.4900 4.8045
50.0000 -0.0010 2.4900 50.0000 0.0011 -2.4900 4.7461
50.0000 2.5000 0.0000 50.0000 0.0000 -2.5000 4.3065
50.0000 2.5000 0.0000 73.0000 25.0000 -18.0000 27.1492
50.0000 2.5000 0.0000 61.0000 -5.0000 29.0000 22.8977
50.0000 2.5000 0.0000 56.0000 -27.0000 -3.0000 31.9030
50.0000 2.5000 0.0000 58.0000 24.0000 15.0000 19.4535
50.0000 2.5000 0.0000 50.0000 3.1736 0.5854 1.0000
50.0000 2.5000 0.0000 50.0000 3.2972 0.0000 1.0000
50.0000 2.5000 0.0000 50.0000 1.8634 0.5757 1.0000
50.0000 2.5000 0.0000 50.0000 3.2592 0.3350 1.0000
60.2574 -34.0099 36.2677 60.4626 -34.1751 39.4387 1.2644
63.0109 -31.0961 -5.8663 62.8187 -29.7946 -4.0864 1.2630
61.2901 3.7196 -5.3901 61.4292 2.2480 -4.9620 1.8731
35.0831 -44.1164 3.7933 35.0232 -40.0716 1.5901 1.8645
22.7233 20.0904 -46.6940 23.0331 14.9730 -42.5619 2.0373
36.4612 47.8580 18.3852 36.2715 50.5065 21.2231 1.4146
90.8027 -2.0831 1.4410 91.1528 -1.6435 0.0447 1.4441
90.9257 -0.5406 -0.9208 88.6381 -0.8985 -0.7239 1.5381
6.7747 -0.2908 -2.4247 5.8714 -0.0985 -2.2286 0.6377
2.0776 0.0795 -1.1350 0.9033 -0.0636 -0.5514 0.9082
"""


def test_ciede2000_matches_the_34_pairs_of_sharmas_test_data() -> None:
    rows = np.array([[float(v) for v in line.split()] for line in SHARMA.strip().splitlines()])
    assert rows.shape == (34, 7)
    got = ciede2000(rows[:, 0:3], rows[:, 3:6])
    np.testing.assert_allclose(got, rows[:, 6], atol=1e-4)
    np.testing.assert_allclose(ciede2000(rows[:, 3:6], rows[:, 0:3]), rows[:, 6], atol=1e-4)  # symmetric


def test_srgb_to_lab_known_values() -> None:
    np.testing.assert_allclose(srgb_to_lab(np.array([255, 255, 255])), [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(srgb_to_lab(np.array([0, 0, 0])), [0, 0, 0], atol=0.01)
    np.testing.assert_allclose(srgb_to_lab(np.array([255, 0, 0])), [53.24, 80.09, 67.20], atol=0.02)


BRAND = {"primary": "#C8102E", "cream": "#F5E6C8", "ink": "#2B2118"}


def _blocks(colours: list[tuple[str, float]], size: int = 256) -> Image.Image:
    """Vertical stripes of known colours and shares."""
    image = Image.new("RGB", (size, size))
    draw, x = ImageDraw.Draw(image), 0
    for colour, share in colours:
        width = round(size * share)
        draw.rectangle((x, 0, x + width - 1, size - 1), fill=colour)
        x += width
    return image


def test_an_image_in_the_brand_colours_has_a_delta_e_near_zero() -> None:
    image = _blocks([("#C8102E", 0.5), ("#F5E6C8", 0.25), ("#2B2118", 0.25)])
    shares = {"#{:02X}{:02X}{:02X}".format(*rgb): round(s, 1)
              for rgb, s in dominant_colours(image, 5) if s > 0.03}  # stripe edges blend a little
    assert shares == {"#C8102E": 0.5, "#F5E6C8": 0.2, "#2B2118": 0.2}
    result = check_palette(image, BRAND, PaletteCheckSettings())
    assert result.value == pytest.approx(0.0, abs=0.05) and result.verdict == "pass"
    assert not result.gating and result.threshold is None  # reported only, by default
    assert {d["nearest"] for d in result.detail["dominant"]} == {"primary", "cream", "ink"}


def test_an_off_brand_image_reports_its_delta_e_and_gates_only_when_configured() -> None:
    image = _blocks([("#2E8B57", 1.0)])  # sea green, nowhere in a red/cream/brown palette
    lab = srgb_to_lab(np.array([0x2E, 0x8B, 0x57]))
    want = min(float(ciede2000(lab, srgb_to_lab(np.array([int(h[i:i + 2], 16) for i in (1, 3, 5)]))))
               for h in BRAND.values())
    reported = check_palette(image, BRAND, PaletteCheckSettings())
    assert reported.value == pytest.approx(want, abs=0.01) and reported.value > 30
    assert reported.verdict == "pass" and not reported.failed
    gated = check_palette(image, BRAND, PaletteCheckSettings(max_delta_e=20))
    assert gated.verdict == "fail" and gated.failed and "ΔE00" in gated.reason
    assert check_palette(image, {}, PaletteCheckSettings()).verdict == "skipped"


# --- The gate -------------------------------------------------------------------------------


def _result(verdict: str, gating: bool = True) -> CheckResult:
    return CheckResult(value=0.0, threshold=0.0, verdict=verdict, gating=gating, reason=f"{verdict}!")


@pytest.mark.parametrize(("checks", "attempt", "fallback", "want"), [
    ({"nsfw": "pass", "label": "pass", "text": "pass"}, 0, False, "publish"),
    ({"nsfw": "fail", "label": "pass", "text": "fail"}, 0, False, "hold"),  # never retried
    ({"nsfw": "pass", "label": "fail"}, 0, False, "hold"),
    ({"nsfw": "pass", "overlay_text": "fail"}, 0, False, "hold"),
    ({"nsfw": "pass", "text": "fail"}, 0, False, "retry"),
    ({"nsfw": "pass", "text": "fail"}, 1, False, "retry"),
    ({"nsfw": "pass", "text": "fail"}, 2, False, "overlay"),  # retries spent: typeset it
    ({"nsfw": "pass", "overlay_text": "pass"}, 2, True, "overlay"),  # published with the fallback
    ({"nsfw": "pass", "palette": "fail"}, 0, False, "retry"),
    ({"nsfw": "pass", "palette": "fail"}, 2, False, "hold"),
])
def test_decide(checks, attempt, fallback, want) -> None:
    decision, reasons = decide({k: _result(v) for k, v in checks.items()}, attempt, 2, fallback)
    assert decision == want
    assert (decision in ("publish",)) == (not reasons) or fallback


def test_a_report_only_check_never_changes_the_decision() -> None:
    assert decide({"palette": _result("fail", gating=False)}, 0, 2)[0] == "publish"


class Injected:
    """A detector at NudeNet's interface that returns a chosen result (positives cannot ship)."""

    def __init__(self, *found: Detection) -> None:
        self.found = list(found)

    def detect(self, image: Image.Image) -> list[Detection]:
        return self.found


def _subject(size=(1024, 1024), draws_text=True, **kw) -> Subject:
    generated = _background(size)
    final, placement = apply_label(generated, LabelSpec())
    return Subject(generated=generated, final=final, seed=7, label_text=placement.text,
                   label_box=placement.text_bbox, brand_colours=BRAND, model_draws_text=draws_text, **kw)


def test_inspect_records_every_check_with_value_threshold_and_verdict() -> None:
    report = inspect(_subject(draw_text={"zh": ZH}), QASettings(retries=2))
    assert set(report.checks) == {"nsfw", "label", "text", "palette"}
    assert report.checks["label"].verdict == "pass" and report.checks["nsfw"].verdict == "pass"
    assert report.checks["text"].verdict == "fail" and report.decision == "retry"  # noise: no copy
    assert report.checks["palette"].value is not None and not report.checks["palette"].gating
    record = report.record()
    assert record["schema"] == "zpipe.qa/1" and record["seed"] == 7 and record["attempt"] == 0
    assert record["models"]["rapidocr-onnxruntime"] == "1.4.4" and record["models"]["nudenet"] == "3.4.2"
    for check in record["checks"].values():
        assert {"value", "threshold", "verdict"} <= set(check)


def test_text_auto_is_off_for_the_tiny_model_and_previews_are_not_read() -> None:
    report = inspect(_subject(draw_text={"zh": ZH}, draws_text=False), QASettings())
    assert report.checks["text"].verdict == "skipped" and "tiny" in report.checks["text"].reason
    preview = inspect(_subject(size=(512, 512), draw_text={"zh": ZH}), QASettings())
    assert preview.checks["label"].verdict == "skipped" and "qa.min_side_px" in preview.checks["label"].reason
    assert preview.decision == "publish"


def test_an_injected_nsfw_result_holds_the_image() -> None:
    """The hold path by injection at the detector's own interface: no positive sample ships."""
    flagged = Injected(Detection(label="FEMALE_BREAST_EXPOSED", score=0.91, box=(1, 2, 3, 4)),
                       Detection(label="FACE_FEMALE", score=0.99, box=(5, 6, 7, 8)))
    report = inspect(_subject(), QASettings(), detector=flagged)
    assert report.decision == "hold"
    assert report.checks["nsfw"].value == 0.91 and "FEMALE_BREAST_EXPOSED 0.91" in report.reasons[0]
    harmless = inspect(_subject(), QASettings(), detector=Injected(
        Detection(label="FACE_FEMALE", score=0.99, box=(5, 6, 7, 8))))
    assert harmless.decision == "publish"


def test_zpipe_verify_reads_the_label_with_the_gates_own_reading() -> None:
    import io

    from tasks.labels.verify import verify_bytes

    image, placement = apply_label(_background((720, 1280)), LabelSpec())
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    report = verify_bytes(buffer.getvalue(), brand=None, store=None, trust_anchors=None,
                          require_watermark=False)
    same = read_label(image, placement.text_bbox, placement.text, MaxCer())
    assert report.explicit.readback == [r.model_dump() for r in same]
    assert report.explicit.status == "pass" and "OCR full ✓" in report.explicit.summary()
