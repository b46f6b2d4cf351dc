"""Generation: image jobs -> PNG bytes through the Turbo engine, one engine per process.

Plain functions, no Prefect: the `generate-batch` step (tasks.steps.generation) runs them
in the flow's process, and a resident task worker (tasks.orchestration.handover) runs them
for batches handed over with `.delay()`. Weights load once per process (`get_engine`).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence

from tasks.config.schema import EngineSettings
from tasks.content.plan import ImageJob
from tasks.core.progress import ProgressEvent, emit
from zengine import (
    FastPath,
    GenerationRequest,
    GenerationResult,
    LoraSpec,
    ModelSource,
    TurboEngine,
)

_ENGINES_LOCK = threading.Lock()  # batches run in several threads: exactly one engine each


def get_engine(settings: EngineSettings) -> TurboEngine:
    """The process's engine for these settings: weights load once, on first use.

    Thread-safe: two batches asking at once get the same engine, whose own lock then
    serializes the load (concurrent `from_pretrained` calls are not thread-safe).
    """
    with _ENGINES_LOCK:
        return _engine_for(settings)


@functools.lru_cache(maxsize=2)
def _engine_for(settings: EngineSettings) -> TurboEngine:
    source = ModelSource(model=settings.model, revision=settings.revision)
    device = None if settings.device == "auto" else settings.device
    fast_path = FastPath.from_settings(settings.fast_path, settings.compile_mode,
                                       settings.attention_backends, fp8=settings.fp8)
    return TurboEngine(source, device=device, max_batch=settings.max_batch, fast_path=fast_path)


def to_request(job: ImageJob) -> GenerationRequest:
    """The engine request for a job (prompt, size, seed, Turbo steps)."""
    return GenerationRequest(prompt=job.prompt.text, width=job.width, height=job.height,
                             seed=job.seed, steps=job.steps,
                             loras=tuple(LoraSpec(path, weight) for path, weight in job.loras),
                             product=job.product.placement() if job.product else None)


def generate_images(
    jobs: Sequence[ImageJob],
    settings: EngineSettings,
    on_step: Callable[[int, int], None] | None = None,
) -> list[GenerationResult]:
    """Generate one image per job, in job order; timings say which process and load made it."""
    engine = get_engine(settings)
    if engine.load():  # one line for the load, from the one thread that did it
        emit(ProgressEvent("loaded", detail=f"model {settings.model} loaded on {engine.device} "
                                            f"in {engine.load_s or 0.0:.1f} s"))
    results = engine.generate([to_request(job) for job in jobs], on_step=on_step)
    for result in results:
        result.timings.update(engine_pid=os.getpid(), engine_loads=engine.load_count,
                              load_s=round(engine.load_s or 0.0, 3))
    return results


