"""Progress reporting: a Prefect progress artifact for the UI (the local sink and its events
are tasks.core.progress)."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture


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
