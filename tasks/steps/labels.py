"""Label steps."""

from __future__ import annotations

from prefect import task

from tasks.labels.watermark import ImplicitLabel, LabelPlacement, LabelSpec, LogoSpec, OutputSpec, label_image
from tasks.steps.policies import NEVER_CACHE


@task(name="label-image", cache_policy=NEVER_CACHE, timeout_seconds=120)
def label_task(
    png: bytes,
    label: LabelSpec,
    logo_bytes: bytes | None,
    logo_spec: LogoSpec | None,
    implicit: ImplicitLabel,
    output: OutputSpec,
    extra: dict[str, str] | None = None,
) -> tuple[bytes, LabelPlacement]:
    """Label one image (visible label, logo, TC260 XMP) and return the bytes to upload."""
    return label_image(png, label, logo_bytes, logo_spec, implicit, output, extra)
