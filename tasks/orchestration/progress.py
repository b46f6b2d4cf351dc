"""Progress reporting: a Prefect progress artifact for the UI, plus an optional local sink.

The CLI installs a sink (a callable) with `progress_sink(...)` to drive its rich progress
bars; the sink lives in a context variable, which Prefect copies into task threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture

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


class RunProgress:
    """Percent of a run's images that are done, as a Prefect progress artifact."""

    def __init__(self, key: str, total: int, description: str):
        self.total = max(total, 1)
        self.done = 0
        self.artifact_id: UUID = create_progress_artifact(  # type: ignore[assignment]
            progress=0.0, key=key, description=description)
        self._counted: set[int] = set()

    def advance(self, count: int = 1) -> None:
        self.done += count
        update_progress_artifact(self.artifact_id, progress=100.0 * self.done / self.total)

    def advance_done(self, batches: Sequence[tuple[Sequence[object], PrefectFuture]]) -> None:
        """Count the images of the (images, future) pairs whose future finished since last time.

        A glance while the run goes on: a future's state can lag behind its result, so a batch
        missed here is counted by `finish`, which the flow calls with every result in hand.
        """
        for images, future in batches:
            if id(future) not in self._counted and future.state.is_final():
                self.finish(images, future)

    def finish(self, images: Sequence[object], future: PrefectFuture) -> None:
        """Count a batch whose result the flow holds (published or failed), once."""
        if id(future) not in self._counted:
            self._counted.add(id(future))
            self.advance(len(images))
