"""Out of GPU memory: the engine halves the batch and retries, down to one image, then explains.

The tiny model runs on the CPU, which never runs out of GPU memory, so `zengine.faults`
raises `torch.cuda.OutOfMemoryError` at the exact point of the real failure (the pipeline
call); everything around it — freeing, halving, seeding, recording — is the production path.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zengine import GenerationOutOfMemory, GenerationRequest, GenerationResult, TurboEngine
from zengine.engine import is_out_of_memory
from zengine.faults import inject_oom

SIDE = 64  # the smallest size the engine takes: these tests are about batches, not pixels
PROMPTS = ["a red fox in snow", "海报：春日限定", "a longer prompt, so this batch needs a mask", "b"]


@pytest.fixture(scope="module")
def engine(zpipe_cache: Path) -> Iterator[TurboEngine]:
    yield TurboEngine(max_batch=4)


def requests(n: int = 4) -> list[GenerationRequest]:
    return [GenerationRequest(prompt=PROMPTS[i], width=SIDE, height=SIDE, seed=40 + i, steps=2)
            for i in range(n)]


def pixels(result: GenerationResult) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.png)).convert("RGB")).astype(int)


def test_batch_of_four_halves_to_single_images_identical_to_unsplit_runs(
        engine: TurboEngine, caplog: pytest.LogCaptureFixture) -> None:
    steps_seen: list[tuple[int, int]] = []
    with caplog.at_level(logging.WARNING, logger="zengine"), inject_oom(engine, above=1) as fault:
        split = engine.generate(requests(), on_step=lambda done, total: steps_seen.append((done, total)))

    # 4 fails, 2 fails, 1 + 1 run; the second 2 fails, 1 + 1 run.
    assert fault.calls == [4, 2, 1, 1, 2, 1, 1]
    assert fault.raised == 3
    assert [r.seed for r in split] == [40, 41, 42, 43]
    assert {(r.batch.requested, r.batch.used, r.batch.oom_splits) for r in split} == {(4, 1, 2)}
    assert [r.timings["batch_size"] for r in split] == [1, 1, 1, 1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("batch of 4 64x64 images (2 steps): retrying as 2 + 2" in w for w in warnings)
    assert any("batch of 2 64x64 images (2 steps): retrying as 1 + 1" in w for w in warnings)
    # Progress stays monotonic and ends complete although the work grew with each retry.
    assert [d for d, _ in steps_seen] == sorted(d for d, _ in steps_seen)
    assert steps_seen[-1][0] == steps_seen[-1][1] == 4 * 2  # four single-image calls of 2 steps

    # Each image is byte for byte the one the same request makes when run alone (the batch
    # size actually used): same seed, same generator, same image.
    alone = [engine.generate([r])[0] for r in requests()]
    assert [a.png for a in alone] == [s.png for s in split]
    assert all(a.batch.oom_splits == 0 for a in alone)

    # And the unsplit batch of 4 makes the same images up to the last-bit rounding that CPU
    # kernels do differently per batch size (measured: 1 level of 255 in ~0.01% of pixels).
    together = engine.generate(requests())
    assert {(r.batch.requested, r.batch.used, r.batch.oom_splits) for r in together} == {(4, 4, 0)}
    for t, s in zip(together, split, strict=True):
        assert np.abs(pixels(t) - pixels(s)).max() <= 2


def test_out_of_memory_at_two_runs_pairs_identical_to_batches_of_two(engine: TurboEngine) -> None:
    with inject_oom(engine, first_calls=1) as fault:  # only the first call (the 4) fails
        split = engine.generate(requests())
    assert fault.calls == [4, 2, 2]
    assert {(r.batch.requested, r.batch.used, r.batch.oom_splits) for r in split} == {(4, 2, 1)}
    pairs = engine.generate(requests()[:2]) + engine.generate(requests()[2:])
    assert [p.png for p in pairs] == [s.png for s in split]


def test_one_image_out_of_memory_raises_a_clear_error(engine: TurboEngine) -> None:
    with inject_oom(engine, above=0) as fault, pytest.raises(GenerationOutOfMemory) as info:
        engine.generate(requests(2))
    assert fault.calls == [2, 1]  # halved once, then the single image failed too
    message = str(info.value)
    for part in ("one 64x64 image", "(2 steps)", "batch of 2 down to 1", "smaller images",
                 "size_for(fmt, scale=0.5)", "nvidia-smi"):
        assert part in message, message
    assert isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)
    # The hook is gone after the block: the same engine generates again.
    assert engine.fault_hook is None
    assert len(engine.generate(requests(1))) == 1


def test_inject_oom_needs_a_rule(engine: TurboEngine) -> None:
    with pytest.raises(ValueError, match="above=N or first_calls=K"), inject_oom(engine):
        pass


# cuDNN reports a workspace it cannot allocate as a plain RuntimeError, not as
# torch.cuda.OutOfMemoryError; some kernels raise "CUDA error: out of memory". Both must halve.
CUDNN_OOM = "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR (workspace allocation of 2147483648 bytes)"


class RaiseAbove:
    """A fault hook raising `error` for pipeline calls of more than `above` images."""

    def __init__(self, error: Exception, above: int) -> None:
        self.error, self.above, self.calls = error, above, []

    def __call__(self, batch_size: int) -> None:
        self.calls.append(batch_size)
        if batch_size > self.above:
            raise self.error


@pytest.mark.parametrize("message", [CUDNN_OOM, "CUDA error: out of memory"])
def test_cudnn_and_plain_runtime_out_of_memory_halve_the_batch(engine: TurboEngine,
                                                                message: str) -> None:
    hook = RaiseAbove(RuntimeError(message), above=2)
    engine.fault_hook = hook
    try:
        split = engine.generate(requests())
    finally:
        engine.fault_hook = None
    assert hook.calls == [4, 2, 2]
    assert {(r.batch.requested, r.batch.used, r.batch.oom_splits) for r in split} == {(4, 2, 1)}
    pairs = engine.generate(requests()[:2]) + engine.generate(requests()[2:])
    assert [p.png for p in pairs] == [s.png for s in split]


def test_one_image_cudnn_out_of_memory_raises_the_clear_error(engine: TurboEngine) -> None:
    engine.fault_hook = RaiseAbove(RuntimeError(CUDNN_OOM), above=0)
    try:
        with pytest.raises(GenerationOutOfMemory) as info:
            engine.generate(requests(2))
    finally:
        engine.fault_hook = None
    assert "CUDNN_STATUS_INTERNAL_ERROR" in str(info.value) and "one 64x64 image" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_other_runtime_errors_are_not_mistaken_for_out_of_memory(engine: TurboEngine) -> None:
    hook = RaiseAbove(RuntimeError("expected scalar type Float but found BFloat16"), above=0)
    engine.fault_hook = hook
    try:
        with pytest.raises(RuntimeError, match="expected scalar type") as info:
            engine.generate(requests())
    finally:
        engine.fault_hook = None
    assert hook.calls == [4]  # no halving
    assert not isinstance(info.value, GenerationOutOfMemory)


@pytest.mark.parametrize(("error", "expected"), [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError(CUDNN_OOM), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
    (ValueError("out of memory"), False),
])
def test_is_out_of_memory(error: Exception, expected: bool) -> None:
    assert is_out_of_memory(error) is expected
