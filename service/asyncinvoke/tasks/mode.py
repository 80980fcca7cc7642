"""Task mode as the pipeline's collaborator: one method per step of an invocation's path.

``TaskMode`` tracks an invocation in the task store; ``NO_TASKS`` is its do-nothing
twin for invocations that are not tasks, so the pipeline has no ``if task_mode:``
branches. The store calls themselves are ``TaskTracker``'s; what follows from a claim
is decided here (with ``policy``) and carried out by the pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from asyncinvoke import contract, policy
from asyncinvoke.clock import now_ms
from asyncinvoke.contract import Envelope, Outcome, Record
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.observability import get_logger
from asyncinvoke.tasks.running import RunningAttempts
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import Claim
from asyncinvoke.tasks.tracker import TaskTracker, deaths

PURGE_EVERY_S = 600.0

log = get_logger(component="tasks")


# -- what a claim allows -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    """Run it now; the claim holds until ``lease_until`` (None: no task, no claim)."""

    lease_until: int | None


@dataclass(frozen=True, slots=True)
class Orphaned:
    """Its last attempt's worker died: this copy runs alone, as a suspect."""


@dataclass(frozen=True, slots=True)
class Busy:
    """Another worker runs it now: send this copy on, due at ``retry_at``."""

    retry_at: int


@dataclass(frozen=True, slots=True)
class Poisoned:
    """Its worker died ``deaths`` times running it: not again."""

    deaths: int


@dataclass(frozen=True, slots=True)
class NotRun:
    """Ended, stopped or gone: acknowledge it unrun."""

    status: str


UNTRACKED = Claimed(None)
TaskAdmission = Claimed | Orphaned | Busy | Poisoned | NotRun


class TaskMode:
    """The steps of an invocation tracked as a task."""

    def __init__(self, tracker: TaskTracker):
        self.tracker = tracker
        self.attempts = RunningAttempts()  # so that a stop can reach them

    async def forwarded(self, envelope: Envelope) -> None:
        # A plain producer's invocation is first seen here: its task must exist while it
        # waits in the ladder, or it could not be read or stopped.
        await self.tracker.enqueued(envelope)

    async def expired(self, envelope: Envelope, now: int, reason: str) -> None:
        await self.tracker.expired(envelope, now, reason)

    async def held(self, envelope: Envelope, now: int, ms: int) -> None:
        await self.tracker.dequeued(envelope, now, f"due in {ms} ms")

    async def admit(
        self, envelope: Envelope, spec: FunctionSpec, *, alone: bool
    ) -> TaskAdmission:
        """Claim the task, and say what follows from the answer."""
        claimed = await self.tracker.claim(envelope, spec, now_ms(), alone=alone)
        task = claimed.task
        match claimed.claim:
            case Claim.CLAIMED:
                assert task is not None
                # Deaths are counted in the task's history, so they add up across the
                # deferrals of Busy, each of which sends the delivery on as a new message.
                died = deaths(task)
                if policy.poisoned(died, spec):
                    return Poisoned(died)
                return Claimed(task.lease_until or now_ms())
            case Claim.ORPHANED:
                return Orphaned()
            case Claim.BUSY if task is not None:
                return Busy(policy.busy_retry_at(task.lease_until or now_ms()))
        return NotRun(task.status.value if task is not None else "missing")

    async def run(
        self, envelope: Envelope, attempt: Coroutine[Any, Any, Outcome], *, cancellable: bool
    ) -> tuple[Outcome | None, bool]:
        """Run the attempt where a stop can reach it: its outcome (None if a stop cut it
        short) and whether a stop was asked for while it ran."""
        return await self.attempts.run(envelope.id, attempt, cancellable=cancellable)

    async def released(self, envelope: Envelope, reason: str, lease_until: int | None) -> None:
        """The attempt was cut short (shutdown) or not settled (a publish failed, the store
        is down): this worker lives on, so its claim must not pass for a death."""
        with contextlib.suppress(Exception):  # the store may be what failed
            await asyncio.shield(
                self.tracker.released(envelope, now_ms(), reason, lease_until=lease_until)
            )

    async def stopped(self, envelope: Envelope, detail: str) -> None:
        await self.tracker.stopped(envelope, now_ms(), detail)

    async def before_follow_up(
        self, envelope: Envelope, outcome: Outcome, settlement: policy.Settlement, now: int
    ) -> bool:
        """A retry (or a throttle) is recorded before it is sent, since its copy may be
        claimed at once and must find the task Retrying (Throttled); a worker that dies in
        between leaves it so, and it runs again. Whether the task was stopped meanwhile
        (the retry must not be sent)."""
        if not policy.follows_again(settlement):
            return False
        task = await self.tracker.settled(envelope, outcome, settlement, now)
        return task is not None and task.status is Status.STOPPED

    async def after_follow_up(
        self, envelope: Envelope, outcome: Outcome, settlement: policy.Settlement, now: int
    ) -> None:
        """An end state only once its record is confirmed: a worker that dies in between
        leaves the task Running, and the delivery runs again."""
        if not policy.follows_again(settlement):
            await self.tracker.settled(envelope, outcome, settlement, now)

    async def invalid(self, task_id: str, function: str, now: int, reason: str) -> None:
        await self.tracker.invalid(task_id, function, now, reason)

    async def poisoned(self, envelope: Envelope, record: Record) -> None:
        """A poison message's task ends Failed with the record's reason."""
        await self.tracker.gave_up(
            envelope, contract.DELIVERY_LIMIT_EXCEEDED, record.error_message, now_ms()
        )

    def stop_requested(self, task_id: Any) -> None:
        """A ``{"stop": task_id}`` broadcast on the control exchange (the worker's
        dispatcher): stops the attempt of that task if it runs here (SPEC section 6)."""
        if isinstance(task_id, str) and self.attempts.stop(task_id):
            log.info("task_stop_requested", invocation_id=task_id)


class NoTasks(TaskMode):
    """An invocation that is not a task: every step does nothing."""

    def __init__(self) -> None:
        pass

    async def forwarded(self, envelope: Envelope) -> None:
        pass

    async def expired(self, envelope: Envelope, now: int, reason: str) -> None:
        pass

    async def held(self, envelope: Envelope, now: int, ms: int) -> None:
        pass

    async def admit(
        self, envelope: Envelope, spec: FunctionSpec, *, alone: bool
    ) -> TaskAdmission:
        return UNTRACKED

    async def run(
        self, envelope: Envelope, attempt: Coroutine[Any, Any, Outcome], *, cancellable: bool
    ) -> tuple[Outcome | None, bool]:
        return await attempt, False

    async def released(self, envelope: Envelope, reason: str, lease_until: int | None) -> None:
        pass

    async def stopped(self, envelope: Envelope, detail: str) -> None:
        pass

    async def before_follow_up(
        self, envelope: Envelope, outcome: Outcome, settlement: policy.Settlement, now: int
    ) -> bool:
        return False

    async def after_follow_up(
        self, envelope: Envelope, outcome: Outcome, settlement: policy.Settlement, now: int
    ) -> None:
        pass

    async def poisoned(self, envelope: Envelope, record: Record) -> None:
        pass


NO_TASKS = NoTasks()


async def purge_forever(tracker: TaskTracker, retention_s: float) -> None:
    """Remove ended tasks older than ``retention_s``, every PURGE_EVERY_S."""
    retention_ms = round(retention_s * 1000)
    while True:
        try:
            store = await tracker.store()
            purged = await store.purge(now_ms() - retention_ms)
            if purged:
                log.info("tasks_purged", count=purged)
        except Exception as exc:
            log.warning("task_purge_failed", error=str(exc))
        await asyncio.sleep(PURGE_EVERY_S)
