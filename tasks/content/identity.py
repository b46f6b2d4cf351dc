"""The one identity recipe: what an image is, as a content id, and where it is stored.

A content id hashes every input that changes an image's pixels or labels, so the same inputs
give the same id (and key) in any run, and a rerun finds its images already stored. Campaign
images (tasks.content.plan) and comment replies (tasks.comments.reply) build their ids here,
from the same base fields; each adds the fields only it has (a campaign its brand fingerprint
and overlay, a reply its comment, label and LoRAs). Changing a field changes every key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from zengine import GenerationRequest

# The engine's own default is the Turbo step count (8 = 8 transformer forwards in diffusers
# 0.42.1): one fact, zengine's, recorded in every job and hashed into every content id.
TURBO_STEPS: int = next(f.default for f in dataclasses.fields(GenerationRequest) if f.name == "steps")

CONTENT_ID_CHARS = 12  # 48 bits: the invisible watermark carries exactly this id


def image_fields(*, prompt: Any, seed: int, size: tuple[int, int], model: str, revision: str,
                 output: dict[str, Any]) -> dict[str, Any]:
    """The fields every image's id is made of: rendered prompt, seed, size, steps, model, output."""
    return {"prompt": prompt.text, "template": prompt.template, "version": prompt.version,
            "seed": seed, "size": [size[0], size[1]], "steps": TURBO_STEPS, "model": model,
            "revision": revision, "output": output}


def content_id(fields: dict[str, Any]) -> str:
    """12 hex chars of the SHA-256 of the fields as canonical JSON (sorted keys, UTF-8)."""
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:CONTENT_ID_CHARS]


def campaign_key(*, prefix: str, brand: str, campaign: str, week: str, weekday: str, fmt: str,
                 variant: int, content: str, ext: str, sku: str | None = None) -> str:
    """`[pending/]<brand>/<campaign>/<week>/<weekday>/[<sku>-]<W>x<H>-v<n>-<id>.<ext>` (a
    catalogue image is named by its SKU id, never its row, so reordering rows keeps keys)."""
    slot = f"{fmt.replace(':', 'x')}-v{variant}"
    if sku is not None:
        slot = f"{sku}-{slot}"
    return f"{prefix}{brand}/{campaign}/{week}/{weekday}/{slot}-{content}.{ext}"


def reply_key(*, brand: str, campaign: str, day: str, comment_id: str, content: str, ext: str) -> str:
    """`<brand>/comments/<received day>/<comment id>-<id>.<ext>`."""
    return f"{brand}/{campaign}/{day}/{comment_id}-{content}.{ext}"
