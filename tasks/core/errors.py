"""Every zpipe error subclasses `ZpipeError`, so callers can catch one base class."""

from __future__ import annotations


class ZpipeError(Exception):
    """Base class of every error zpipe raises on purpose."""


class ConfigError(ZpipeError):
    """A config file is missing, malformed, or has a bad field.

    The message always names the file, the field (a dotted path) and the bad value.
    """

    def __init__(self, file: str, field: str | None, message: str, value: object = None):
        self.file = file
        self.field = field
        self.value = value
        where = f"{file}: {field}" if field else file
        shown = f" (got {value!r})" if value is not None else ""
        super().__init__(f"{where}: {message}{shown}")


class StoreError(ZpipeError):
    """An object store could not be opened, read or written."""


class SourceError(ZpipeError):
    """A trend source could not be fetched or parsed."""


class PromptError(ZpipeError):
    """A prompt template failed to render (names the template, part and variable)."""


class LabelError(ZpipeError):
    """Labelling failed: no CJK font, a logo that cannot be read, a label too small."""
