"""The engine's fast path on the CPU (tiny model): attention verified batched vs solo, the recompile
limit raised, fp8 opt-in with clear errors, an injected pipeline.

The speed of any of this is a GPU question (bench/gpu.py); here only what it decides and records.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from zengine import FastPath, GenerationRequest, ModelSource, TurboEngine
from zengine.fast import (
    MAX_BATCH_VS_SOLO_ERROR,
    RECOMPILE_LIMIT,
    FastPathReport,
    Fp8Unavailable,
    apply_fp8,
    batched_vs_solo_errors,
    choose_attention,
    raise_recompile_limit,
)
from zengine.tiny import ensure_tiny_model


@pytest.fixture(scope="module")
def pipe(zpipe_cache: Path):
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(str(ensure_tiny_model(zpipe_cache)), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def mask_ignoring_backend(monkeypatch: pytest.MonkeyPatch) -> str:
    """diffusers' `_native_math` backend, patched to drop the padding mask (a broken kernel)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    name = AttentionBackendName._NATIVE_MATH
    original = _AttentionBackendRegistry._backends[name]

    def ignore_mask(*args, **kwargs):
        kwargs["attn_mask"] = None
        return original(*args, **kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, name, ignore_mask)
    return name.value


def _active_backend():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    return _AttentionBackendRegistry._active_backend


def test_attention_is_verified_batched_vs_solo_and_a_mask_ignoring_backend_is_refused(
        pipe, mask_ignoring_backend: str) -> None:
    before = _active_backend()
    report = FastPathReport()
    try:
        choose_attention(pipe.transformer, (mask_ignoring_backend, "native"), batched=True,
                         report=report)
        assert report.attention == "native"
        assert "padding mask is mishandled" in report.attention_tried[mask_ignoring_backend]
        assert report.attention_tried["native"].startswith("ok (batched vs solo")
        # set_attention_backend also sets diffusers' process-wide default: it is put back.
        assert _active_backend() == before
        # The check has a wide margin: native agrees to rounding, the broken one is far off.
        errors = batched_vs_solo_errors(pipe.transformer)
        assert max(errors) < MAX_BATCH_VS_SOLO_ERROR / 100
        pipe.transformer.set_attention_backend(mask_ignoring_backend)
        broken = batched_vs_solo_errors(pipe.transformer)
        assert broken[0] > 3 * MAX_BATCH_VS_SOLO_ERROR  # the short, padded sample
    finally:
        pipe.transformer.reset_attention_backend()
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        _AttentionBackendRegistry.set_active_backend(before)


def test_no_backend_passing_keeps_the_default_and_says_so(pipe, mask_ignoring_backend: str) -> None:
    report = FastPathReport()
    choose_attention(pipe.transformer, (mask_ignoring_backend, "flash"), batched=True, report=report)
    assert report.attention is None
    assert "flash" in report.attention_tried and not report.attention_tried["flash"].startswith("ok")
    assert any("default (SDPA) kept" in note for note in report.notes)


def test_recompile_limit_is_raised_process_wide() -> None:
    import torch._dynamo.config as config

    # torch's defaults, restored after the block (config.patch; pytest's monkeypatch would delete
    # the attribute of dynamo's config module on undo).
    with config.patch(recompile_limit=8, accumulated_recompile_limit=256):
        assert raise_recompile_limit() == RECOMPILE_LIMIT == config.recompile_limit
        assert config.accumulated_recompile_limit >= 4 * RECOMPILE_LIMIT
    with config.patch(recompile_limit=500):
        assert raise_recompile_limit() == 500  # never lowered


def test_compiled_engine_raises_the_limit_and_matches_eager(zpipe_cache: Path) -> None:
    import torch._dynamo.config as config

    with config.patch(recompile_limit=8):
        _compiled_engine_raises_the_limit_and_matches_eager(config)


def _compiled_engine_raises_the_limit_and_matches_eager(config) -> None:
    requests = [GenerationRequest(prompt=p, width=64, height=64, seed=7 + i, steps=2)
                for i, p in enumerate(("a red fox", "海报：春日限定，一杯桂花拿铁"))]
    eager = TurboEngine(max_batch=2).generate(requests)
    # compile_backend="eager": dynamo traces and guards exactly as with inductor, no codegen.
    fast = FastPath(enabled="on", compile_mode="default", compile_backend="eager",
                    attention=("native",))
    engine = TurboEngine(max_batch=2, fast_path=fast)
    try:
        compiled = engine.generate(requests)
        report = engine.fast_path_report
        assert report is not None and report.compile_mode == "default", report
        assert report.recompile_limit == RECOMPILE_LIMIT == config.recompile_limit
        assert any("first request of each new" in note for note in report.notes)
        assert [c.png for c in compiled] == [e.png for e in eager]
    finally:
        torch._dynamo.reset()


def test_fp8_is_off_by_default() -> None:
    assert FastPath().fp8 is False
    assert FastPath.from_settings("auto", "default").fp8 is False
    assert FastPath.from_settings("on", "off", fp8=True).fp8 is True


def test_fp8_without_torchao_is_a_clear_error_at_load(
        zpipe_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao -> ImportError
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    engine = TurboEngine(max_batch=1, fast_path=FastPath(enabled="on", fp8=True, compile_mode=None,
                                                         attention=("native",)))
    with pytest.raises(Fp8Unavailable) as info:
        engine.load()
    message = str(info.value)
    for part in ("FastPath(fp8=True) needs torchao", "pip install 'zpipe[gpu]'", "torchao==0.18.0",
                 "torch >= 2.11", "leave fp8 off"):
        assert part.lower() in message.lower(), message
    assert isinstance(info.value, ImportError) and not engine.loaded


def test_fp8_needs_a_cuda_gpu(pipe, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("torchao.quantization")  # whether or not torchao is installed here
    fake.Float8DynamicActivationFloat8WeightConfig = lambda **kw: kw
    fake.PerRow = lambda: "row"
    fake.quantize_ = lambda model, config: pytest.fail("must not quantize on the CPU")
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.quantization", fake)
    with pytest.raises(RuntimeError, match=r"needs a CUDA GPU with float8 matmuls \(got device cpu\)"):
        apply_fp8(pipe.transformer)


def test_engine_takes_an_already_loaded_pipeline(pipe) -> None:
    engine = TurboEngine(ModelSource(model="tiny"), max_batch=1, pipeline=pipe)
    [result] = engine.generate([GenerationRequest(prompt="a cat", width=64, height=64, seed=1,
                                                  steps=1)])
    assert engine.pipeline is pipe and engine.load_count == 1
    assert result.png.startswith(b"\x89PNG")


def test_an_explicit_backend_stays_with_its_engine(zpipe_cache: Path) -> None:
    before = _active_backend()
    engine = TurboEngine(max_batch=2, attention="_native_math")
    engine.load()
    backends = {getattr(m.processor, "_attention_backend", None)
                for m in engine.pipeline.transformer.modules() if hasattr(m, "processor")}
    assert {getattr(b, "value", b) for b in backends} == {"_native_math"}
    assert _active_backend() == before  # other diffusers models in the process are unaffected
