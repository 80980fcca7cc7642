"""Task mode inside the worker: the store calls that follow one invocation's path.

Only invocations in task mode come here, so functions without it never touch the
store. The store is opened on first use.
"""

from __future__ import annotations

import asyncio
from typing import Any

from asyncinvoke import contract, policy
from asyncinvoke.contract import Envelope
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.tasks.states import REPLAYABLE, Status
from asyncinvoke.tasks.store import ClaimResult, Task, TaskStore

# A Running claim outlives its attempt's timeout by this much; a claim whose worker
# died is taken over by a redelivery once it has run out.
LEASE_MARGIN_MS = 10_000


class TaskTracker:
    def __init__(self, store_url: str, **store_options: Any):
        self.store_url = store_url
        self.store_options = store_options
        self._store: TaskStore | None = None
        self._opening = asyncio.Lock()

    async def store(self) -> TaskStore:
        if self._store is None:
            async with self._opening:
                if self._store is None:
                    from asyncinvoke.tasks import open_store  # drivers load only when used

                    store = open_store(self.store_url, **self.store_options)
                    await store.open()
                    self._store = store
        return self._store

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def _ensured(self, envelope: Envelope) -> TaskStore:
        """The store, with this invocation's task in it (inserted Enqueued if missing:
        a plain AMQP producer's invocation is first seen here)."""
        store = await self.store()
        await store.ensure(
            envelope.id, envelope.fn, contract.pack(envelope.payload), envelope.created_at
        )
        return store

    async def enqueued(self, envelope: Envelope) -> None:
        await self._ensured(envelope)

    async def claim(self, envelope: Envelope, spec: FunctionSpec, now_ms: int) -> ClaimResult:
        """Claim the task to run it now. A replay of a task that ended without success
        reopens it first (Enqueued, "replayed"): it is a new attempt of the same task."""
        store = await self._ensured(envelope)
        lease_ms = round(spec.timeout_s * 1000) + LEASE_MARGIN_MS
        claimed = await store.claim(envelope.id, envelope.attempt, now_ms, lease_ms)
        ended = claimed.task
        if envelope.replay and ended is not None and ended.status in REPLAYABLE:
            detail = f"replayed from the failure queue after it ended {ended.status.value}"
            if await store.reopen(envelope.id, now_ms, detail) is not None:
                claimed = await store.claim(envelope.id, envelope.attempt, now_ms, lease_ms)
        return claimed

    async def dequeued(self, envelope: Envelope, now_ms: int, detail: str) -> None:
        store = await self._ensured(envelope)
        await store.transition(envelope.id, Status.DEQUEUED, now_ms, detail)

    async def expired(self, envelope: Envelope, now_ms: int, detail: str) -> None:
        store = await self._ensured(envelope)
        await store.transition(envelope.id, Status.EXPIRED, now_ms, detail, error=detail)

    async def invalid(self, task_id: str, function: str, now_ms: int, reason: str) -> None:
        store = await self.store()
        await store.ensure(task_id, function, None, now_ms)
        await store.transition(task_id, Status.INVALID, now_ms, reason, error=reason)

    async def settled(
        self,
        envelope: Envelope,
        outcome: policy.Outcome,
        settlement: policy.Settlement,
        now_ms: int,
    ) -> Task | None:
        """Record how an attempt ended. A task stopped meanwhile ends Stopped instead,
        its result discarded."""
        store = await self.store()
        error = _error_text(outcome)
        if type(settlement) is policy.Done:
            task = await store.transition(
                envelope.id,
                Status.SUCCEEDED,
                now_ms,
                f"attempt {envelope.attempt} succeeded",
                result=outcome.result,
            )
        elif type(settlement) is policy.Retry:
            task = await store.transition(
                envelope.id,
                Status.RETRYING,
                now_ms,
                f"attempt {envelope.attempt} failed ({error}); retry in "
                f"{settlement.backoff_ms / 1000:.3f} s",
                error=error,
            )
        else:
            assert type(settlement) is policy.GiveUp
            task = await store.transition(
                envelope.id,
                Status.FAILED,
                now_ms,
                f"{settlement.condition} after attempt {envelope.attempt}: {error}",
                error=error,
            )
        if task is None:
            return await self.stopped(envelope, now_ms, "stopped while running; result discarded")
        return task

    async def stopped(self, envelope: Envelope, now_ms: int, detail: str) -> Task | None:
        store = await self.store()
        return await store.transition(envelope.id, Status.STOPPED, now_ms, detail)


def _error_text(outcome: policy.Outcome) -> str | None:
    if outcome.ok or outcome.error is None:
        return None
    return f"{outcome.error.get('errorType')}: {outcome.error.get('errorMessage')}"
