"""A catalogue as a campaign's input: rows -> SKU images with stable keys, bad rows reported."""

from __future__ import annotations

import io
import json
import shutil
import threading
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.cli.preview import preview_week
from tasks.config.schema import EngineSettings, load_campaign
from tasks.content.plan import brand_fingerprint, plan_week_slots
from zengine.product import product_layer, product_mask

REPO = Path(__file__).resolve().parents[2]
ENGINE = EngineSettings(preview_scale=0.25)
HEADER = "sku,name_zh,name_en,colour,image,copy_zh,copy_en,finish\n"
ROWS = {
    "R01": "R01,经典正红,Classic Red,R01,R01.png,一抹正红,True red,matte\n",
    "P02": "P02,豆沙玫瑰,Dusty Rose,P02,P02.png,温柔豆沙,Soft rose,satin\n",
    "N03": "N03,焦糖裸色,Caramel Nude,N03,N03.png,日常裸色,Everyday nude,cream\n",
}


def _tree(tmp_path: Path, catalogue: str, name: str = "shades.csv", extra: str = "") -> Path:
    """A copy of the demo's config tree with this catalogue; returns the campaign file."""
    root = tmp_path / "configs"
    shutil.copytree(REPO / "configs", root, ignore=shutil.ignore_patterns("*.md"))
    for png in (root / "products/lipstick").glob("*.png"):
        shutil.copy(png, root / "catalogues" / png.name)
    (root / "catalogues" / name).write_text(catalogue, encoding="utf-8")
    campaign = root / "campaigns/lipstick-demo.yaml"
    text = campaign.read_text(encoding="utf-8").replace("../catalogues/lipstick-shades.csv",
                                                         f"../catalogues/{name}")
    campaign.write_text(text + extra, encoding="utf-8")
    return campaign


def _plan(campaign: Path):
    bundle = load_campaign(campaign)
    return plan_week_slots(bundle, "2026-W48", date(2026, 11, 23), [], ENGINE, brand_fingerprint(bundle))


def test_keys_follow_the_sku_not_the_row(tmp_path: Path) -> None:
    first = _plan(_tree(tmp_path / "a", HEADER + ROWS["R01"] + ROWS["P02"]))
    keys = {job.sku: job.key for job in first.jobs}
    assert set(keys) == {"R01", "P02"} and not first.catalogue_problems
    assert keys["R01"].startswith("lipstick-demo/lipstick-demo/2026-W48/mon/R01-9x16-v1-")
    # reordered, and a row added in front: the two SKUs keep their keys and seeds
    again = _plan(_tree(tmp_path / "b", HEADER + ROWS["N03"] + ROWS["P02"] + ROWS["R01"]))
    assert {job.sku: job.key for job in again.jobs if job.sku != "N03"} == keys
    assert {j.sku: j.seed for j in first.jobs}.items() <= {j.sku: j.seed for j in again.jobs}.items()
    r01 = next(job for job in again.jobs if job.sku == "R01")
    assert "经典正红" in r01.prompt.text and "matte true red" in r01.prompt.text  # mapped colour
    assert "matte finish" in r01.prompt.text  # an extra column is a template variable
    assert r01.overlay_lines == ["一抹正红", "True red"]  # the row's copy, typeset
    assert r01.product.declared == "R01.png" and r01.product.sha256


def test_a_bad_row_is_reported_and_the_others_run(tmp_path: Path) -> None:
    rows = (HEADER + ROWS["R01"]
            + "X09,无名,Nameless,Z99,P02.png,,,\n"         # colour code not in mappings
            + "P02,豆沙玫瑰,Dusty Rose,P02,missing.png,,,\n"  # no such cutout
            + "R01,重复,Again,R01,R01.png,,,\n"              # id used twice
            + "N 03,空格,Space,N03,N03.png,,,\n"             # not key-safe
            + ROWS["N03"])
    plan = _plan(_tree(tmp_path, rows))
    assert sorted(job.sku for job in plan.jobs) == ["N03", "R01"]
    problems = [str(p) for p in plan.catalogue_problems]
    assert len(problems) == 4
    assert problems[0].endswith("shades.csv: row 2 (sku X09), column 'colour': not a code in the "
                                "brand's mappings.colours; known: R01, P02, N03, B04 (got 'Z99')")
    assert "row 3 (sku P02), column 'image': Product image not found" in problems[1]
    assert "row 4 (sku R01), column 'sku': repeats the SKU id of row 1" in problems[2]
    assert "row 5 (sku N 03), column 'sku': a SKU id is 1-63 ASCII letters" in problems[3]
    # the preview shows the same
    shown = preview_week(tmp_path / "configs/campaigns/lipstick-demo.yaml", "2026-W48")
    assert [row["sku"] for row in shown["images"]] == ["N03", "R01"]
    assert shown["catalogue_problems"] == problems
    assert shown["images"][1]["product"]["image"] == "R01.png"


JSON_MAPPING = """
  mapping:
    items: data.skus
    sku: id
    name_zh: title.zh
    name_en: title.en
    colour: shade
    image: cutout
    vars: {finish: attrs.finish}
"""
DOCUMENT = {"data": {"skus": [
    {"id": "B04", "title": {"zh": "丝绒莓果", "en": "Velvet Berry"}, "shade": "B04",
     "cutout": "B04.png", "attrs": {"finish": "velvet"}},
    {"id": "R01", "title": {"zh": "经典正红", "en": "Classic Red"}, "shade": "R01",
     "cutout": "R01.png", "attrs": {"finish": "matte"}}]}}


def _with_mapping(campaign: Path, url: str | None = None) -> None:
    text = campaign.read_text(encoding="utf-8")
    if url is not None:
        text = text.replace("url: ../catalogues/shades.json", f"url: {url}\n  images: ../catalogues")
    campaign.write_text(text.replace("catalogue:                      # one image",
                                     "catalogue:" + JSON_MAPPING.rstrip() + "\n  # one image"), "utf-8")


def test_json_file_with_a_jmespath_mapping(tmp_path: Path) -> None:
    campaign = _tree(tmp_path, json.dumps(DOCUMENT, ensure_ascii=False), "shades.json")
    _with_mapping(campaign)
    plan = _plan(campaign)
    assert [job.sku for job in plan.jobs] == ["B04", "R01"]  # by id, whatever the order
    assert "velvet finish" in plan.jobs[0].prompt.text and "丝绒莓果" in plan.jobs[0].prompt.text


def test_http_json_catalogue(tmp_path: Path) -> None:
    body = json.dumps(DOCUMENT, ensure_ascii=False).encode()
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        campaign = _tree(tmp_path, "{}", "shades.json")
        _with_mapping(campaign, f"http://127.0.0.1:{server.server_address[1]}/skus.json")
        plan = _plan(campaign)
    finally:
        server.shutdown()
    assert hits == ["/skus.json"]
    assert [job.sku for job in plan.jobs] == ["B04", "R01"]
    assert plan.jobs[1].product.declared == "R01.png"


def test_unreadable_catalogue_says_what_to_fix(tmp_path: Path) -> None:
    from tasks.core.errors import SourceError

    with pytest.raises(SourceError, match=r"no 'sku' column .* add the SKU id column"):
        _plan(_tree(tmp_path, "id,name\nR01,Red\n"))


@pytest.mark.slow
def test_lipstick_demo_end_to_end(prefect_api, zpipe_cache, tmp_path: Path) -> None:
    from flows.campaign import weekly_campaign
    from tasks.store.objects import LocalStore

    summary = weekly_campaign(campaign=str(REPO / "configs/campaigns/lipstick-demo.yaml"),
                              week="2026-W48", store=f"file://{tmp_path / 'out'}", engine=ENGINE)
    assert summary.planned == 4 and len(summary.created) == 4 and not summary.failed
    assert not summary.catalogue_problems
    store = LocalStore(tmp_path / "out")
    for key in summary.created:
        sidecar = json.loads(store.get(f"{key}.json"))
        product = sidecar["product"]
        assert sidecar["sku"] in key and product["image"].endswith(f"{sidecar['sku']}.png")
        width, height = sidecar["size"]["width"], sidecar["size"]["height"]
        from zengine.product import ProductPlacement

        layer = product_layer(ProductPlacement(image=product["path"], box=tuple(product["box"])),
                              width, height)
        inside = product_mask(layer)
        final = np.asarray(Image.open(io.BytesIO(store.get(key))).convert("RGB")).astype(int)
        error = np.abs(final[inside] - np.asarray(layer)[..., :3][inside].astype(int))
        assert error.mean() <= 5.0 and np.percentile(error, 99) <= 32  # JPEG q90 (test_product)
