"""A catalogue as a campaign's input: one row per SKU, one image per SKU x format x variant.

A campaign's `catalogue:` names a CSV or JSON file, or an HTTP JSON source, read with the same
mapping rules as trend sources (tasks.trends): `mapping.items` is a JMESPath to the list of
rows, every field a JMESPath into one row (for a CSV, the column names). A row gives:

- `sku` (required): the SKU id; keys and seeds derive from it, never from the row's position,
  so reordering or adding rows keeps every other image's key;
- `name` (required): the product name, one text or `name_zh` / `name_en`;
- `colour`: a code in the brand's `mappings.colours` (e.g. R01 -> 哑光正红色 / matte true red);
- `image` / `mask`: the SKU's product cutout (tasks.labels.product), relative to the catalogue file
  (or to `images:`); without one, the brand's `product.image` is used, if any;
- `copy_zh` / `copy_en`: the SKU's copy;
- `day`: the weekday it is posted on (default: the campaign's first day);
- every other column (or `mapping.vars`): a template variable `sku.vars.<name>`.

A bad row is reported (`CatalogueProblem`: row, column, value, fix) and left out; the other
rows run. A catalogue that cannot be read at all (file missing, not JSON, no `sku` column)
raises SourceError.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import jmespath

from tasks.config.catalogue import (
    MAX_ROWS,
    SKU_ID,
    VAR_NAME,
    Catalogue,
    CatalogueProblem,
    CatalogueSource,
    Sku,
)
from tasks.config.schema import COLOUR_TABLE, BrandConfig, CampaignBundle, CampaignConfig
from tasks.core.errors import SourceError
from tasks.prompts.templates import BilingualText
from tasks.trends.sources import JsonMapping, TrendSource, decode_body, fetch
from zengine.product import ProductError, load_product

# -- reading --------------------------------------------------------------------------


def _fetch(source: CatalogueSource) -> tuple[bytes, str | None]:
    """The catalogue's bytes: a file, or a GET with trend sources' retries and limits."""
    if not source.is_http:
        path = Path(source.url)
        if not path.is_file():
            raise SourceError(f"catalogue {source.url}: file not found; fix catalogue.url "
                              "(relative paths resolve against the campaign file's folder)")
        size = path.stat().st_size
        if size > source.max_bytes:
            raise SourceError(f"catalogue {source.url}: {size} bytes, over max_bytes="
                              f"{source.max_bytes}; raise catalogue.max_bytes or split it")
        return path.read_bytes(), None
    http = TrendSource(name=f"catalogue {source.url}", kind="json", url=source.url,
                       mapping=JsonMapping(items=source.mapping.items, title=source.mapping.sku),
                       timeout_s=source.timeout_s, max_bytes=source.max_bytes,
                       retries=source.retries)
    fetched = fetch(http)
    return fetched.body, fetched.content_type


def read_rows(source: CatalogueSource) -> list[dict[str, Any]]:
    """The catalogue's rows as mappings (CSV: column -> text), located by `mapping.items`."""
    data, content_type = _fetch(source)
    text = decode_body(data, f"catalogue {source.url}", content_type).text
    if source.kind == "csv":
        reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
        try:
            reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
            document: Any = [{k: v for k, v in row.items() if k is not None} for row in reader]
        except csv.Error as err:
            raise SourceError(f"catalogue {source.url}: invalid CSV at line {reader.line_num}: "
                              f"{err}") from err
        if source.mapping.sku not in (reader.fieldnames or []) and document:
            raise SourceError(f"catalogue {source.url}: no {source.mapping.sku!r} column "
                              f"(columns: {', '.join(reader.fieldnames or [])}); add the SKU id "
                              "column or set catalogue.mapping.sku")
    else:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as err:
            raise SourceError(f"catalogue {source.url}: invalid JSON at line {err.lineno}, "
                              f"column {err.colno}: {err.msg}") from err
    rows = jmespath.search(source.mapping.items, document)
    if not isinstance(rows, list):
        found = "null (nothing at that path)" if rows is None else type(rows).__name__
        raise SourceError(f"catalogue {source.url}: mapping.items {source.mapping.items!r} must "
                          f"select a list of rows, found {found}; fix the expression")
    if len(rows) > MAX_ROWS:
        raise SourceError(f"catalogue {source.url}: {len(rows)} rows, over {MAX_ROWS}; split it")
    return rows


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value.strip() or None
    return None


class _BadRow(Exception):
    def __init__(self, column: str, value: Any, message: str):
        super().__init__(message)
        self.column, self.value, self.message = column, value, message


def _sku(item: Any, index: int, source: CatalogueSource, brand: BrandConfig,
         campaign: CampaignConfig, image_base: Path, seen: dict[str, int],
         copy_limits: dict[str, int]) -> Sku:
    """One row -> a SKU; _BadRow names the column at fault."""
    mapping = source.mapping
    if not isinstance(item, dict):
        raise _BadRow("(row)", str(item)[:40], f"a row must be an object/mapping, not a "
                      f"{type(item).__name__}")

    def field(name: str) -> tuple[str, Any]:
        expression = getattr(mapping, name)
        return expression, jmespath.search(expression, item)

    # 1. The id: keys and seeds come from it
    column, raw = field("sku")
    sku_id = _text(raw)
    if sku_id is None:
        raise _BadRow(column, raw, "the SKU id is empty; give every row a unique id (e.g. R01)")
    if not SKU_ID.fullmatch(sku_id):
        raise _BadRow(column, sku_id, "a SKU id is 1-63 ASCII letters, digits, '_', '.', '-' "
                      "(it is part of every image's key), e.g. R01")
    if sku_id in seen:
        raise _BadRow(column, sku_id, f"repeats the SKU id of row {seen[sku_id]}; SKU ids must "
                      "be unique")
    seen[sku_id] = index

    # 2. Name, colour, copy, day
    name_col, name = field("name")
    zh_col, name_zh = field("name_zh")
    en_col, name_en = field("name_en")
    name, name_zh, name_en = _text(name), _text(name_zh), _text(name_en)
    if not (name or name_zh or name_en):
        raise _BadRow(name_col, None, f"the product name is empty; fill {name_col} (or "
                      f"{zh_col} / {en_col})")
    names = BilingualText(zh=name_zh or name or name_en, en=name_en or name or name_zh)

    colour_col, colour_raw = field("colour")
    colour, colour_text = _text(colour_raw), None
    if colour is not None:
        table = brand.mappings.get(COLOUR_TABLE, {})
        if colour not in table:
            known = ", ".join(table) or f"none: add mappings.{COLOUR_TABLE} to the brand"
            raise _BadRow(colour_col, colour, f"not a code in the brand's mappings.{COLOUR_TABLE}"
                          f"; known: {known}")
        colour_text = table[colour]

    czh_col, copy_zh = field("copy_zh")
    _, copy_en = field("copy_en")
    copy_zh, copy_en = _text(copy_zh), _text(copy_en)
    copy_text = (BilingualText(zh=copy_zh or copy_en, en=copy_en or copy_zh)
                 if copy_zh or copy_en else None)
    if copy_text is not None:
        for language, copy_col in (("zh", czh_col), ("en", mapping.copy_en)):
            text, limit = getattr(copy_text, language), copy_limits[language]
            if len(text) > limit:
                raise _BadRow(copy_col, text, f"copy is {len(text)} characters; the campaign's "
                              f"template takes at most {limit}: shorten it")

    day_col, day_raw = field("day")
    day = (_text(day_raw) or next(iter(campaign.days))).lower()[:3]
    if day not in campaign.days:
        raise _BadRow(day_col, _text(day_raw), f"not a day of the campaign; use one of "
                      f"{', '.join(campaign.days)}")

    # 3. The product cutout: the row's, else the brand's
    image_col, image_raw = field("image")
    mask_col, mask_raw = field("mask")
    declared, image, mask = _text(image_raw), None, None
    if declared is not None:
        image = str((image_base / declared).resolve()) if not Path(declared).is_absolute() else declared
        mask_declared = _text(mask_raw)
        if mask_declared is not None:
            mask = str((image_base / mask_declared).resolve())
        try:
            load_product(image, mask)
        except ProductError as exc:
            at_mask = str(exc).startswith("Product mask")
            raise _BadRow(mask_col if at_mask else image_col,
                          _text(mask_raw) if at_mask else declared, str(exc)) from None
    elif brand.product is not None and brand.product.image is not None:
        image, mask, declared = brand.product.image, brand.product.mask, brand.product.image

    # 4. Everything else is a template variable
    variables: dict[str, str] = {}
    if source.kind == "csv":
        skip = mapping.mapped_columns()
        for key, value in item.items():
            if key in skip or not isinstance(key, str):
                continue
            var = re.sub(r"[^a-z0-9_]", "_", key.strip().lower())
            if VAR_NAME.fullmatch(var) and _text(value) is not None:
                variables[var] = str(_text(value))
    for var, expression in mapping.vars.items():
        value = _text(jmespath.search(expression, item))
        if value is not None:
            variables[var] = value
    return Sku(id=sku_id, row=index, name=names, colour=colour, colour_text=colour_text,
               image=image, mask=mask, declared_image=declared, copy_text=copy_text, day=day,
               vars=variables)


def read_catalogue(bundle: CampaignBundle) -> Catalogue | None:
    """Read and check every row; good rows become SKUs, bad rows problems (the others run).

    None when the campaign has no catalogue. Paths in the bundle are already resolved.
    """
    campaign, brand = bundle.campaign, bundle.brand
    source = campaign.catalogue
    if source is None:
        return None
    template = bundle.library.get(campaign.template)
    copy_limits = {language: template.copy_limit(language) for language in ("zh", "en")}
    rows = read_rows(source)
    if source.images is not None:
        image_base = Path(source.images)
    elif not source.is_http:
        image_base = Path(source.url).parent
    else:
        image_base = bundle.path.parent
    skus, problems, seen = [], [], {}
    for index, item in enumerate(rows, start=1):
        try:
            skus.append(_sku(item, index, source, brand, campaign, image_base, seen,
                             copy_limits))
        except _BadRow as bad:
            sku = _text(jmespath.search(source.mapping.sku, item)) if isinstance(item, dict) else None
            problems.append(CatalogueProblem(source=source.url, row=index, sku=sku,
                                             column=bad.column, message=bad.message,
                                             value=None if bad.value is None else str(bad.value)))
    return Catalogue(source=source.url, skus=skus, problems=problems)
