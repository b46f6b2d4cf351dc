"""Brand-style LoRA adapters on the real diffusers pipeline (tiny model + a tiny random LoRA)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zengine import GenerationRequest, LoraSpec, TurboEngine, build_tiny_lora


def _pixels(result) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.png)), dtype=np.int16)


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("loras")
    return build_tiny_lora(root / "warm", seed=1), build_tiny_lora(root / "bold", seed=2)


def test_lora_changes_pixels_switches_per_batch_and_stays_loaded(zpipe_cache, loras) -> None:
    warm, bold = loras
    engine = TurboEngine(max_batch=4)
    base = GenerationRequest(prompt="a cup of coffee 一杯咖啡", width=128, height=128, seed=3)
    with_warm = GenerationRequest(**{**base.__dict__, "loras": (LoraSpec(str(warm), 1.0),)})
    with_bold = GenerationRequest(**{**base.__dict__, "loras": (LoraSpec(str(bold), 1.0),)})

    plain, warm_img, bold_img, plain_again = engine.generate([base, with_warm, with_bold, base])
    assert np.abs(_pixels(plain) - _pixels(warm_img)).mean() > 1  # the adapter is applied
    assert np.abs(_pixels(warm_img) - _pixels(bold_img)).mean() > 1  # switched per batch
    assert np.array_equal(_pixels(plain), _pixels(plain_again))  # and switched off again
    assert len(engine._loaded_loras) == 2

    (warm_again,) = engine.generate([with_warm])  # kept loaded: no reload, same pixels
    assert np.array_equal(_pixels(warm_img), _pixels(warm_again))
    assert len(engine._loaded_loras) == 2 and engine.load_count == 1

    half = GenerationRequest(**{**base.__dict__, "loras": (LoraSpec(str(warm), 0.5),)})
    (half_img,) = engine.generate([half])
    assert 0 < np.abs(_pixels(half_img) - _pixels(plain)).mean() < \
        np.abs(_pixels(warm_img) - _pixels(plain)).mean() * 1.5


def test_missing_lora_is_a_clear_error(zpipe_cache, tmp_path) -> None:
    engine = TurboEngine()
    request = GenerationRequest(prompt="x", width=64, height=64, seed=1,
                                loras=(LoraSpec(str(tmp_path / "nope.safetensors")),))
    with pytest.raises(ValueError, match=r"LoRA not found: .*nope.safetensors"):
        engine.generate([request])
