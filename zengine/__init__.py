"""zengine: Z-Image-Turbo behind one small engine. No Prefect; nothing runs at import.

Importing it is cheap: torch, diffusers and transformers load only when an engine is created
or a model is built.
"""

from zengine.engine import (
    Z_IMAGE_TURBO,
    BatchRecord,
    GenerationOutOfMemory,
    GenerationRequest,
    GenerationResult,
    ModelSource,
    TurboEngine,
)
from zengine.fast import FastPath, FastPathReport
from zengine.lora import LoraSpec, build_tiny_lora
from zengine.product import ProductError, ProductPlacement, place_product
from zengine.seeds import derive_seed
from zengine.sizes import SIZE_PRESETS, size_for
from zengine.tiny import TINY_MODEL_ID, TINY_REVISION, build_tiny_pipeline, ensure_tiny_model

__all__ = [
    "SIZE_PRESETS",
    "TINY_MODEL_ID",
    "TINY_REVISION",
    "Z_IMAGE_TURBO",
    "BatchRecord",
    "FastPath",
    "FastPathReport",
    "GenerationOutOfMemory",
    "GenerationRequest",
    "GenerationResult",
    "LoraSpec",
    "ModelSource",
    "ProductError",
    "ProductPlacement",
    "TurboEngine",
    "build_tiny_lora",
    "build_tiny_pipeline",
    "derive_seed",
    "ensure_tiny_model",
    "place_product",
    "size_for",
]
