"""Z-Image-Turbo at full size with random weights: real compute and memory, no download.

Benchmarks need the real model's cost (a 6.15 B-parameter DiT, the 4.02 B-parameter Qwen3-4B
text encoder, the Flux VAE) but machines here cannot download the 20 GB of weights. The cost
depends only on the architecture, so this builds it from the published configs with random
weights: FLOPs, memory traffic, kernel shapes and load sizes are those of the real model; only
the images (noise) differ. The tokenizer is the tiny model's byte-level one (built offline; its
ids fit the real 151,936-entry embedding). Saved once with `save_pretrained` (~20.5 GB in bf16)
and loaded back through the same `from_pretrained` path as real weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from zengine._imports import import_model_libraries
from zengine.tiny import build_tiny_tokenizer, save_once

if TYPE_CHECKING:
    from diffusers import ZImagePipeline

FULL_REVISION = "full-random-v1"  # the recipe version: part of the save path

# Tongyi-MAI/Z-Image-Turbo's transformer/config.json.
TRANSFORMER_CONFIG: dict[str, Any] = {
    "all_patch_size": (2,), "all_f_patch_size": (1,), "in_channels": 16, "dim": 3840,
    "n_layers": 30, "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "norm_eps": 1e-5,
    "qk_norm": True, "cap_feat_dim": 2560, "rope_theta": 256.0, "t_scale": 1000.0,
    "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
}
# Qwen3-4B, the text encoder (the pipeline reads hidden_states[-2], so all 36 layers run).
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728,
    "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0, "tie_word_embeddings": True, "hidden_act": "silu",
}
# The Flux VAE: 16 latent channels, 8x down.
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2, "latent_channels": 16, "norm_num_groups": 32, "sample_size": 1024,
    "scaling_factor": 0.3611, "shift_factor": 0.1159, "use_quant_conv": False,
    "use_post_quant_conv": False, "act_fn": "silu",
}


def build_full_pipeline(device: str = "cuda", seed: int = 0) -> ZImagePipeline:
    """Build the full-size architecture with random weights on `device`, in bf16.

    Each part is created in float32 directly on `device` (random init on a GPU takes seconds;
    on a CPU, minutes) and cast to bf16 before the next is made, so the peak stays near the
    transformer's 24.6 GB float32 copy.
    """
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
    torch.manual_seed(seed)
    with torch.device(device):
        transformer = ZImageTransformer2DModel(**TRANSFORMER_CONFIG).to(torch.bfloat16).eval()
        text_encoder = Qwen3Model(Qwen3Config(
            **TEXT_ENCODER_CONFIG,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        )).to(torch.bfloat16).eval()
        vae = AutoencoderKL(**VAE_CONFIG).to(torch.bfloat16).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                          tokenizer=tokenizer, transformer=transformer)


def ensure_full_model(root: Path, device: str = "cuda") -> Path:
    """Return `<root>/<FULL_REVISION>` holding the saved full-size random model; build it once."""
    return save_once(Path(root).expanduser() / FULL_REVISION,
                     lambda: build_full_pipeline(device))


def count_parameters(pipe: ZImagePipeline) -> dict[str, int]:
    """Parameters per component (transformer, text_encoder, vae)."""
    return {name: sum(p.numel() for p in getattr(pipe, name).parameters())
            for name in ("transformer", "text_encoder", "vae")}
