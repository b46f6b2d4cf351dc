"""The week's contact sheet (tasks.publish.contact_sheet): its HTML, its links, and a real browser on it.

Images are really labelled and stored (publish_batch, QA gate off for speed) in a LocalStore or
a real SeaweedFS S3 store; the browser is Debian's `chromium`, headless, offline.
"""

from __future__ import annotations

import html
import json
import posixpath
import re
import shutil
import subprocess
from datetime import date, datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest
from markupsafe import escape

from tasks.config.schema import DayTheme, EngineSettings, load_campaign
from tasks.content.plan import ImageJob, brand_fingerprint, plan_week
from tasks.publish.batch import publish_batch
from tasks.publish.contact_sheet import (
    SHEETS,
    build_contact_sheet,
    gallery_markdown,
    relative_href,
    sheet_key,
    write_sheet,
)
from tasks.publish.review import apply_decision
from tasks.qa import QASettings
from tasks.store.keys import PENDING, held_key
from tasks.store.objects import LocalStore, ObjectStore, S3Store
from tasks.store.spool import Spool
from tasks.trends.sources import Trend
from tests.conftest import REPO
from tests.helpers import noise_result

DEMO = REPO / "configs/campaigns/weekly-demo.yaml"
WEEK, MONDAY = "2026-W48", date(2026, 11, 23)
HOSTILE_THEME = DayTheme(zh="<script>alert('zh')</script>周一",
                         en='"><img src=x onerror=alert(1)> & </td></table>')
HOSTILE_TREND = "<b>爆款</b> | ![x](javascript:alert(1)) </th>"
NO_QA = QASettings(enabled=False)  # the gate's OCR costs seconds per image; not what is tested


@pytest.fixture(scope="module")
def demo():
    """The demo week with a hostile Monday theme and trend: (bundle, themes, jobs)."""
    bundle = load_campaign(DEMO)
    days = {**bundle.campaign.days, "mon": HOSTILE_THEME}
    bundle = bundle.model_copy(update={"campaign": bundle.campaign.model_copy(update={"days": days})})
    trends = [Trend(title=HOSTILE_TREND, source="test", rank=1),
              Trend(title="秋冬围巾穿搭", source="test", rank=2)]
    engine = EngineSettings(model="tiny", preview_scale=0.25)
    jobs = plan_week(bundle, WEEK, MONDAY, trends, engine, brand_fingerprint(bundle))
    gated = plan_week(bundle, WEEK, MONDAY, trends, engine, brand_fingerprint(bundle), PENDING)
    return bundle, days, jobs, gated


def _publish(store: ObjectStore, jobs: list[ImageJob], brand, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", store.describe())
    outcome = publish_batch(store, jobs, [noise_result(job) for job in jobs], brand, spool,
                            patience_s=0, qa=NO_QA)
    assert not outcome.failed, outcome.failed


class _Page(HTMLParser):
    """The tags a reader's browser would load or follow."""

    def __init__(self):
        super().__init__()
        self.imgs: list[dict] = []
        self.links: list[dict] = []
        self.tags: list[str] = []
        self.cells: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(attrs)
        if tag == "a":
            self.links.append(attrs)
        if tag == "td" and attrs.get("id"):
            self.cells.append(attrs["id"])


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def _target(sheet: str, href: str) -> str:
    """The store key a relative link of the sheet at `sheet` points to."""
    return posixpath.normpath(posixpath.join(posixpath.dirname(sheet), unquote(href)))


# --- The HTML --------------------------------------------------------------------------------


def test_every_image_is_on_the_sheet_with_links_that_resolve(demo, tmp_path):
    bundle, themes, jobs, _ = demo
    store = LocalStore(tmp_path / "out")
    _publish(store, jobs[:-1], bundle.brand, tmp_path)  # the last one "failed"
    sheet = build_contact_sheet(store, jobs, themes, failed=[jobs[-1].key])
    assert sheet.key == f"{SHEETS}demo/weekly-demo/{WEEK}/index.html"
    assert sheet.key == sheet_key("demo", "weekly-demo", WEEK)
    page = _parse(sheet.html)

    # every planned slot has its cell, in a grid of days x formats
    assert page.cells == [f"{j.weekday}-{j.format.replace(':', 'x')}-v{j.variant}" for j in jobs]
    assert [s for s in ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun") if f"{s} 2026-11-" in sheet.html]
    assert "<th>1:1 v1</th><th>9:16 v1</th>" in sheet.html
    # every stored image has an embedded thumbnail; the failed one a placeholder
    assert len(page.imgs) == len(jobs) - 1 and all(i["src"].startswith("data:image/jpeg;base64,")
                                                   for i in page.imgs)
    assert [c.status for c in sheet.cells] == ["stored"] * (len(jobs) - 1) + ["failed"]
    assert all(c.labels.explicit_ok and c.labels.xmp and c.labels.watermark and not c.labels.c2pa
               for c in sheet.cells[:-1])
    assert "daily-poster@1.0.0" in sheet.html and f"seed {jobs[0].seed}" in sheet.html
    # every link is relative and resolves to an object in the store: the image or its sidecar
    hrefs = {a["href"] for a in page.links}
    assert len(hrefs) == 2 * (len(jobs) - 1)
    assert not [h for h in hrefs if urlsplit(h).scheme or h.startswith("/")]
    targets = {_target(sheet.key, h) for h in hrefs}
    assert targets == {j.key for j in jobs[:-1]} | {j.sidecar_key for j in jobs[:-1]}
    assert all(store.exists(t) for t in targets)
    # written next to nothing else: the week's folder keeps only images and sidecars
    assert write_sheet(store, sheet) is True
    assert store.get(sheet.key) == sheet.html.encode()
    week = [k for k in store.list("demo/") if not k.endswith(".json")]
    assert len(week) == len(jobs) - 1 and all(k.endswith(".jpg") for k in week)


def test_hostile_theme_and_trend_are_text_and_nothing_loads_from_outside(demo, tmp_path):
    bundle, themes, jobs, _ = demo
    store = LocalStore(tmp_path / "out")
    monday = [j for j in jobs if j.weekday == "mon"]
    _publish(store, monday, bundle.brand, tmp_path)
    sheet = build_contact_sheet(store, monday, themes)
    page = _parse(sheet.html)
    assert "script" not in page.tags and "<script" not in sheet.html
    assert "onerror" not in "".join(str(a) for a in page.imgs)  # no attribute came from the theme
    assert len(page.imgs) == len(monday)  # the theme's <img> is text, not an image
    assert escape(HOSTILE_THEME.zh) in sheet.html and escape(HOSTILE_THEME.en) in sheet.html
    assert escape(HOSTILE_TREND) in sheet.html
    assert page.tags.count("table") == 1 and page.tags.count("td") == len(monday)
    # offline: no external resource of any kind, and a policy that forbids any
    assert "default-src 'none'; img-src data:" in sheet.html
    assert "link" not in page.tags and not re.search(r"(src|href)=\"(https?:)?//", sheet.html)


def test_a_rerun_rewrites_nothing_and_later_images_join_the_sheet(demo, tmp_path):
    bundle, themes, jobs, _ = demo
    store = LocalStore(tmp_path / "out")
    _publish(store, jobs[:4], bundle.brand, tmp_path)  # an earlier run made these
    first = build_contact_sheet(store, jobs, themes)
    assert write_sheet(store, first) is True
    path = tmp_path / "out" / first.key
    stamp = path.stat().st_mtime_ns
    assert write_sheet(store, build_contact_sheet(store, jobs, themes)) is False  # same bytes
    assert path.stat().st_mtime_ns == stamp
    _publish(store, jobs[4:], bundle.brand, tmp_path)  # a later run made the rest
    later = build_contact_sheet(store, jobs, themes)
    assert write_sheet(store, later) is True
    assert len(_parse(store.get(first.key).decode()).imgs) == len(jobs)


def test_a_gated_week_shows_pending_approved_and_held_images_where_they_are(demo, tmp_path):
    bundle, themes, _, gated = demo
    store = LocalStore(tmp_path / "out")
    _publish(store, gated[:6], bundle.brand, tmp_path)
    apply_decision(store, [gated[0].key], None, datetime(2026, 11, 23))  # timed out: rejected
    from tasks.orchestration.approval import ApprovalDecision

    apply_decision(store, [gated[1].key], ApprovalDecision(reviewer="lin"), datetime(2026, 11, 23))
    for suffix in ("", ".json"):  # the QA gate held the third one
        store.put(held_key(gated[2].key) + suffix, store.get(gated[2].key + suffix), overwrite=True)
        store.delete(gated[2].key + suffix)
    sheet = build_contact_sheet(store, gated[:6], themes)
    # not in pending/ (it is not a pending image) and not public: with the other records
    assert sheet.key == sheet_key("demo", "weekly-demo", WEEK)
    assert [(c.place, c.status) for c in sheet.cells[:4]] == [
        ("missing", "not in the store"), ("published", "approved"), ("held", "held by QA"),
        ("pending", "pending review")]
    assert [c.key for c in sheet.cells[1:4]] == [
        "published/" + gated[1].key.removeprefix(PENDING), held_key(gated[2].key), gated[3].key]
    page = _parse(sheet.html)
    assert len(page.imgs) == 5
    assert all(store.exists(_target(sheet.key, a["href"])) for a in page.links)


def test_relative_links_are_percent_encoded():
    assert relative_href("_sheets/b/c/w/index.html", "b/c/w/mon/1x1 #1?.jpg") == \
        "../../../../b/c/w/mon/1x1%20%231%3F.jpg"
    assert relative_href("_sheets/b/c/w/index.html", "pending/b/c/w/mon/海报.jpg") == \
        "../../../../pending/b/c/w/mon/%E6%B5%B7%E6%8A%A5.jpg"


def test_gallery_markdown_is_a_grid_of_thumbnails_with_captions(demo, tmp_path):
    bundle, themes, jobs, _ = demo
    store = LocalStore(tmp_path / "out")
    _publish(store, jobs[:-1], bundle.brand, tmp_path)
    cells = build_contact_sheet(store, jobs, themes, failed=[jobs[-1].key]).cells
    markdown = gallery_markdown(cells, ["# demo"], link=lambda key: f"https://s3.example/{key}?sig=1",
                                run_status={jobs[0].key: "new"})
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    assert rows[0] == "| day | 1:1 v1 | 9:16 v1 |" and len(rows) == 2 + 7
    assert markdown.count("![") == len(jobs) - 1
    assert markdown.count("](data:image/jpeg;base64,") == len(jobs) - 1
    assert markdown.count("[full size](https://s3.example/") == len(jobs) - 1
    assert "new · seed" in rows[2] and "failed · seed" in rows[-1]
    # the hostile trend cannot break the table, nor add an image or a link
    assert all(len(re.split(r"(?<!\\)\|", row)) == 5 for row in rows)  # day + 2 columns
    assert "\\<b\\>爆款\\</b\\> \\| \\!\\[x\\](javascript:alert(1))" in rows[2]



def test_the_ui_gallery_stops_at_its_cap_and_says_where_the_rest_is(demo, tmp_path, monkeypatch):
    import tasks.publish.contact_sheet as sheet_module

    bundle, themes, jobs, _ = demo
    store = LocalStore(tmp_path / "out")
    _publish(store, jobs, bundle.brand, tmp_path)
    cells = build_contact_sheet(store, jobs, themes).cells
    monkeypatch.setattr(sheet_module, "GALLERY_MAX_THUMBNAILS", 6)  # 3 of the 7 days (2 columns)
    markdown = gallery_markdown(cells, [])
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 3 and markdown.count("](data:image/jpeg;base64,") == 6
    assert markdown.splitlines()[-1] == (f"4 more rows ({len(jobs) - 6} images) are on the "
                                         "contact sheet in the store.")

# --- A real S3 store -------------------------------------------------------------------------


@pytest.mark.s3
def test_sheet_on_s3_links_resolve_from_its_presigned_url(demo, tmp_path, s3_server, s3_bucket,
                                                          monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bundle, themes, jobs, _ = demo
    store = S3Store(s3_bucket, prefix="campaigns")
    _publish(store, jobs[:5], bundle.brand, tmp_path)
    sheet = build_contact_sheet(store, jobs[:5], themes)
    assert write_sheet(store, sheet) is True and write_sheet(store, sheet) is False
    raw = s3_server.client().get_object(Bucket=s3_bucket, Key=f"campaigns/{sheet.key}")
    assert raw["ContentType"].startswith("text/html") and raw["Body"].read() == sheet.html.encode()
    # a browser at the presigned URL resolves each relative link to an object of the bucket
    url = store.url(sheet.key)
    page = _parse(sheet.html)
    assert len(page.imgs) == 5 and len(page.links) == 3 * 5  # thumbnail, "image", "sidecar"
    for link in page.links:
        target = urlsplit(urljoin(url, link["href"]))
        assert not target.query  # no signature: it needs a readable bucket, a proxy or a sync
        bucket, _, key = unquote(target.path).lstrip("/").partition("/")
        assert bucket == s3_bucket
        s3_server.client().head_object(Bucket=bucket, Key=key)  # raises if it does not exist
    if _chromium() is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install -y chromium)")
    probe_key = sheet.key.replace("index.html", "probe.html")
    store.put(probe_key, _probe_page(sheet.html).encode(), "text/html", overwrite=True)

    # 1. From a presigned URL of the sheet alone: every thumbnail renders (they are in the page);
    #    the full images do not load, their unsigned URLs are refused by a private bucket
    result = _browser_check(store.url(probe_key), tmp_path)
    assert result["images"] == 5 and result["links"] == 5, result
    assert [b for b in result["broken"] if not b.startswith("full image http")] == [], result
    assert len(result["broken"]) == 5

    # 2. Readers given GetObject (a bucket policy, as for a website or CDN): everything loads
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject"],
        "Resource": [f"arn:aws:s3:::{s3_bucket}/*"]}]}
    s3_server.client().put_bucket_policy(Bucket=s3_bucket, Policy=json.dumps(policy))
    plain = f"{s3_server.endpoint_url}/{s3_bucket}/campaigns/{probe_key}"
    assert _browser_check(plain, tmp_path) == {"images": 5, "links": 5, "broken": []}


# --- A real browser --------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
_PROBE = """<script>
window.addEventListener("load", async () => {
  const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))
    .map(i => "thumbnail " + i.alt);
  const hrefs = [...new Set([...document.querySelectorAll("a.full")].map(a => a.href))];
  const loads = await Promise.all(hrefs.map(href => new Promise(done => {
    const image = new Image();
    image.onload = () => done(image.naturalWidth > 0 ? null : "full image " + href);
    image.onerror = () => done("full image " + href);
    image.src = href;
  })));
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images: document.images.length, links: hrefs.length,
                                    broken: broken.concat(loads.filter(Boolean))});
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _probe_page(sheet_html: str) -> str:
    """The sheet plus a script that reports every image that did not render (the sheet's own
    policy forbids scripts, so the probe copy drops it; nothing else changes)."""
    page = re.sub(r"<meta http-equiv=\"Content-Security-Policy\"[^>]*>", "", sheet_html)
    assert page != sheet_html
    return page.replace("</body>", _PROBE + "</body>")


def _browser_check(url: str, tmp_path: Path) -> dict:
    """Open `url` in headless chromium; the probe's report: images, links, broken."""
    binary = _chromium()
    if binary is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install -y chromium)")
    profile = tmp_path / f"chromium-{len(list(tmp_path.glob('chromium-*')))}"
    profile.mkdir()
    done = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000",
         "--dump-dom", url], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe never reported (rc {done.returncode}):\n{done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def test_a_browser_renders_every_image_of_the_sheet(demo, tmp_path):
    if _chromium() is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install -y chromium)")
    bundle, themes, jobs, _ = demo
    root = tmp_path / "out"
    store = LocalStore(root)
    _publish(store, jobs, bundle.brand, tmp_path)
    sheet = build_contact_sheet(store, jobs, themes)
    write_sheet(store, sheet)
    probe = root / sheet.key.replace("index.html", "probe.html")
    probe.write_text(_probe_page(sheet.html), encoding="utf-8")
    result = _browser_check(probe.as_uri(), tmp_path)
    assert result == {"images": len(jobs), "links": len(jobs), "broken": []}

    # the check can fail: a corrupt thumbnail and a full image gone are both reported
    first = re.search(r'src="data:image/jpeg;base64,([^"]{40})', sheet.html).group(1)
    probe.write_text(_probe_page(sheet.html.replace(first, "A" * 40, 1)), encoding="utf-8")
    store.delete(jobs[-1].key)
    result = _browser_check(probe.as_uri(), tmp_path)
    assert result["images"] == len(jobs) and len(result["broken"]) == 2, result
    assert result["broken"][0] == f"thumbnail {jobs[0].label}"
    assert result["broken"][1].startswith("full image file://") and \
        result["broken"][1].endswith(jobs[-1].key.rsplit("/", 1)[1])
