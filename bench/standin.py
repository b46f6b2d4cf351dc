"""A stand-in GPU engine for benchmarks and tests: fixed latency per image, ready-made PNGs.

Never a default and never selectable from settings: the only way in is this module's entry
point, which runs the real `zpipe worker` command (same CLI, same `run_worker`, same
`generate_on_worker` task) with the process's engine factory replaced by a `StandInEngine`:

    python -m bench.standin 0.3 worker --settings S.yaml

(first argument: seconds per image; the rest are `zpipe` arguments). The engine sleeps
`latency_s` per image (`time.sleep` releases the GIL, as a CUDA call waiting on the GPU does),
then returns a small PNG of the requested size made once per size, so publishing still has
real bytes to label, watermark and upload. Its images say `model_id="standin"`, and their
timings carry the worker's pid and the wall-clock start and end of each stand-in batch, so a
benchmark can tell from the sidecars which process made what, and when.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence

from zengine import GenerationRequest, GenerationResult

MODEL_ID = "standin"


class StandInEngine:
    """The engine interface `tasks.generation.engine.generate_images` uses, with no model."""

    device = "standin"

    def __init__(self, latency_s: float) -> None:
        if not 0 < latency_s <= 60:
            raise ValueError(f"latency_s must be in (0, 60] seconds per image (got {latency_s!r})")
        self.latency_s = latency_s
        self.load_count, self.load_s = 0, 0.0
        self._pngs: dict[tuple[int, int], bytes] = {}
        self._lock = threading.Lock()  # one "GPU": batches of one process never overlap

    def load(self) -> bool:
        """True the first time (there is nothing to load)."""
        with self._lock:
            if self.load_count:
                return False
            self.load_count = 1
            return True

    def _png(self, width: int, height: int) -> bytes:
        if (width, height) not in self._pngs:
            from PIL import Image

            image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            self._pngs[(width, height)] = buffer.getvalue()
        return self._pngs[(width, height)]

    def generate(self, requests: Sequence[GenerationRequest],
                 on_step: Callable[[int, int], None] | None = None) -> list[GenerationResult]:
        """Sleep `latency_s` per request, then one ready-made PNG per request, in order."""
        requests = list(requests)
        with self._lock:
            start = time.time()
            time.sleep(self.latency_s * len(requests))
            end = time.time()
            pngs = [self._png(r.width, r.height) for r in requests]
        if on_step is not None:
            on_step(len(requests), len(requests))
        timings = {"standin_start": start, "standin_end": end, "batch_s": round(end - start, 4),
                   "image_s": self.latency_s, "batch_size": float(len(requests)),
                   "standin_pid": float(os.getpid())}
        return [GenerationResult(png=png, prompt=r.prompt, seed=r.seed, steps=r.steps,
                                 guidance_scale=r.guidance_scale, width=r.width, height=r.height,
                                 model_id=MODEL_ID, revision=f"{self.latency_s:g}s",
                                 timings=dict(timings))
                for r, png in zip(requests, pngs, strict=True)]


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m bench.standin LATENCY_S ZPIPE_ARGS...`: the zpipe CLI on the stand-in engine."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        raise SystemExit("usage: python -m bench.standin LATENCY_S worker [zpipe worker options]")
    engine = StandInEngine(float(args[0]))

    import tasks.generation.engine as generation

    generation._engine_for = lambda settings: engine  # the one seam: the process's engine factory
    from flows.cli.app import app

    app(args=args[1:], prog_name="zpipe")


if __name__ == "__main__":
    main()
