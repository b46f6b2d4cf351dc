"""A campaign's `catalogue:` declaration: where the rows are and how to map them (the spec).

Reading it (rows -> SKUs, bad rows -> problems) is `tasks.content.catalogue`. What a row
gives is described there.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import jmespath
import jmespath.exceptions
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tasks.prompts.templates import BilingualText

SKU_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # part of object keys
VAR_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
KNOWN_FIELDS = ("sku", "name", "name_zh", "name_en", "colour", "image", "mask", "copy_zh",
                "copy_en", "day")
MAX_ROWS = 10_000


class CatalogueMapping(BaseModel):
    """JMESPath expressions for the row list and each field (defaults: the column names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    items: str = Field(default="skus || items || @", description="JMESPath to the list of rows")
    sku: str = "sku"
    name: str = "name"
    name_zh: str = "name_zh"
    name_en: str = "name_en"
    colour: str = "colour"
    image: str = "image"
    mask: str = "mask"
    copy_zh: str = "copy_zh"
    copy_en: str = "copy_en"
    day: str = "day"
    vars: dict[str, str] = Field(default_factory=dict,
                                 description="template variable -> JMESPath: sku.vars.<name>")

    @field_validator("items", "sku", "name", "name_zh", "name_en", "colour", "image", "mask",
                     "copy_zh", "copy_en", "day")
    @classmethod
    def _compiles(cls, expression: str, info: ValidationInfo) -> str:
        _compile(f"mapping.{info.field_name}", expression)
        return expression

    @field_validator("vars")
    @classmethod
    def _vars_compile(cls, value: dict[str, str]) -> dict[str, str]:
        for name, expression in value.items():
            if not VAR_NAME.fullmatch(name):
                raise ValueError(f"mapping.vars name {name!r} must be lower-case letters, digits "
                                 "and '_' (templates read it as sku.vars.<name>)")
            _compile(f"mapping.vars.{name}", expression)
        return value

    def mapped_columns(self) -> set[str]:
        """Plain column names the mapping reads (the rest of a CSV's columns become vars)."""
        fields = [getattr(self, name) for name in KNOWN_FIELDS] + list(self.vars.values())
        return {expr for expr in fields if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", expr)}


def _compile(where: str, expression: str) -> None:
    try:
        jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as err:
        raise ValueError(f"{where}: {expression!r} is not a valid JMESPath expression ({err}); "
                         "e.g. 'data.skus' for items or 'colour_code' for a field") from err


class CatalogueSource(BaseModel):
    """A campaign's `catalogue:`: where the rows come from and how they map to SKU fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1, description="CSV/JSON file (relative to the campaign file) "
                                                "or an http(s) URL serving JSON")
    format: Literal["csv", "json"] | None = Field(
        default=None, description="default: from the file's extension; json for http(s)")
    mapping: CatalogueMapping = Field(default_factory=CatalogueMapping)
    images: str | None = Field(default=None, description="folder that product image paths are "
                               "relative to (default: the catalogue file's, or the campaign's)")
    timeout_s: float = Field(default=10.0, gt=0)
    max_bytes: int = Field(default=5_000_000, ge=1)
    retries: int = Field(default=2, ge=0, le=10)

    @field_validator("url")
    @classmethod
    def _http_or_path(cls, url: str) -> str:
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
        if scheme and scheme.group(1).lower() not in ("http", "https"):
            raise ValueError(f"url {url!r} uses the unsupported scheme {scheme.group(1)!r}; use "
                             "an http(s):// URL or a plain file path")
        return url

    @property
    def is_http(self) -> bool:
        return self.url.lower().startswith(("http://", "https://"))

    @property
    def kind(self) -> Literal["csv", "json"]:
        if self.format is not None:
            return self.format
        if self.is_http or self.url.lower().endswith(".json"):
            return "json"
        return "csv"


class Sku(BaseModel):
    """One good catalogue row, as the plan uses it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    row: int  # 1-based position in the catalogue (for messages; never part of a key)
    name: BilingualText
    colour: str | None = None
    colour_text: BilingualText | None = None
    image: str | None = None  # absolute path of the product cutout
    mask: str | None = None
    declared_image: str | None = None  # as written in the row
    copy_text: BilingualText | None = None
    day: str
    vars: dict[str, str] = Field(default_factory=dict)

    def as_variable(self) -> dict[str, Any]:
        """The `sku` template variable."""
        colour = None
        if self.colour is not None and self.colour_text is not None:
            colour = {"code": self.colour, **self.colour_text.model_dump()}
        return {"id": self.id, "name": self.name.model_dump(), "name_zh": self.name.zh,
                "name_en": self.name.en, "colour": colour,
                "copy": self.copy_text.model_dump() if self.copy_text else None,
                "day": self.day, "vars": dict(self.vars)}


class CatalogueProblem(BaseModel):
    """A row left out, and why: names the row, the column, the value and the fix."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    row: int
    sku: str | None
    column: str
    value: str | None
    message: str

    def __str__(self) -> str:
        sku = f" (sku {self.sku})" if self.sku else ""
        got = f" (got {self.value!r})" if self.value is not None else ""
        return f"{self.source}: row {self.row}{sku}, column {self.column!r}: {self.message}{got}"


class Catalogue(BaseModel):
    """The SKUs of a catalogue that can be made, and the rows left out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    skus: list[Sku]
    problems: list[CatalogueProblem] = Field(default_factory=list)
