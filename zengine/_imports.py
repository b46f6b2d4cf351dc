"""The heavy imports, done once and under a lock.

torch + diffusers + transformers take ~10 s to import, so zengine imports them only when a
model is built or loaded. diffusers' lazy top-level module is not thread-safe on first use
(two threads importing from it at once can get "cannot import name 'AutoencoderKL'"), so the
first import runs under a process-wide lock.

Loading chatter follows the Hugging Face-wide switch `HF_HUB_DISABLE_PROGRESS_BARS`:
transformers and huggingface_hub read it themselves, diffusers' own "Loading pipeline
components" bar does not, so it is turned off here when that switch is on.
"""

from __future__ import annotations

import threading

_LOCK = threading.Lock()


def import_model_libraries() -> None:
    """Import every diffusers and transformers class zengine uses; cheap after the first call."""
    with _LOCK:
        from diffusers import (  # noqa: F401
            AutoencoderKL,
            FlowMatchEulerDiscreteScheduler,
            ZImagePipeline,
            ZImageTransformer2DModel,
        )
        from diffusers.utils import logging as diffusers_logging
        from huggingface_hub.utils import are_progress_bars_disabled
        from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model  # noqa: F401

        if are_progress_bars_disabled():
            diffusers_logging.disable_progress_bar()
