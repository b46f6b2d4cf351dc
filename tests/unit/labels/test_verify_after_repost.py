"""The issue's proof: an image downloaded from the store, re-encoded as JPEG q70 and resized,
still tells `zpipe verify` its content id and the object key it came from."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from flows.cli.app import app
from tasks.labels.watermark import ImplicitLabel, LabelSpec, OutputSpec, label_image
from tasks.store.objects import LocalStore

CONTENT_ID = "3f0c2a9b1d4e"
KEY = f"demo/weekly-demo/2026-W48/mon/9x16-v1-{CONTENT_ID}.jpg"


def _poster(width: int, height: int) -> bytes:
    rng = np.random.default_rng(7)
    low = Image.fromarray((rng.random((height // 32, width // 32, 3)) * 255).astype("uint8"))
    buf = io.BytesIO()
    low.resize((width, height), Image.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


def test_verify_reads_the_content_id_after_reencode_and_resize(tmp_path: Path) -> None:
    data, _ = label_image(_poster(720, 1280), LabelSpec(), None, None,
                          ImplicitLabel(content_producer="91310000DEMO00001X", produce_id=CONTENT_ID),
                          OutputSpec(format="jpeg", quality=90), {"contentId": CONTENT_ID},
                          content_id=CONTENT_ID)
    store = LocalStore(tmp_path / "store")
    store.put(KEY, data, "image/jpeg")
    store.put(f"{KEY}.json", json.dumps({"key": KEY, "content_id": CONTENT_ID}).encode(),
              "application/json")

    # what a platform does: download, resize to 75 %, re-encode as JPEG quality 70
    downloaded = Image.open(io.BytesIO(store.get(KEY))).convert("RGB")
    reposted = tmp_path / "reposted.jpg"
    downloaded.resize((540, 960), Image.BICUBIC).save(reposted, format="JPEG", quality=70)

    result = CliRunner().invoke(app, ["verify", str(reposted), "--json",
                                      "--store", f"file://{tmp_path / 'store'}"])
    report = json.loads(result.stdout)
    assert report["watermark"]["found"] is True
    assert report["watermark"]["content_id"] == CONTENT_ID
    assert report["watermark"]["key"] == KEY
    # the re-encode dropped the XMP: verify says so and fails (exit 1), naming the check
    assert report["implicit"]["status"] == "fail"
    assert "stripped of metadata" in " ".join(report["implicit"]["messages"])
    assert result.exit_code == 1
