"""One image, outside any campaign: the `zpipe generate` command's work."""

from __future__ import annotations

import hashlib
from pathlib import Path

from rich.progress import Progress

from tasks.config.schema import load_brand, load_settings
from tasks.core.errors import ConfigError
from tasks.generation.engine import get_engine
from tasks.labels.watermark import ImplicitLabel, LabelSpec, OutputSpec, label_image
from zengine import GenerationRequest, size_for

SUFFIX_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def generate_one(prompt: str, output: Path, *, seed: int, fmt: str, brand_path: Path | None,
                 settings_path: Path | None, scale: float | None) -> str:
    """Generate, label and write one image; returns a one-line description."""
    kind = SUFFIX_FORMATS.get(output.suffix.lower())
    if kind is None:
        raise ConfigError("--output", None, f"use one of {', '.join(SUFFIX_FORMATS)}", output.name)
    settings = load_settings(settings_path)
    engine_settings = settings.engine
    if scale is not None:
        engine_settings = type(engine_settings).model_validate(
            {**engine_settings.model_dump(), "preview_scale": scale})
    width, height = size_for(fmt, engine_settings.preview_scale)
    request = GenerationRequest(prompt=prompt, width=width, height=height, seed=seed)
    engine = get_engine(engine_settings)
    engine.validate(request)

    with Progress(transient=True) as bars:
        steps = bars.add_task("loading model" if engine.load_count == 0 else "generating",
                              total=request.steps)

        def on_step(step: int, total: int) -> None:
            bars.update(steps, completed=step, total=total, description="generating")

        (result,) = engine.generate([request], on_step=on_step)

    brand = load_brand(brand_path) if brand_path else None
    content_id = hashlib.sha256(result.png).hexdigest()[:12]
    implicit = ImplicitLabel(content_producer=brand.producer.id if brand else "zpipe",
                             produce_id=content_id)
    logo = Path(brand.logo.path).read_bytes() if brand and brand.logo else None
    data, _ = label_image(result.png, brand.label if brand else LabelSpec(), logo,
                          brand.logo if brand else None, implicit, OutputSpec(format=kind),
                          {"seed": str(seed), "model": f"{result.model_id}@{result.revision}",
                           "prompt": prompt, "contentId": content_id}, content_id=content_id)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(output)  # never leave a half-written image behind
    return f"{width}x{height}, seed {seed}, {result.model_id}@{result.revision}, {len(data)} bytes"
