"""A task store that rides out an outage: the reconnecting variant of any TaskStore.

A few seconds without the store (PostgreSQL restarting, a failover, a cut network, the
SQLite file locked by another process) must not end the invocations in flight: each call
that fails with ``TaskStoreUnavailable`` is tried again with backoff for up to
``retry_s`` (ASYNCINVOKE_TASK_STORE_RETRY), and only then raises it. While the store
is down ``outage`` says why, for /readyz, and a probe notices when it is back even if no
call is waiting.

A write can commit and lose only its answer with the connection. Tried again, it would
find its own work done and report a conflict that is not one; ``create``, ``claim``,
``transition`` and ``request_stop`` recognise their own write (same event, same
millisecond) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import tenacity

from asyncinvoke.errors import TaskExists, TaskFinished, TaskNotEnded, TaskStoreUnavailable
from asyncinvoke.observability import get_logger
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import (
    STOPPED_BEFORE_START,
    Claim,
    ClaimResult,
    Event,
    Page,
    Task,
    TaskStore,
    new_task,
)

R = TypeVar("R")

# How often a store that is down is asked whether it is back, when no call is waiting.
PROBE_EVERY_S = 1.0
# Backoff between tries of one call: from 0.1 s, doubling, at most 2 s (plus up to 0.1 s
# of jitter, so that the calls waiting do not all come back at once).
FIRST_WAIT_S = 0.1
LONGEST_WAIT_S = 2.0

log = get_logger(component="tasks")


class RetryingTaskStore:
    """``store``, with every call tried again while the store is unavailable."""

    def __init__(self, store: TaskStore, *, retry_s: float):
        self.store = store
        self.retry_s = retry_s
        self.outage: str | None = None  # why the store is unavailable; None while it is up
        self._down_since = 0.0
        self._probe: asyncio.Task[None] | None = None

    async def _retrying(self, operation: Callable[[], Awaitable[R]]) -> tuple[R, int]:
        """What ``operation`` answered, and in how many tries."""
        try:
            answer = await operation()
        except TaskStoreUnavailable as exc:
            self._down(exc)
        else:
            self._up()
            return answer, 1
        # Down: tenacity takes over only now, as it costs more than the call it wraps.
        tries = 1

        async def counted() -> R:
            nonlocal tries
            tries += 1
            return await operation()

        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_delay(self.retry_s),
            wait=tenacity.wait_exponential(multiplier=FIRST_WAIT_S, max=LONGEST_WAIT_S)
            + tenacity.wait_random(0, FIRST_WAIT_S),
            retry=tenacity.retry_if_exception_type(TaskStoreUnavailable),
            before_sleep=self._went_down,
            reraise=True,
        )
        try:
            answer = await retrying(counted)
        except TaskStoreUnavailable as exc:
            self._down(exc)
            raise
        self._up()
        return answer, tries

    async def _call(self, operation: Callable[[], Awaitable[R]]) -> R:
        answer, _ = await self._retrying(operation)
        return answer

    def _went_down(self, retry_state: tenacity.RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, TaskStoreUnavailable):
            self._down(error)

    def _down(self, error: TaskStoreUnavailable) -> None:
        if self.outage is None:
            self._down_since = time.monotonic()
            log.warning("task_store_unavailable", reason=str(error),
                        retrying_for_s=self.retry_s)
        self.outage = error.reason
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_until_up())

    def _up(self) -> None:
        if self.outage is not None:
            self.outage = None
            log.info("task_store_recovered",
                        down_s=round(time.monotonic() - self._down_since, 3))

    async def _probe_until_up(self) -> None:
        while self.outage is not None:
            await asyncio.sleep(PROBE_EVERY_S)
            try:
                await self.store.ping()
            except TaskStoreUnavailable as exc:
                self.outage = exc.reason
            except Exception:  # not open yet (its open is being retried): ask again later
                continue
            else:
                self._up()

    async def _written(self, task_id: str, event: Event) -> Task | None:
        """The task if its last event is ``event``: a write of ours that lost its answer."""
        task = await self.get(task_id)
        if task is not None and task.events and task.events[-1] == event:
            return task
        return None

    # -- TaskStore ---------------------------------------------------------------------

    async def open(self) -> None:
        await self._call(self.store.open)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.store.close()

    async def create(
        self, task_id: str, function: str, payload: bytes | None, now_ms: int, detail: str = ""
    ) -> Task:
        async def insert() -> Task | None:
            try:
                return await self.store.create(task_id, function, payload, now_ms, detail)
            except TaskExists:
                return None

        created, tries = await self._retrying(insert)
        if created is not None:
            return created
        if tries > 1:
            found = await self.get(task_id)
            if found is not None and found == new_task(task_id, function, payload, now_ms,
                                                       detail):
                return found
        raise TaskExists(task_id)

    async def ensure(
        self, task_id: str, function: str, payload: bytes | None, now_ms: int
    ) -> Task:
        return await self._call(lambda: self.store.ensure(task_id, function, payload, now_ms))

    async def claim(
        self, task_id: str, attempt: int, now_ms: int, lease_ms: int
    ) -> ClaimResult:
        claimed, tries = await self._retrying(
            lambda: self.store.claim(task_id, attempt, now_ms, lease_ms)
        )
        task = claimed.task
        if claimed.claim is Claim.BUSY and tries > 1 and task is not None and task.events:
            # Our own claim, if its lease and its Running event are of this very call:
            # otherwise the delivery would wait for its own lease to run out.
            last = task.events[-1]
            if (task.lease_until == now_ms + lease_ms and last.status is Status.RUNNING
                    and last.timestamp == now_ms):
                return ClaimResult(Claim.CLAIMED, task)
        return claimed

    async def transition(
        self,
        task_id: str,
        target: Status,
        now_ms: int,
        detail: str = "",
        *,
        result: Any = None,
        error: str | None = None,
    ) -> Task | None:
        moved, tries = await self._retrying(lambda: self.store.transition(
            task_id, target, now_ms, detail, result=result, error=error
        ))
        if moved is None and tries > 1:
            return await self._written(task_id, Event(target, now_ms, detail))
        return moved

    async def request_stop(self, task_id: str, now_ms: int) -> Task:
        async def stop() -> Task | TaskFinished:
            try:
                return await self.store.request_stop(task_id, now_ms)
            except TaskFinished as exc:
                return exc

        stopped, tries = await self._retrying(stop)
        if not isinstance(stopped, TaskFinished):
            return stopped
        if tries > 1:
            ours = await self._written(
                task_id, Event(Status.STOPPED, now_ms, STOPPED_BEFORE_START)
            )
            if ours is not None:
                return ours
        raise stopped

    async def get(self, task_id: str) -> Task | None:
        return await self._call(lambda: self.store.get(task_id))

    async def ping(self) -> None:
        await self._call(self.store.ping)

    async def list(
        self,
        *,
        function: str | None = None,
        status: Status | None = None,
        prefix: str | None = None,
        started_from: int | None = None,
        started_to: int | None = None,
        limit: int = 20,
        next_token: str | None = None,
        newest_first: bool = True,
    ) -> Page:
        return await self._call(lambda: self.store.list(
            function=function, status=status, prefix=prefix, started_from=started_from,
            started_to=started_to, limit=limit, next_token=next_token,
            newest_first=newest_first,
        ))

    async def purge(self, older_than_ms: int) -> int:
        return await self._call(lambda: self.store.purge(older_than_ms))

    async def reopen(self, task_id: str, now_ms: int, detail: str) -> Task | None:
        reopened, tries = await self._retrying(
            lambda: self.store.reopen(task_id, now_ms, detail)
        )
        if reopened is None and tries > 1:
            # Our own reopen that lost its answer: a replay must not be dropped for it.
            return await self._written(task_id, Event(Status.ENQUEUED, now_ms, detail))
        return reopened

    async def rerun(self, task_id: str, now_ms: int, detail: str) -> Task:
        async def rerun() -> Task | TaskNotEnded:
            try:
                return await self.store.rerun(task_id, now_ms, detail)
            except TaskNotEnded as exc:
                return exc

        rerun_task, tries = await self._retrying(rerun)
        if not isinstance(rerun_task, TaskNotEnded):
            return rerun_task
        if tries > 1:
            # Our own re-run that lost its answer: the caller must still send its message.
            ours = await self._written(task_id, Event(Status.ENQUEUED, now_ms, detail))
            if ours is not None:
                return ours
        raise rerun_task

    async def remember_nonce(self, nonce: str, expires_at_ms: int, now_ms: int) -> bool:
        # Not tried again: an insert that committed and lost its answer would find its own
        # nonce and refuse a genuine request as a replay. The gateway answers 503 instead,
        # and the SDK sends the request again with a new nonce.
        return await self.store.remember_nonce(nonce, expires_at_ms, now_ms)
