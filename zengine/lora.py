"""LoRA adapters for brand style: a spec type, and a tiny random LoRA built offline for tests.

Real adapters are `.safetensors` files trained for Z-Image-Turbo (diffusers/peft format); the
engine loads each once with `load_lora_weights` (needs `peft`), keeps it loaded, and switches
the active set per batch with `set_adapters`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the DiT's attention projections


@dataclass(frozen=True)
class LoraSpec:
    """One adapter: a local file or directory, and how strongly it applies."""

    path: str
    weight: float = 1.0

    @property
    def adapter_name(self) -> str:
        """A stable, valid adapter name derived from the path."""
        digest = hashlib.sha256(str(Path(self.path).expanduser().resolve()).encode()).hexdigest()
        return f"lora_{digest[:12]}"


def build_tiny_lora(dest: Path, seed: int = 0, rank: int = 4, scale: float = 0.5) -> Path:
    """Save a random LoRA for the tiny model's transformer to `dest` (a directory); no network.

    peft initialises LoRA's B matrices to zero (an adapter that does nothing); here both A and
    B are random so the adapter visibly changes the image, which is what tests need.
    """
    import torch
    from diffusers import ZImagePipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from zengine.tiny import build_tiny_pipeline

    transformer = build_tiny_pipeline().transformer
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS,
                                       init_lora_weights=False))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    dest.mkdir(parents=True, exist_ok=True)
    ZImagePipeline.save_lora_weights(
        dest, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return dest
