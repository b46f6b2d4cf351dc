"""The week's contact sheet: one self-contained HTML page with every image of a campaign week.

Rebuilt from the store after every run, so it covers images earlier runs made, and shows where
each image is now: at its key, waiting for review under `pending/`, approved to `published/`,
held by the QA gate under `held/`, or not in the store (failed).

The page needs nothing but itself: inline CSS, no script (a Content-Security-Policy forbids any),
thumbnails embedded as `data:` JPEGs. It therefore renders from a local folder, from an `aws s3
sync` copy, and from a presigned S3 URL of the sheet alone. Its links to each full image and
sidecar are relative to the sheet's own key: they resolve wherever the store's tree is served
as it is (a local folder, a synced copy, an S3 website endpoint or an authenticating proxy).

The sheet lives at `_sheets/<brand>/<campaign>/<week>/index.html`, with the other records under
`_`: never in the week's folder, whose every non-JSON object is an image with a sidecar, and
never under a public prefix, since a gated week's sheet shows images no reviewer approved yet.

No Prefect here: the flow's step (flows/campaign.py) calls `build_contact_sheet` and
`write_sheet`; `gallery_markdown` gives the Prefect UI's gallery artifact from the same cells.
"""

from __future__ import annotations

import base64
import io
import json
import posixpath
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Literal
from urllib.parse import quote

from jinja2 import Environment
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict

from tasks.config.schema import BilingualText
from tasks.content.plan import ImageJob
from tasks.core.errors import StoreError
from tasks.store.keys import PENDING, PUBLISHED, SHEETS, held_key
from tasks.store.objects import ObjectStore

SHEET_NAME = "index.html"
READ_THREADS = 8  # images and sidecars read back from the store at once
THUMB_PX = 192  # long side: a week of 7 days x 6 formats fits a laptop screen, ~5-12 KB each
THUMB_QUALITY = 70  # JPEG: enough to judge composition and colour; the link has the detail
GALLERY_THUMB_PX = 128  # the Prefect UI gallery: smaller, it sits in a narrow artifact pane
# Thumbnails in the UI gallery at most (whole rows; a week of 7 days x 6 formats x 4 variants
# is 168): a 1,000-image catalogue week made an 8.5 MB artifact and 1.2 s of the flow's CPU at
# its end. The contact sheet in the store always shows every image.
GALLERY_MAX_THUMBNAILS = 200

Place = Literal["stored", "pending", "published", "held", "missing"]
STATUS: dict[Place, str] = {  # what each place means to a reader of the sheet
    "stored": "stored", "pending": "pending review", "published": "approved",
    "held": "held by QA", "missing": "not in the store",
}


class LabelStatus(BaseModel):
    """The labels an image carries, as its sidecar records them."""

    model_config = ConfigDict(extra="forbid")

    explicit: str | None  # the visible label's text (None: the sidecar records none)
    explicit_ok: bool  # drawn at least as tall as the 5% rule asks
    xmp: bool  # the implicit TC260:AIGC label in the file's XMP, Label = "1"
    watermark: bool  # the invisible watermark step ran
    c2pa: bool  # signed Content Credentials
    qa: str | None = None  # the QA gate's decision (None: the gate was off)

    def badges(self) -> list[tuple[str, str]]:
        """(text, tone) per label: the two the law asks for and the watermark are `yes` or `no`;
        C2PA is optional (signed only where a signing key is configured): `yes` or `off`."""
        marks = [("label", self.explicit_ok), ("XMP", self.xmp), ("watermark", self.watermark)]
        return [(f"{name} {'✓' if ok else '✗'}", "yes" if ok else "no") for name, ok in marks] + [
            ("C2PA ✓", "yes") if self.c2pa else ("C2PA –", "off")]


class StoredLook(BaseModel):
    """One stored image as read back from the store: its labels and a thumbnail, or why not."""

    model_config = ConfigDict(extra="forbid")

    labels: LabelStatus | None = None
    thumbnail: bytes | None = None  # a small JPEG
    problem: str | None = None


def look_at(store: ObjectStore, key: str) -> StoredLook:
    """Read an image and its sidecar back from the store (two round trips, one thumbnail)."""
    try:
        return StoredLook(labels=label_status(json.loads(store.get(f"{key}.json"))),
                          thumbnail=make_thumbnail(store.get(key)))
    except (StoreError, ValueError, OSError, UnidentifiedImageError) as exc:
        # moved or deleted meanwhile, a corrupt sidecar or image: show it, keep going
        return StoredLook(problem=f"{type(exc).__name__}: {exc}"[:300])


class SheetCell(BaseModel):
    """One image of the week as the sheet shows it."""

    model_config = ConfigDict(extra="forbid")

    job: ImageJob
    place: Place
    key: str | None  # where the image is now (None: not in the store)
    status: str  # STATUS[place], or "failed" for an image this run failed to publish
    labels: LabelStatus | None = None
    thumbnail: bytes | None = None  # a small JPEG
    problem: str | None = None  # why an image in the store has no thumbnail or labels

    @property
    def sidecar_key(self) -> str | None:
        return None if self.key is None else f"{self.key}.json"


class ContactSheet(BaseModel):
    """The rendered page, where it goes, and the cells it shows."""

    model_config = ConfigDict(extra="forbid")

    key: str
    html: str
    cells: list[SheetCell]


def sheet_key(brand: str, campaign: str, week: str) -> str:
    """Where a week's sheet lives: `_sheets/<brand>/<campaign>/<week>/index.html`."""
    return f"{SHEETS}{brand}/{campaign}/{week}/{SHEET_NAME}"


def relative_href(from_key: str, to_key: str) -> str:
    """A percent-encoded link from the object `from_key` to `to_key`, relative to its folder."""
    return quote(posixpath.relpath(to_key, posixpath.dirname(from_key) or "."), safe="/")


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


# --- 1. Where each image is ------------------------------------------------------------------


def _week_prefixes(jobs: list[ImageJob]) -> list[str]:
    """The folders to list for these jobs: their shared folder, its `held/` twin and, for a
    gated week, its `published/` twin (one listing each, as `find_missing` does)."""
    if not jobs:
        return []
    folder = posixpath.commonpath([job.key.rpartition("/")[0] for job in jobs])
    prefix = f"{folder}/" if folder else ""
    prefixes = [prefix, held_key(prefix)]
    if prefix.startswith(PENDING):
        prefixes.append(PUBLISHED + prefix.removeprefix(PENDING))
    return prefixes


def locate(job: ImageJob, present: set[str]) -> tuple[Place, str | None]:
    """Where the image of `job` is, given the keys in the store (a sidecar marks it whole)."""
    candidates: list[tuple[Place, str]] = [
        ("pending" if job.key.startswith(PENDING) else "stored", job.key),
        ("held", held_key(job.key))]
    if job.key.startswith(PENDING):
        candidates.insert(1, ("published", PUBLISHED + job.key.removeprefix(PENDING)))
    for place, key in candidates:
        if f"{key}.json" in present:
            return place, key
    return "missing", None


# --- 2. What each image carries --------------------------------------------------------------


def label_status(sidecar: dict) -> LabelStatus:
    """Read the labels from a sidecar (tasks.publish.batch.build_sidecar)."""
    labels = sidecar.get("labels") or {}
    explicit = labels.get("explicit") or {}
    implicit = labels.get("implicit") or {}
    height, required = explicit.get("text_height_px"), explicit.get("min_required_px")
    watermark = sidecar.get("watermark")  # a record of its own if one is added; else the step's timing
    if watermark is None:
        watermark = "post_watermark_s" in (sidecar.get("timings") or {})
    return LabelStatus(
        explicit=explicit.get("text"),
        explicit_ok=bool(explicit.get("text")) and isinstance(height, int)
        and isinstance(required, int) and height >= required,
        xmp=implicit.get("xmp_property") == "TC260:AIGC"
        and (implicit.get("tc260") or {}).get("Label") == "1",
        watermark=bool(watermark),
        c2pa=bool((sidecar.get("c2pa") or {}).get("signed")),
        qa=(sidecar.get("qa") or {}).get("decision"))


def make_thumbnail(data: bytes, px: int = THUMB_PX) -> bytes:
    """A JPEG at most `px` on its long side (raises OSError/UnidentifiedImageError if unreadable)."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (px, px))  # JPEG: decode at 1/2..1/8 scale, far faster than full size
        small = image.convert("RGB")
        small.thumbnail((px, px), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=THUMB_QUALITY, optimize=True)
    return out.getvalue()


def collect_cells(store: ObjectStore, jobs: list[ImageJob], failed: Iterable[str] = (),
                  looked: Mapping[str, StoredLook] | None = None) -> list[SheetCell]:
    """Every job of the week with its place, labels and thumbnail, read from the store.

    `failed`: keys this run failed to publish (shown as failed rather than missing).
    `looked`: images already read back from the store by key (resident workers read back
    what they publish, right after the upload); the others are read here.
    """
    present: set[str] = set()
    for prefix in _week_prefixes(jobs):
        present.update(store.list(prefix))
    failed = set(failed)
    looked = looked or {}
    cells = []
    for job in jobs:
        place, key = locate(job, present)
        status = "failed" if place == "missing" and job.key in failed else STATUS[place]
        cells.append(SheetCell(job=job, place=place, key=key, status=status))
    unread = [cell for cell in cells if cell.key is not None and cell.key not in looked]
    # two round trips per image: one after another they took ~30 s for a 1,000-image week
    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="contact-sheet") as pool:
        looks = dict(zip([cell.key for cell in unread],
                         pool.map(lambda cell: look_at(store, cell.key), unread), strict=True))
    for cell in cells:
        if cell.key is not None:
            look = looked.get(cell.key) or looks[cell.key]
            cell.labels, cell.thumbnail, cell.problem = look.labels, look.thumbnail, look.problem
    return cells


# --- 3. The page -----------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light dark; --line: #8884; --ok: #1a7f37; --no: #b42318; --wait: #9a6700; }
body { font: 14px/1.4 system-ui, "PingFang SC", "Noto Sans CJK SC", "WenQuanYi Micro Hei",
       sans-serif; margin: 16px; }
h1 { font-size: 20px; margin: 0 0 4px; } header p { margin: 2px 0; color: #666; }
table { border-collapse: collapse; margin-top: 12px; }
th, td { border: 1px solid var(--line); padding: 6px; vertical-align: top; text-align: left; }
thead th { position: sticky; top: 0; background: Canvas; }
th.day { width: 14em; font-weight: normal; }
.weekday { font-weight: 600; } .theme, .trend, .festival { font-size: 12px; margin-top: 3px; }
.trend, .festival { color: #666; }
td.cell { width: 200px; } td.cell img { display: block; max-width: 192px; height: auto;
  background: #8882; }
.caption { font-size: 12px; margin-top: 4px; overflow-wrap: anywhere; }
.badge { display: inline-block; font-size: 11px; padding: 0 4px; margin: 2px 2px 0 0;
  border-radius: 3px; border: 1px solid currentColor; }
.yes { color: var(--ok); } .no { color: var(--no); } .wait { color: var(--wait); }
.off { color: #888; }
.placeholder { width: 192px; height: 96px; display: flex; align-items: center;
  justify-content: center; background: #8882; color: var(--no); font-size: 12px; }
.empty { color: #999; font-size: 12px; }
"""

_PAGE = """<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{{ css }}</style>
</head>
<body>
<header>
<h1>{{ title }}</h1>
<p>{{ first }} – {{ last }} · {{ cells|length }} images: {{ counts }}</p>
<p>Thumbnails open the full image; each image's sidecar holds its prompt, seed and labels.</p>
</header>
<table>
<thead><tr><th>day</th>{% for column in columns %}<th>{{ column }}</th>{% endfor %}</tr></thead>
<tbody>
{% for day in days -%}
<tr>
<th scope="row" class="day"><div class="weekday">{{ day.name }} {{ day.date }}</div>
{%- if day.theme %}
<div class="theme">{{ day.theme.zh }}
{%- if day.theme.en != day.theme.zh %}<br>{{ day.theme.en }}{% endif %}</div>
{%- endif %}
{%- if day.trend %}
<div class="trend">trend: {{ day.trend }}</div>
{%- endif %}
{%- for festival in day.festivals %}
<div class="festival">{{ festival }}</div>
{%- endfor %}</th>
{% for cell in day.cells -%}
{% if cell is none -%}
<td class="cell empty">no image planned</td>
{% else -%}
<td class="cell {{ cell.place }}" id="{{ cell.anchor }}">
{%- if cell.thumb %}
<a class="full" href="{{ cell.href }}"><img src="{{ cell.thumb }}" alt="{{ cell.label }}"
 width="{{ cell.width }}" height="{{ cell.height }}"></a>
{%- else %}
<div class="placeholder">{{ cell.status }}</div>
{%- endif %}
<div class="caption"><b>{{ cell.label }}</b> · {{ cell.template }} · seed {{ cell.seed }}</div>
{%- if cell.extra %}
<div class="caption">{{ cell.extra }}</div>
{%- endif %}
<div><span class="badge {{ cell.tone }}">{{ cell.status }}</span>
{%- for text, tone in cell.badges %}
<span class="badge {{ tone }}">{{ text }}</span>
{%- endfor %}
{%- if cell.qa %}
<span class="badge">QA {{ cell.qa }}</span>
{%- endif %}</div>
{%- if cell.problem %}
<div class="caption no">{{ cell.problem }}</div>
{%- endif %}
{%- if cell.href %}
<div class="caption"><a class="full" href="{{ cell.href }}">image</a> ·
 <a class="sidecar" href="{{ cell.sidecar_href }}">sidecar</a></div>
{%- endif %}
</td>
{% endif -%}
{% endfor -%}
</tr>
{% endfor -%}
</tbody>
</table>
</body>
</html>
"""

_TONE = {"stored": "yes", "published": "yes", "pending": "wait", "held": "wait", "missing": "no"}


def _columns(jobs: list[ImageJob]) -> list[tuple[str, int]]:
    """(format, variant) in plan order: the grid's columns."""
    return list(dict.fromkeys((job.format, job.variant) for job in jobs))


def _cell_view(cell: SheetCell, key: str) -> dict:
    job = cell.job
    view = {
        "place": cell.place, "status": cell.status, "tone": _TONE[cell.place],
        "label": job.label,
        "anchor": f"{job.row.replace(' ', '-')}-{job.format.replace(':', 'x')}-v{job.variant}",
        "template": f"{job.prompt.template}@{job.prompt.version}", "seed": job.seed,
        "extra": " · ".join(filter(None, [
            " / ".join(job.overlay_lines or (job.copy_text or {}).values()),
            ", ".join(f"{axis}: {value.get('en') or value.get('zh')}"
                      for axis, value in job.variant_axes.items()),
            ", ".join(f"rule {name}" for name in job.rules)])),
        "badges": cell.labels.badges() if cell.labels else [],
        "qa": cell.labels.qa if cell.labels else None,
        "problem": cell.problem, "thumb": None, "href": None,
    }
    if cell.key is not None:
        view["href"] = relative_href(key, cell.key)
        view["sidecar_href"] = relative_href(key, f"{cell.key}.json")
    if cell.thumbnail is not None:
        with Image.open(io.BytesIO(cell.thumbnail)) as image:
            view["width"], view["height"] = image.size
        view["thumb"] = data_uri(cell.thumbnail)
    return view


def render_sheet(key: str, cells: list[SheetCell],
                 themes: Mapping[str, BilingualText] | None = None) -> str:
    """The HTML page of `cells` (rows: days with theme and trend; columns: format x variant).

    Every text from outside (themes, trends, prompts' copy, problems) is escaped by Jinja2's
    autoescape; links are relative to `key`, the sheet's own key in the store.
    """
    jobs = [cell.job for cell in cells]
    columns = _columns(jobs)
    by_slot = {(c.job.row, c.job.format, c.job.variant): c for c in cells}
    days = []
    for row in dict.fromkeys(job.row for job in jobs):
        day_cells = [by_slot.get((row, fmt, variant)) for fmt, variant in columns]
        first = next(c for c in day_cells if c is not None).job
        days.append({
            "name": row[:1].upper() + row[1:], "date": first.date.isoformat(),
            "theme": (themes or {}).get(first.weekday), "trend": first.trend,
            "festivals": [" / ".join(filter(None, (f.get("zh"), f.get("en")))) for f in first.festivals],
            "cells": [None if c is None else _cell_view(c, key) for c in day_cells]})
    statuses = [cell.status for cell in cells]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses)) or "none"
    first_job = jobs[0] if jobs else None
    title = (f"{first_job.brand} · {first_job.campaign} · {first_job.week}" if first_job
             else key.removeprefix(SHEETS).rpartition("/")[0].replace("/", " · "))
    environment = Environment(autoescape=True, trim_blocks=False)
    return environment.from_string(_PAGE).render(
        title=title, css=_CSS, cells=cells, counts=counts, days=days,
        columns=[f"{fmt} v{variant}" for fmt, variant in columns],
        first=min((j.date for j in jobs), default=""), last=max((j.date for j in jobs), default=""))


def build_contact_sheet(store: ObjectStore, jobs: list[ImageJob],
                        themes: Mapping[str, BilingualText] | None = None,
                        failed: Iterable[str] = (),
                        looked: Mapping[str, StoredLook] | None = None) -> ContactSheet:
    """Collect the week's images from the store and render their sheet (nothing written yet)."""
    if not jobs:
        raise ValueError("a contact sheet needs at least one planned image (got no jobs)")
    first = jobs[0]
    key = sheet_key(first.brand, first.campaign, first.week)
    cells = collect_cells(store, jobs, failed, looked)
    return ContactSheet(key=key, html=render_sheet(key, cells, themes), cells=cells)


def write_sheet(store: ObjectStore, sheet: ContactSheet) -> bool:
    """Store the sheet unless the store already holds these exact bytes; True if written.

    The page holds no timestamp: a rerun that changes nothing in the week rewrites nothing.
    """
    data = sheet.html.encode("utf-8")
    try:
        if store.exists(sheet.key) and store.get(sheet.key) == data:
            return False
    except StoreError:
        pass  # unreadable old sheet (deleted meanwhile): write the new one
    return store.put(sheet.key, data, "text/html; charset=utf-8", overwrite=True)


# --- 4. The Prefect UI gallery ---------------------------------------------------------------


def _md(text: str) -> str:
    """Text safe inside a markdown table cell: no pipes, no markup, no HTML."""
    out = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    for char in "`*_[]<>#!":
        out = out.replace(char, "\\" + char)
    return out


def gallery_markdown(cells: list[SheetCell], heading: list[str],
                     link: Callable[[str], str | None] | None = None,
                     run_status: Mapping[str, str] | None = None) -> str:
    """A markdown table of thumbnails with captions for the Prefect UI (rows days, columns
    format x variant). Thumbnails are embedded `data:` JPEGs, since the UI cannot load `file://`
    images and a presigned URL expires; `link(key)` (e.g. a presigned URL) adds a link to the
    full image. `run_status` (key -> new / already there / ...) replaces the stored place."""
    jobs = [cell.job for cell in cells]
    columns = _columns(jobs)
    by_slot = {(c.job.row, c.job.format, c.job.variant): c for c in cells}
    lines = [*heading, ""] if heading else []
    lines += ["| day | " + " | ".join(f"{f} v{v}" for f, v in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    rows = list(dict.fromkeys(job.row for job in jobs))  # a day, or a day and a SKU
    shown = rows[:max(1, GALLERY_MAX_THUMBNAILS // max(1, len(columns)))]
    firsts = {}
    for cell in cells:
        firsts.setdefault(cell.job.row, cell.job)
    for weekday in shown:
        first = firsts[weekday]
        row = [f"**{weekday}** {first.date.isoformat()[5:]}"
               + (f" · {_md(first.trend)}" if first.trend else "")]
        for fmt, variant in columns:
            cell = by_slot.get((weekday, fmt, variant))
            if cell is None:
                row.append("—")
                continue
            status = (run_status or {}).get(cell.job.key, cell.status)
            parts = []
            if cell.thumbnail is not None:
                small = make_thumbnail(cell.thumbnail, GALLERY_THUMB_PX)
                parts.append(f"![{_md(cell.job.label)}]({data_uri(small)})")
            parts.append(f"{_md(status)} · seed {cell.job.seed}")
            url = link(cell.key) if link is not None and cell.key is not None else None
            if url:
                parts.append(f"[full size]({url})")
            row.append(" ".join(parts))
        lines.append("| " + " | ".join(row) + " |")
    if len(shown) < len(rows):
        on_screen = set(shown)
        left = sum(cell.job.row not in on_screen for cell in cells)
        lines += ["", f"{len(rows) - len(shown)} more rows ({left} images) are on the contact "
                      "sheet in the store."]
    return "\n".join(lines)



def held_markdown(held: list[tuple[str, str, list[str], bytes | None]],
                  link: Callable[[str], str | None] | None = None) -> str:
    """A reviewer's view of what the QA gate held, for the Prefect UI: one row per image
    (thumbnail, held key, where a release publishes it, the gate's reasons). `held` holds
    (held key, public key, reasons, image bytes or None); `link(key)` may add a full-size link."""
    lines = ["| image | held key | a release publishes to | why it was held |",
             "|---|---|---|---|"]
    for key, public_key, reasons, data in held:
        picture = ""
        if data is not None:
            try:
                picture = f"![held]({data_uri(make_thumbnail(data, GALLERY_THUMB_PX))})"
            except (UnidentifiedImageError, OSError):
                picture = "(unreadable image)"
        url = link(key) if link is not None else None
        if url:
            picture += f" [full size]({url})"
        lines.append(f"| {picture or '—'} | `{key}` | `{public_key}` | "
                     f"{_md('; '.join(reasons) or 'no reason recorded')} |")
    return "\n".join(lines)
