"""Small shared rules: the strict model base, the slug rule, the colour check.

Each lives here once; config files, rules, templates and comment records use them.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from PIL import ImageColor
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # object-key segments: brands, campaigns, rules, templates


def check_slug(value: str) -> str:
    """Slugs become object-key segments, so they are plain ASCII: say exactly what is wrong."""
    if SLUG.fullmatch(value):
        return value
    rule = ("a slug is 1-63 lower-case ASCII letters, digits and '-', starting with a letter or "
            f"digit (pattern {SLUG.pattern}), e.g. 'autumn-latte'; it is part of every object key")
    if not value:
        raise ValueError(f"empty; {rule}")
    if len(value) > 63:
        raise ValueError(f"{len(value)} characters long; {rule}")
    for position, char in enumerate(value):
        if not (char.isascii() and (char.islower() or char.isdigit() or (char == "-" and position))):
            name = unicodedata.name(char, "unnamed character")
            raise ValueError(f"character {char!r} (U+{ord(char):04X} {name}) at position {position} "
                             f"is not allowed; {rule}")
    raise ValueError(rule)  # pragma: no cover - every mismatch is caught above


Slug = Annotated[str, AfterValidator(check_slug),
                 Field(description="lower-case letters, digits, '-'",
                       json_schema_extra={"pattern": SLUG.pattern})]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_colour(value: str) -> str:
    """A colour Pillow can draw: '#RRGGBB' or '#RRGGBBAA' (with alpha), or a CSS name."""
    try:
        ImageColor.getrgb(value)
    except ValueError:
        raise ValueError(f"not a colour: {value!r}; use hex like '#FFFFFF' or '#00000099'") from None
    return value
