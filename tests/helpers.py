"""Assertions a user would make about a finished campaign in a store."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tasks.labels.watermark import read_labels
from tasks.store.objects import ObjectStore
from zengine import GenerationResult

TC260_KEYS = {"Label", "ContentProducer", "ProduceID", "ReservedCode1", "ContentPropagator",
              "PropagateID", "ReservedCode2"}
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


def assert_visible_label(image: Image.Image, explicit: dict) -> None:
    """The explicit label is drawn where the sidecar says: light text on a dark plate, >= 5%."""
    assert explicit["text_height_px"] >= explicit["min_required_px"]
    assert explicit["min_required_px"] >= 0.05 * min(image.size)
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    x0, y0, x1, y1 = explicit["bbox"]
    tx0, ty0, tx1, ty1 = explicit["text_bbox"]
    w, h = image.size
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, explicit
    text = gray[ty0:ty1, tx0:tx1]
    plate = gray[y0:y1, x0:x1]
    assert (text > 200).mean() > 0.05, "no light text pixels inside the label's text box"
    assert np.median(plate) < 110, "the label plate is not dark"
    # the label sits at an edge/corner: it touches the outer margin band of the image
    near_edge = min(x0, y0, w - x1, h - y1) <= 0.06 * min(w, h)
    assert near_edge, explicit


def check_campaign_objects(store: ObjectStore, expected_images: int) -> list[dict]:
    """Every image has a sidecar, the visible label and the implicit XMP label; returns sidecars."""
    keys = [k for k in store.list() if not k.startswith("_")]  # _trends/, _comments/: records
    sidecar_keys = [k for k in keys if k.endswith(".json")]
    image_keys = [k for k in keys if not k.endswith(".json")]
    assert len(image_keys) == expected_images, keys
    assert sorted(sidecar_keys) == sorted(f"{k}.json" for k in image_keys)
    sidecars = []
    for key in image_keys:
        data = store.get(key)
        sidecar = json.loads(store.get(f"{key}.json"))
        sidecars.append(sidecar)
        image = Image.open(io.BytesIO(data))
        assert image.size == (sidecar["size"]["width"], sidecar["size"]["height"])
        assert sidecar["key"] == key
        assert sidecar["output"]["bytes"] == len(data)
        labels = read_labels(data)
        assert set(labels["aigc"]) == TC260_KEYS
        assert labels["aigc"]["Label"] == "1"
        assert labels["aigc"]["ProduceID"] == sidecar["content_id"]
        assert labels["digital_source_type"] == TRAINED
        assert labels["zpipe"]["seed"] == str(sidecar["seed"])
        assert_visible_label(image.convert("RGB"), sidecar["labels"]["explicit"])
        assert sidecar["prompt"] and sidecar["template"]["version"]
        assert sidecar["model"]["id"] and sidecar["model"]["revision"]
    return sidecars


def noise_result(job) -> GenerationResult:
    """A stand-in generated image for a job (seeded noise at its size), for labelling tests."""
    noise = np.random.default_rng(job.seed).integers(60, 200, (job.height, job.width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    return GenerationResult(png=buffer.getvalue(), prompt=job.prompt.text, seed=job.seed, steps=8,
                            guidance_scale=0.0, width=job.width, height=job.height, model_id="tiny",
                            revision="r")


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.3) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)
