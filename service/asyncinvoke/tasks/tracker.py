"""Task mode inside the worker: the store calls that follow one invocation's path.

Only invocations in task mode come here, so functions without it never touch the
store. The store is opened on first use.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from asyncinvoke import clock, contract, policy
from asyncinvoke.contract import Envelope, Outcome
from asyncinvoke.errors import TaskStoreUnavailable
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.observability import get_logger
from asyncinvoke.settings import DEFAULT_TASK_STORE_RETRY_S
from asyncinvoke.tasks import open_store
from asyncinvoke.tasks.retrying import RetryingTaskStore
from asyncinvoke.tasks.states import REPLAYABLE, Status
from asyncinvoke.tasks.store import Claim, ClaimResult, Task, TaskStore
from asyncinvoke.tasks.traced import traced

# A Running claim outlives its attempt's timeout by this much; a claim whose worker
# died is taken over by a redelivery once it has run out.
LEASE_MARGIN_MS = 10_000
STOPPED_RESULT_DISCARDED = "stopped while running; result discarded"
# A claim given up while the task store was down is released once it is back: tried this
# often, and only until this long before the claim runs out (clocks of hosts differ a bit).
RELEASE_RETRY_EVERY_S = 0.5
RELEASE_SAFETY_MS = 2_000

log = get_logger(component="tasks")


class TaskTracker:
    def __init__(
        self, store_url: str, *, retry_s: float = DEFAULT_TASK_STORE_RETRY_S,
        **store_options: Any,
    ):
        self.store_url = store_url
        self.store_options = store_options
        self.retry_s = retry_s
        self._retrying: RetryingTaskStore | None = None
        self._store: TaskStore | None = None
        self._opening = asyncio.Lock()
        # Releases waiting for the store to come back (see ``released``).
        self._pending_releases: set[asyncio.Task[None]] = set()

    async def store(self) -> TaskStore:
        """The store, open; every call on it rides out an outage of up to ``retry_s``."""
        if self._store is None:
            async with self._opening:
                if self._retrying is None:
                    store = open_store(self.store_url, **self.store_options)
                    self._retrying = RetryingTaskStore(store, retry_s=self.retry_s)
                if self._store is None:
                    await self._retrying.open()
                    self._store = traced(self._retrying, self.store_url)
        return self._store

    @property
    def outage(self) -> str | None:
        """Why the store is unavailable now (for /readyz); None while it is up or unused."""
        return None if self._retrying is None else self._retrying.outage

    async def close(self) -> None:
        for pending in list(self._pending_releases):
            pending.cancel()
        if self._retrying is not None:
            retrying, self._retrying, self._store = self._retrying, None, None
            await retrying.close()

    async def _ensured(self, envelope: Envelope) -> TaskStore:
        """The store, with this invocation's task in it (inserted Enqueued if missing:
        a plain AMQP producer's invocation is first seen here)."""
        return (await self._ensured_task(envelope))[0]

    async def _ensured_task(self, envelope: Envelope) -> tuple[TaskStore, Task]:
        store = await self.store()
        task = await store.ensure(
            envelope.id, envelope.fn, contract.pack(envelope.payload), envelope.created_at
        )
        return store, task

    async def enqueued(self, envelope: Envelope) -> None:
        await self._ensured(envelope)

    async def claim(
        self, envelope: Envelope, spec: FunctionSpec, now_ms: int, *, alone: bool
    ) -> ClaimResult:
        """Claim the task to run it now. A replay of a task that ended without success
        reopens it first (Enqueued, "replayed"): it is a new attempt of the same task.

        A task whose last attempt's worker died (orphaned) is claimed only by a delivery
        that runs ``alone`` (a suspect): otherwise the answer is ORPHANED, and nothing
        changed, so that what killed one worker cannot take innocent attempts with it.
        """
        store, task = await self._ensured_task(envelope)
        if not alone and orphaned(task, now_ms):
            return ClaimResult(Claim.ORPHANED, task)
        lease_ms = round(spec.timeout_s * 1000) + LEASE_MARGIN_MS
        try:
            claimed = await store.claim(envelope.id, envelope.attempt, now_ms, lease_ms)
        except TaskStoreUnavailable:
            # The claim may have been written and only its answer lost: if so, it is
            # released once the store is back, as an attempt that was not settled is.
            self._release_later(
                envelope,
                f"attempt {envelope.attempt} was not started (the task store was down); "
                "it runs again",
                lease_until=now_ms + lease_ms,
                claimed_at=now_ms,
            )
            raise
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
        outcome: Outcome,
        settlement: policy.Settlement,
        now_ms: int,
    ) -> Task | None:
        """Record how an attempt ended, once what follows it was sent. A task whose stop
        came as the attempt ended ends Stopped instead."""
        store = await self.store()
        error = _error_text(outcome)
        match settlement:
            case policy.Done():
                status, detail = Status.SUCCEEDED, f"attempt {envelope.attempt} succeeded"
            case policy.Retry(backoff_ms=backoff_ms):
                status = Status.RETRYING
                detail = (f"attempt {envelope.attempt} failed ({error}); retry in "
                          f"{backoff_ms / 1000:.3f} s")
            case policy.Throttle(wait_ms=wait_ms, since=since):
                status = Status.THROTTLED
                detail = (f"attempt {envelope.attempt} throttled ({error}); again in "
                          f"{wait_ms / 1000:.3f} s, throttle {envelope.throttles + 1} in "
                          f"{(now_ms - since) / 1000:.3f} s")
            case policy.GiveUp(condition):
                status = Status.FAILED
                detail = f"{condition} after attempt {envelope.attempt}: {error}"
                if condition == contract.THROTTLE_EXHAUSTED:
                    detail = (f"{condition}: throttled {envelope.throttles + 1} times, past "
                              f"the function's throttle budget; last: {error}")
        if status is Status.SUCCEEDED:
            task = await store.transition(
                envelope.id, status, now_ms, detail, result=outcome.result
            )
        else:
            task = await store.transition(envelope.id, status, now_ms, detail, error=error)
        if task is None:
            return await self.stopped(envelope, now_ms, "stopped as its attempt ended")
        return task

    async def stopped(self, envelope: Envelope, now_ms: int, detail: str) -> Task | None:
        store = await self.store()
        return await store.transition(envelope.id, Status.STOPPED, now_ms, detail)

    async def released(
        self, envelope: Envelope, now_ms: int, reason: str, *, lease_until: int | None = None
    ) -> None:
        """Give up the claim of an attempt this worker could not settle (it runs again):
        Retrying, where a claim left Running would hold a lease period and count as a death.
        A task that moved on already (it ended, or a stop was asked for) stays as it is.

        When the store itself is what failed, the release is tried again in the background
        until the store is back, but only while the claim (``lease_until``) is still ours:
        after that another delivery may hold the task, and its claim must not be undone.
        The copy this worker gave up waits in the ladder until the lease ends, so it finds
        the task Retrying, not orphaned, and is not taken for a poison message.
        """
        detail = f"attempt {envelope.attempt} was not settled ({reason}); it runs again"
        try:
            await self._release(envelope, now_ms, detail)
        except TaskStoreUnavailable:
            if lease_until is not None:
                self._release_later(envelope, detail, lease_until=lease_until)
            raise

    def _release_later(
        self, envelope: Envelope, detail: str, *, lease_until: int, claimed_at: int | None = None
    ) -> None:
        pending = asyncio.create_task(
            self._release_while_ours(envelope, detail, lease_until, claimed_at)
        )
        self._pending_releases.add(pending)
        pending.add_done_callback(self._pending_releases.discard)

    async def _release(self, envelope: Envelope, now_ms: int, detail: str) -> None:
        store = await self.store()
        await store.transition(envelope.id, Status.RETRYING, now_ms, detail)

    async def _release_while_ours(
        self, envelope: Envelope, detail: str, lease_until: int, claimed_at: int | None
    ) -> None:
        """``claimed_at``: the claim's own time, when it is not known whether it was
        written; then the task is released only if its last event is that claim."""
        while True:
            await asyncio.sleep(RELEASE_RETRY_EVERY_S)
            now = clock.now_ms()
            if now >= lease_until - RELEASE_SAFETY_MS:
                log.warning("task_release_abandoned", invocation_id=envelope.id,
                            reason="the claim ran out while the task store was down")
                return
            try:
                if claimed_at is not None and not _claimed_by(
                    await (await self.store()).get(envelope.id), claimed_at, lease_until
                ):
                    return  # the claim was never written: nothing to release
                await self._release(envelope, now, detail)
            except TaskStoreUnavailable:
                continue
            log.info("task_released_after_outage", invocation_id=envelope.id)
            return

    async def gave_up(
        self, envelope: Envelope, condition: str, reason: str, now_ms: int
    ) -> Task | None:
        """The invocation ends without another attempt (a poison message): Failed, or
        Stopped if a stop was asked for meanwhile; a task that ended already stays as it is.
        """
        store = await self._ensured(envelope)
        error = f"{condition}: {reason}"
        task = await store.transition(envelope.id, Status.FAILED, now_ms, error, error=error)
        if task is None:
            return await self.stopped(envelope, now_ms, f"stopped; {error}")
        return task


def _claimed_by(task: Task | None, claimed_at: int, lease_until: int) -> bool:
    """Whether ``task`` is held by the claim made at ``claimed_at`` (its last event)."""
    return (
        task is not None
        and task.status is Status.RUNNING
        and task.lease_until == lease_until
        and bool(task.events)
        and task.events[-1].status is Status.RUNNING
        and task.events[-1].timestamp == claimed_at
    )


def orphaned(task: Task, now_ms: int) -> bool:
    """Running, but its lease ran out: the worker that claimed it died while running it."""
    return (
        task.status is Status.RUNNING
        and task.lease_until is not None
        and task.lease_until < now_ms
    )


def deaths(task: Task) -> int:
    """How many attempts since the task was (re)enqueued ended with their worker's death.

    A store records a claim as a Running event. An attempt that ends records its end; one
    whose worker died records nothing, so the next claim (which took over once its lease
    ran out) follows it directly: each Running followed by a Running is one death.
    """
    events = task.events
    start = max((i for i, event in enumerate(events) if event.status is Status.ENQUEUED),
                default=0)
    since = events[start:]
    return sum(
        1
        for earlier, later in itertools.pairwise(since)
        if earlier.status is Status.RUNNING and later.status is Status.RUNNING
    )


def _error_text(outcome: Outcome) -> str | None:
    if outcome.ok or outcome.error is None:
        return None
    return outcome.error.summary()
