"""The tiny model: Z-Image-Turbo's architecture at toy size, random weights, built in code.

Build and test machines cannot download the real 20 GB of weights, so the engine ships this
stand-in. It is saved with `save_pretrained` and loaded back through the very same
`ZImagePipeline.from_pretrained` path as real weights; only its images (noise-like textures)
differ. The recipe is DESIGN.md's; bump `TINY_REVISION` whenever it changes so that caches
built from an older recipe are not reused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from zengine._imports import import_model_libraries

if TYPE_CHECKING:  # torch, diffusers and transformers take ~10 s to import: only when used
    from diffusers import ZImagePipeline
    from transformers import Qwen2Tokenizer

TINY_MODEL_ID = "zpipe/tiny-z-image"
TINY_REVISION = "tiny-v1"  # the recipe version: part of the cache path

# The special tokens of Qwen's tokenizer that the chat template and the pipeline use.
_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")

# What ZImagePipeline renders before tokenizing (it passes `enable_thinking=True`, which the
# real Qwen3 template answers with no <think> block either).
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_TEXT_HIDDEN = 32  # == the transformer's cap_feat_dim: the embedding it consumes


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE uses for the bytes 0..255 (GPT-2's map)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    shifted = 0
    symbols = {}
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + shifted)
            shifted += 1
    return [symbols[b] for b in range(256)]


def build_tiny_tokenizer() -> Qwen2Tokenizer:
    """A byte-level BPE `Qwen2Tokenizer` with no merges: one token per UTF-8 byte."""
    import_model_libraries()
    from transformers import Qwen2Tokenizer

    vocab = {token: i for i, token in enumerate(_SPECIAL_TOKENS)}
    for symbol in _byte_symbols():
        vocab[symbol] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",  # as Qwen3's chat models
        pad_token="<|endoftext|>",
        additional_special_tokens=list(_SPECIAL_TOKENS[1:]),
        model_max_length=131072,
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def build_tiny_pipeline(seed: int = 0) -> ZImagePipeline:
    """Build the tiny pipeline in memory; the same seed always gives the same weights."""
    import_model_libraries()
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = build_tiny_tokenizer()
    # Seed a private copy of torch's RNG so the caller's global random state is left alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)

        # 1. Text encoder: Qwen3, 2 layers. The pipeline reads hidden_states[-2].
        text_encoder = Qwen3Model(
            Qwen3Config(
                vocab_size=len(tokenizer),
                hidden_size=_TEXT_HIDDEN,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=16,
                max_position_embeddings=1024,  # > max_sequence_length=512
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            )
        ).eval()

        # 2. Transformer: the single-stream DiT; head_dim = 64 / 2 = sum(axes_dims).
        transformer = ZImageTransformer2DModel(
            dim=64,
            n_layers=2,
            n_refiner_layers=1,
            n_heads=2,
            n_kv_heads=2,
            cap_feat_dim=_TEXT_HIDDEN,
            axes_dims=[8, 12, 12],
            axes_lens=[1024, 512, 512],
        ).eval()

        # 3. VAE: 4 levels keep the real Flux VAE's 8x geometry and 16 latent channels.
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 32, 32, 32),
            layers_per_block=1,
            latent_channels=16,
            norm_num_groups=8,
            scaling_factor=0.3611,  # the Flux VAE's latent scale and shift
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ).eval()

    # 4. Scheduler: Turbo's flow-matching Euler schedule.
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return ZImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def default_cache_root() -> Path:
    """$ZPIPE_CACHE, or ~/.cache/zpipe when it is unset."""
    return Path(os.environ.get("ZPIPE_CACHE") or Path.home() / ".cache" / "zpipe").expanduser()


def ensure_tiny_model(cache_dir: Path | None = None) -> Path:
    """Return `<cache_dir>/models/<TINY_REVISION>` holding the saved tiny pipeline.

    `cache_dir` is a cache root (default: $ZPIPE_CACHE, else ~/.cache/zpipe). Built and saved
    on first call (see `save_once`).
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return save_once(root / "models" / TINY_REVISION, build_tiny_pipeline)


def save_once(target: Path, build: Callable[[], ZImagePipeline]) -> Path:
    """Save `build()` with `save_pretrained` at `target` unless a saved model is already there.

    The model is saved into a temporary directory beside the target and renamed into place, so
    a crash never leaves a half-saved model, and of two racing processes the second to finish
    keeps the first one's copy and discards its own.
    """
    if (target / "model_index.json").is_file():
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        build().save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished first (rename onto a non-empty dir fails): keep theirs.
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
