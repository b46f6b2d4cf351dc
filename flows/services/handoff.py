"""The intake's fast path: hand an accepted comment to a resident `zpipe worker`.

One `reply-on-worker` task run per comment, the way `Task.delay()` makes one (parameters in
Prefect's task-scheduling storage, a SCHEDULED deferred task run, its state event), but with
one API client kept for the intake's life and without the caller's Prefect settings in the
run's parameters. `.delay()` cost 55-90 ms of CPU per call in the intake (2 cores,
2026-12-07): a new client each call (its SSL context, 23 ms) and the intake's whole settings
serialized into the parameters (47 ms), settings the worker should not take over anyway (it
has its own API URL and storage path). Under a burst those calls held the GIL the intake's
event loop needed; here a hand-off costs a few ms.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from typing import Any
from uuid import UUID, uuid4

HANDOFF_TIMEOUT_S = 30.0  # one hand-off (two API calls and a small file) never takes this long
# A hand-off the server answers 503 is tried again after these waits. On SQLite, Prefect's
# server answers 503 "database is locked" when the task run's insert meets the comment event's
# own writes (its trigger makes a flow run at the same moment), and Prefect's client would wait
# 2 s before trying again: that was the fast path's whole p95 (2026-12-07). The lock is gone in
# milliseconds. A task run that failed with 503 was not written (the transaction rolled back),
# and a reply cannot run twice anyway: it claims the comment in the ledger first.
BUSY_RETRY_S = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

logger = logging.getLogger("zpipe.intake")


class WorkerHandoff:
    """`handoff(comment_id, brand)` makes one `reply-on-worker` task run; returns its id.

    Thread-safe: calls run on one event loop in a daemon thread of their own, started at the
    first call in that caller's context (Prefect's API URL may be set there).
    """

    def __init__(self, task: Any, brands_dir: str, store_url: str, settings: str | None) -> None:
        self._task = task.with_options(persist_result=True)  # as `.delay()` does: the parameters persist
        self._fixed = {"brands_dir": brands_dir, "store": store_url, "settings": settings}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # guards `_loop`
        self._opening = asyncio.Lock()  # on the loop: one first call opens the client
        self._opened: tuple[Any, Any] | None = None

    def __call__(self, comment_id: str, brand: str) -> UUID:
        loop = self._start()
        parameters = {"comment_id": comment_id, "brand": brand, **self._fixed}
        return asyncio.run_coroutine_threadsafe(self._create(parameters), loop).result(HANDOFF_TIMEOUT_S)

    def warm(self) -> None:
        """Open the client and the store now (imports included): at the intake's start, so the
        first hand-offs do not hold the import lock while the first comments need it."""
        asyncio.run_coroutine_threadsafe(self._open(), self._start()).result(HANDOFF_TIMEOUT_S)

    def close(self) -> None:
        """Close the API client and stop the loop (a later call starts them again)."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(HANDOFF_TIMEOUT_S)
            loop.call_soon_threadsafe(loop.stop)

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=contextvars.copy_context().run, args=(loop.run_forever,),
                                 name="worker-handoff", daemon=True).start()
                self._loop = loop
            return self._loop

    async def _open(self) -> tuple[Any, Any]:
        """The API client and the parameters' store, made at the first call (again after a failure)."""
        async with self._opening:
            if self._opened is None:
                from prefect.client.orchestration import get_client
                from prefect.results import ResultStore, get_or_create_default_task_scheduling_storage

                client = get_client()
                await client.__aenter__()
                try:
                    storage = await get_or_create_default_task_scheduling_storage()
                    store = await ResultStore(result_storage=storage).aupdate_for_task(self._task)
                except BaseException:
                    await client.__aexit__(None, None, None)
                    raise
                self._opened = (client, store)
            return self._opened

    async def _create(self, parameters: dict[str, Any]) -> UUID:
        from prefect.states import Scheduled
        from prefect.task_worker import store_parameters
        from prefect.utilities.engine import emit_task_run_state_change_event

        client, store = await self._open()
        parameters_id = uuid4()
        state = Scheduled()
        state.state_details.deferred = True
        state.state_details.task_parameters_id = parameters_id
        await store_parameters(store, parameters_id, {"parameters": parameters})
        task_run = await self._create_task_run(client, state, parameters)
        emit_task_run_state_change_event(task_run=task_run, initial_state=None,
                                         validated_state=task_run.state)
        return task_run.id

    async def _create_task_run(self, client: Any, state: Any, parameters: dict[str, Any]) -> Any:
        """The task run, tried again soon after a 503 (see `BUSY_RETRY_S`)."""
        import httpx
        from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

        async def create() -> Any:
            with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):  # while it runs
                return await client.create_task_run(
                    task=self._task, name=self._task.name, flow_run_id=None,
                    dynamic_key=f"{self._task.task_key}-{uuid4().hex}", state=state,
                    task_inputs={name: set() for name in parameters})  # strings: no upstream runs

        for wait_s in BUSY_RETRY_S:
            try:
                return await create()
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 503:
                    raise
                logger.info("the Prefect server answered a hand-off 503 (busy); trying again in %.2f s",
                            wait_s)
                await asyncio.sleep(wait_s)
        return await create()

    async def _close(self) -> None:
        if self._opened is not None:
            client, _ = self._opened
            self._opened = None
            await client.__aexit__(None, None, None)
