"""Progress events: what a run has done so far, for whoever listens (no Prefect).

The CLI installs a sink (a callable) with `progress_sink(...)` to drive its rich progress
bars; the sink lives in a context variable, which Prefect copies into task threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

EventKind = Literal["planned", "skipped", "loaded", "generated", "published", "failed"]


@dataclass(frozen=True)
class ProgressEvent:
    kind: EventKind
    count: int = 1
    total: int = 0
    detail: str = ""


Sink = Callable[[ProgressEvent], None]
_sink: ContextVar[Sink | None] = ContextVar("zpipe_progress_sink", default=None)


@contextmanager
def progress_sink(sink: Sink) -> Iterator[None]:
    """Send progress events raised inside this block (and its flows and tasks) to `sink`."""
    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)


def emit(event: ProgressEvent) -> None:
    """Pass an event to the installed sink, if any."""
    sink = _sink.get()
    if sink is not None:
        sink(event)
