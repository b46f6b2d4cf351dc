"""The two models the gate looks with, each loaded once per process, on first use.

Both ship inside their PyPI wheels (no download, works offline):
- OCR: `rapidocr-onnxruntime==1.4.4`, PP-OCRv4 zh/en detection + recognition ONNX models;
- NSFW: `nudenet==3.4.2`, its `320n.onnx` detector.

Nothing loads at import time. `ocr(threads)` and `nudenet(threads)` build their model under a
lock the first time and return the same instance after; ONNX Runtime sessions are created
with `threads` intra-op threads (the publish threads already run batches side by side).
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

from tasks.core.errors import ZpipeError

_INSTALL = "pip install 'rapidocr-onnxruntime==1.4.4' 'nudenet==3.4.2' opencv-python-headless"


class QAModelError(ZpipeError):
    """A QA model cannot be loaded: the message says which package to install."""


class _Once:
    """A value built on first use, once, even when several publish threads ask at once."""

    def __init__(self, build: Any) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._values: dict[int, Any] = {}

    def get(self, threads: int) -> Any:
        value = self._values.get(threads)
        if value is None:
            with self._lock:
                value = self._values.get(threads)
                if value is None:
                    value = self._values[threads] = self._build(threads)
        return value


class Ocr:
    """PP-OCRv4 through RapidOCR, serialised by a lock (its pre/post-processing keeps state)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.lock = threading.Lock()

    def detect(self, bgr: Any) -> list[Any]:
        """Quadrilaterals (4x2 float arrays) of the text lines in a BGR array, top to bottom."""
        with self.lock:
            boxes, _ = self.engine.text_det(bgr)
            return [] if boxes is None or len(boxes) == 0 else list(self.engine.sorted_boxes(boxes))

    def recognize(self, bgr_lines: list[Any]) -> list[tuple[str, float]]:
        """(text, confidence) for each BGR crop of one text line."""
        if not bgr_lines:
            return []
        with self.lock:
            results, _ = self.engine.text_rec(bgr_lines)
        return [(str(text), float(score)) for text, score, *_ in results]

    def crops(self, bgr: Any, quads: list[Any]) -> list[Any]:
        """The line images under `quads`, straightened (RapidOCR's own perspective crop)."""
        return self.engine.get_crop_img_list(bgr, [quad.astype("float32") for quad in quads])


def _build_ocr(threads: int) -> Ocr:
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as exc:
        raise QAModelError(f"the OCR check needs rapidocr-onnxruntime ({exc}); {_INSTALL}") from None
    engine = RapidOCR(
        intra_op_num_threads=threads, inter_op_num_threads=1,
        use_cls=False,  # posters are upright: the 180° classifier only costs time
        det_limit_type="max",  # never upscale a crop for detection (the default "min" does, 10x slower)
        print_verbose=False)
    return Ocr(engine)


class NudeNet:
    """NudeNet's 320n detector with a session of our own (thread count; CPU provider)."""

    def __init__(self, threads: int) -> None:
        try:
            import nudenet
            import onnxruntime
            from nudenet.nudenet import _postprocess, _read_image
        except ImportError as exc:
            raise QAModelError(f"the NSFW check needs nudenet ({exc}); {_INSTALL}") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        model = Path(nudenet.__file__).with_name("320n.onnx")  # inside the wheel
        self.session = onnxruntime.InferenceSession(str(model), options,
                                                    providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.size = 320  # the model's input side
        self._read, self._post = _read_image, _postprocess

    def detect(self, rgba: Any) -> list[dict[str, Any]]:
        """NudeNet's detections for an RGBA uint8 array: [{class, score, box}] (thread-safe)."""
        blob, x_ratio, y_ratio, x_pad, y_pad, width, height = self._read(rgba, self.size)
        outputs = self.session.run(None, {self.input_name: blob})
        return self._post(outputs, x_pad, y_pad, x_ratio, y_ratio, width, height, self.size, self.size)


_OCR = _Once(_build_ocr)
_NUDENET = _Once(NudeNet)


def ocr(threads: int = 1) -> Ocr:
    """The process's OCR engine for `threads` ONNX Runtime threads (built on first call)."""
    return _OCR.get(threads)


def nudenet(threads: int = 1) -> NudeNet:
    """The process's NudeNet detector for `threads` ONNX Runtime threads (built on first call)."""
    return _NUDENET.get(threads)


@functools.cache
def versions() -> dict[str, str]:
    """Versions of the packages the gate looks with (recorded in every QA block)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("rapidocr-onnxruntime", "nudenet", "onnxruntime"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found
