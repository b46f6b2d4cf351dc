"""Seeds derived from names, so every image can be reproduced from its campaign record."""

from __future__ import annotations

import hashlib

_SEPARATOR = "\x1f"  # ASCII unit separator: never typed into a campaign name or prompt


def derive_seed(*parts: object) -> int:
    """Return a stable seed in [0, 2**32) for parts such as (campaign, day, format, variant).

    sha256 of the parts' `str()` joined by "\\x1f": the same parts give the same seed on
    every machine and Python version (unlike `hash()`, which is salted per process).
    """
    text = _SEPARATOR.join(str(part) for part in parts)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big")
