"""Task runs for resident task workers, made the way `Task.delay()` makes them, but cheaply.

`create(parameters)` makes one deferred task run: its parameters in Prefect's task-scheduling
storage, a SCHEDULED deferred run (the server queues it for a task worker subscribed to the
task), its state event. Unlike `.delay()` it keeps one API client for its whole life and does
not serialize the caller's context into the parameters. `.delay()` cost 55-90 ms of CPU per
call (2 cores, 2026-12-07): a new client each call (its SSL context, 23 ms) and the caller's
whole settings serialized (47 ms), settings a worker should not take over anyway (it has its
own API URL and storage path). A hand-off here costs a few ms. Two callers: the intake's fast
path (one run per comment, `flows.services.handoff`) and a campaign's hand-overs to resident
GPU workers (`tasks.steps.generation`).
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
# server answers 503 "database is locked" when the task run's insert meets other writes (a
# comment event's trigger making its flow run at the same moment), and Prefect's client would
# wait 2 s before trying again: that was the intake fast path's whole p95 (2026-12-07). The
# lock is gone in milliseconds. A task run that failed with 503 was not written (the
# transaction rolled back), so trying again makes no second run.
BUSY_RETRY_S = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

logger = logging.getLogger("zpipe.handoff")


class TaskRunHandoff:
    """`create(parameters)` makes one deferred run of `task` for a task worker; returns its id.

    Thread-safe: calls run on one event loop in a daemon thread of its own, started at the
    first call in that caller's context (Prefect's API URL may be set there). `close()` closes
    the client and stops the thread.
    """

    def __init__(self, task: Any) -> None:
        self._task = task.with_options(persist_result=True)  # as `.delay()` does: the parameters persist
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # guards `_loop`
        self._opening = asyncio.Lock()  # on the loop: one first call opens the client
        self._opened: tuple[Any, Any] | None = None

    def create(self, parameters: dict[str, Any], flow_run_id: UUID | None = None,
               name: str | None = None) -> UUID:
        """One SCHEDULED deferred run of the task with `parameters` (by name), in `flow_run_id`'s
        flow run if given (the UI shows it there), named `name` (default: the task's name)."""
        coroutine = self._create(parameters, flow_run_id, name or self._task.name)
        return asyncio.run_coroutine_threadsafe(coroutine, self._start()).result(HANDOFF_TIMEOUT_S)

    def warm(self) -> None:
        """Open the client and the store now (imports included): e.g. at a service's start, so
        the first hand-offs do not hold the import lock while the first requests need it."""
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
                                 name="task-run-handoff", daemon=True).start()
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

    async def _create(self, parameters: dict[str, Any], flow_run_id: UUID | None, name: str) -> UUID:
        from prefect.states import Scheduled
        from prefect.task_worker import store_parameters
        from prefect.utilities.engine import emit_task_run_state_change_event

        client, store = await self._open()
        parameters_id = uuid4()
        state = Scheduled()
        state.state_details.deferred = True
        state.state_details.task_parameters_id = parameters_id
        await store_parameters(store, parameters_id, {"parameters": parameters})
        task_run = await self._create_task_run(client, state, parameters, flow_run_id, name)
        emit_task_run_state_change_event(task_run=task_run, initial_state=None,
                                         validated_state=task_run.state)
        return task_run.id

    async def _create_task_run(self, client: Any, state: Any, parameters: dict[str, Any],
                               flow_run_id: UUID | None, name: str) -> Any:
        """The task run, tried again soon after a 503 (see `BUSY_RETRY_S`)."""
        import httpx
        from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

        async def create() -> Any:
            with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):  # while it runs
                return await client.create_task_run(
                    task=self._task, name=name, flow_run_id=flow_run_id,
                    dynamic_key=f"{self._task.task_key}-{uuid4().hex}", state=state,
                    task_inputs={key: set() for key in parameters})  # plain values: no upstream runs

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
