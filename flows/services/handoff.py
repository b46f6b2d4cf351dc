"""The intake's fast path: hand an accepted comment to a resident `zpipe worker`.

One `reply-on-worker` task run per comment, made by `tasks.orchestration.handoff`'s
`TaskRunHandoff` (one API client for the intake's life, a few ms per hand-off instead of
`.delay()`'s 55-90 ms of CPU, which under a burst held the GIL the intake's event loop needed).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from tasks.orchestration.handoff import TaskRunHandoff


class WorkerHandoff(TaskRunHandoff):
    """`handoff(comment_id, brand)` makes one `reply-on-worker` task run; returns its id."""

    def __init__(self, task: Any, brands_dir: str, store_url: str, settings: str | None) -> None:
        super().__init__(task)
        self._fixed = {"brands_dir": brands_dir, "store": store_url, "settings": settings}

    def __call__(self, comment_id: str, brand: str) -> UUID:
        return self.create({"comment_id": comment_id, "brand": brand, **self._fixed})
