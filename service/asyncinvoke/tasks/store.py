"""The task store's interface: one small protocol, two implementations (SQLite and
PostgreSQL) that pass the same contract tests (tests/integration/test_task_store.py).

Every write is atomic (compare-and-set on the current status), so several worker
processes, on one host (SQLite) or several (PostgreSQL), can share one store.
Times are integer milliseconds since the Unix epoch.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Protocol, TypeVar

import orjson

from asyncinvoke.contract import pack
from asyncinvoke.errors import TaskExists as TaskExists  # re-exported: the stores raise it
from asyncinvoke.errors import TaskFinished as TaskFinished
from asyncinvoke.errors import TaskNotEnded as TaskNotEnded
from asyncinvoke.errors import TaskNotFound as TaskNotFound
from asyncinvoke.errors import TaskNotRerunnable as TaskNotRerunnable
from asyncinvoke.tasks.states import REPLAYABLE, TERMINAL, WAITING, Status, can_transition
from asyncinvoke.text import encodable


@dataclass(frozen=True, slots=True)
class Event:
    status: Status
    timestamp: int  # ms
    detail: str = ""

    def __post_init__(self) -> None:
        # Text is made encodable here, where it enters a task, so no store sees it raw.
        object.__setattr__(self, "detail", encodable(self.detail))


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    function: str
    status: Status
    created_at: int
    updated_at: int
    attempts: int = 0  # attempts started
    started_at: int | None = None  # first attempt's start
    ended_at: int | None = None
    payload: bytes | None = None  # msgpack of the event, as the envelope carried it
    result: bytes | None = None  # msgpack of the return value, capped (see result_truncated)
    result_truncated: bool = False
    error: str | None = None
    lease_until: int | None = None  # a Running claim is held until then
    events: tuple[Event, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.error is not None:
            object.__setattr__(self, "error", encodable(self.error))

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


class Claim(Enum):
    """What ``claim`` found."""

    CLAIMED = "claimed"  # it is ours to run now
    FINISHED = "finished"  # terminal already: acknowledge the message, do not run
    BUSY = "busy"  # another worker holds a live lease: try again after it ends
    STOPPED = "stopped"  # a stop was requested before it started: it is now Stopped
    # Never returned by a store: the tracker's answer, without claiming, for a task still
    # Running whose lease ran out (its worker died running it): run it alone, as a suspect.
    ORPHANED = "orphaned"


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claim: Claim
    task: Task | None


@dataclass(frozen=True, slots=True)
class Page:
    tasks: list[Task]
    next_token: str | None


Method = TypeVar("Method", bound=Callable[..., Any])
# Names a write's operation, from the arguments it is called with (task id first).
Operation = Callable[..., str]
_WRITE = "__task_store_write__"


def write(operation: Operation | None = None) -> Callable[[Method], Method]:
    """Mark a protocol method as a write of a task (its id the first argument):
    tasks/traced.py puts a ``tasks.<operation>`` span around every method so marked.
    ``operation`` names it from the call's arguments; the method's name by default."""

    def mark(method: Method) -> Method:
        setattr(method, _WRITE, operation or (lambda *_, **__: method.__name__))
        return method

    return mark


def writes() -> dict[str, Operation]:
    """The protocol's writes (``@write``), by method name."""
    return {
        name: getattr(member, _WRITE)
        for name, member in vars(TaskStore).items()
        if hasattr(member, _WRITE)
    }


def _transition_operation(task_id: str, target: Status, *_: Any, **__: Any) -> str:
    return f"transition.{target.value}"


class TaskStore(Protocol):
    """What a worker and the gateway ask of a task store.

    An outage (the server down or restarting, the connection lost, the file locked) is
    raised as ``errors.TaskStoreUnavailable``, whatever the driver says, so that callers
    can tell "try again" from "this write is wrong" (``tasks.retrying`` tries again).
    The writes of a task are marked ``@write``: each is traced as a span.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    @write()
    async def create(
        self, task_id: str, function: str, payload: bytes | None, now_ms: int, detail: str = ""
    ) -> Task:
        """Insert an Enqueued task; TaskExists if the id is taken."""
        ...

    @write()
    async def ensure(
        self, task_id: str, function: str, payload: bytes | None, now_ms: int
    ) -> Task:
        """The task, inserted as Enqueued if it does not exist yet (a plain AMQP producer's)."""
        ...

    @write()
    async def claim(
        self, task_id: str, attempt: int, now_ms: int, lease_ms: int
    ) -> ClaimResult:
        """Atomically make a waiting task Running with a lease until now + lease_ms.

        Also claims a Running task whose lease has run out (its worker died).
        """
        ...

    @write(_transition_operation)
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
        """Move to ``target`` if allowed from the current status (states.can_transition);
        None if not allowed (the task moved on meanwhile). ``result`` is packed with
        msgpack and capped at the store's result limit."""
        ...

    @write()
    async def request_stop(self, task_id: str, now_ms: int) -> Task:
        """Waiting → Stopped at once; Running → Stopping. TaskNotFound / TaskFinished."""
        ...

    async def get(self, task_id: str) -> Task | None: ...

    async def ping(self) -> None:
        """Return once the store answers; TaskStoreUnavailable while it cannot."""
        ...

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
    ) -> Page: ...

    async def purge(self, older_than_ms: int) -> int:
        """Delete terminal tasks that ended before ``older_than_ms``; how many."""
        ...

    async def remember_nonce(self, nonce: str, expires_at_ms: int, now_ms: int) -> bool:
        """Remember a signed request's nonce until ``expires_at_ms``; False if it is
        remembered already (a replay), by this store object or any other on the same
        database. Expired nonces are pruned along the way."""
        ...

    @write()
    async def reopen(self, task_id: str, now_ms: int, detail: str) -> Task | None:
        """A replayed task that ended without success (states.REPLAYABLE) is Enqueued
        again; None if it is in any other status."""
        ...

    @write()
    async def rerun(self, task_id: str, now_ms: int, detail: str) -> Task:
        """An ended task (any terminal status) Enqueued again as a new attempt sequence,
        its events kept (``decide_rerun``). TaskNotFound; TaskNotEnded for a task that has
        not ended; TaskNotRerunnable for one without a stored payload."""
        ...


# Decisions shared by the implementations, pure over Task values. A store reads the task,
# asks one of these what it becomes, and writes that back with a compare-and-set on the
# row's version: the rules live here once, not once per SQL dialect.

ENQUEUED_OVER_AMQP = "received over AMQP"
STOPPED_BEFORE_START = "stopped before it started"
STOP_REQUESTED = "stop requested"
STOPPED_WORKER_GONE = "stopped: the worker running it ended"
MAX_PAGE_LIMIT = 100


def new_task(
    task_id: str, function: str, payload: bytes | None, now_ms: int, detail: str = ""
) -> Task:
    return Task(
        id=task_id,
        function=function,
        status=Status.ENQUEUED,
        created_at=now_ms,
        updated_at=now_ms,
        payload=payload,
        events=(Event(Status.ENQUEUED, now_ms, detail),),
    )


def _moved(task: Task, target: Status, now_ms: int, detail: str, **changes: Any) -> Task:
    ended = target in TERMINAL
    return replace(
        task,
        status=target,
        updated_at=now_ms,
        ended_at=now_ms if ended else task.ended_at,
        # Stopping still runs in its worker, so it keeps the lease another worker respects.
        lease_until=task.lease_until if target in (Status.RUNNING, Status.STOPPING) else None,
        events=(*task.events, Event(target, now_ms, detail)),
        **changes,
    )


def decide_claim(task: Task, attempt: int, now_ms: int, lease_ms: int) -> ClaimResult:
    """What ``claim`` finds, and the task as it is afterwards."""
    if task.status is Status.STOPPED and task.started_at is None:
        return ClaimResult(Claim.STOPPED, task)
    if task.status in TERMINAL:
        return ClaimResult(Claim.FINISHED, task)
    held = task.lease_until is not None and task.lease_until >= now_ms
    if task.status in (Status.RUNNING, Status.STOPPING) and held:
        return ClaimResult(Claim.BUSY, task)
    if task.status is Status.STOPPING:  # a stop was asked for, then its worker died
        return ClaimResult(Claim.STOPPED, _moved(task, Status.STOPPED, now_ms,
                                                 STOPPED_WORKER_GONE))
    running = _moved(
        task,
        Status.RUNNING,
        now_ms,
        f"attempt {attempt}",
        attempts=task.attempts + 1,
        started_at=now_ms if task.started_at is None else task.started_at,
    )
    return ClaimResult(Claim.CLAIMED, replace(running, lease_until=now_ms + lease_ms))


def pack_result(value: Any, max_bytes: int) -> tuple[bytes | None, bool]:
    """The msgpack of ``value`` and whether it was dropped for being over ``max_bytes``."""
    packed = pack(value)
    if len(packed) > max_bytes:
        return None, True
    return packed, False


def decide_transition(
    task: Task,
    target: Status,
    now_ms: int,
    detail: str,
    *,
    result: Any,
    error: str | None,
    result_max_bytes: int,
) -> Task | None:
    """The task moved to ``target``, or None if its current status does not allow that."""
    if not can_transition(task.status, target):
        return None
    changes: dict[str, Any] = {}
    if result is not None:
        changes["result"], changes["result_truncated"] = pack_result(result, result_max_bytes)
    if error is not None or target is Status.SUCCEEDED:
        changes["error"] = error  # a success clears the error of an earlier attempt
    if target is Status.RUNNING and task.started_at is None:
        changes["started_at"] = now_ms
    if target is Status.THROTTLED:
        # A throttle spends no attempt: the claim that counted one gives it back, so that
        # alreadyRetriedTimes counts only the attempts max_retries counts.
        changes["attempts"] = max(0, task.attempts - 1)
    return _moved(task, target, now_ms, detail, **changes)


def decide_stop(task: Task, now_ms: int) -> Task:
    """The task after a stop request: TaskFinished if it already ended."""
    if task.status in TERMINAL:
        raise TaskFinished(task)
    if task.status in WAITING:
        return _moved(task, Status.STOPPED, now_ms, STOPPED_BEFORE_START)
    if task.status is Status.RUNNING:
        return _moved(task, Status.STOPPING, now_ms, STOP_REQUESTED)
    return task  # Stopping already


def decide_reopen(task: Task, now_ms: int, detail: str) -> Task | None:
    """The task Enqueued again for a replay, or None if its status does not allow one."""
    if task.status not in REPLAYABLE:
        return None
    return replace(
        task,
        status=Status.ENQUEUED,
        updated_at=now_ms,
        ended_at=None,  # it has not ended now; its next end sets this again
        lease_until=None,
        events=(*task.events, Event(Status.ENQUEUED, now_ms, detail)),
    )


def decide_rerun(task: Task, now_ms: int, detail: str) -> Task:
    """The task Enqueued again for a re-run (``asyncinvoke task rerun``): any ended task,
    also one that succeeded or was stopped, since an operator asks for it by its id.

    A new attempt sequence: the attempt count, start and end, error and result start
    afresh, so that the task reads as this run; the events keep every earlier run.
    """
    if task.status not in TERMINAL:
        raise TaskNotEnded(task)
    if task.payload is None:
        raise TaskNotRerunnable(
            task,
            "no payload was kept for it (its message could not be decoded); replay its "
            "record from the failure queue instead ('asyncinvoke dlq replay --id ID')",
        )
    return replace(
        task,
        status=Status.ENQUEUED,
        updated_at=now_ms,
        attempts=0,
        started_at=None,
        ended_at=None,
        result=None,
        result_truncated=False,
        error=None,
        lease_until=None,
        events=(*task.events, Event(Status.ENQUEUED, now_ms, detail)),
    )


def encode_events(events: tuple[Event, ...]) -> str:
    return orjson.dumps([[e.status.value, e.timestamp, e.detail] for e in events]).decode()


def decode_events(text: str | bytes) -> tuple[Event, ...]:
    return tuple(Event(Status(status), ts, detail) for status, ts, detail in orjson.loads(text))


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise ValueError(f"limit={limit} is out of range 1..{MAX_PAGE_LIMIT}")


def encode_page_token(task: Task) -> str:
    """Opaque to callers: where the next page starts, as (created_at, id) of this page's last."""
    raw = orjson.dumps([task.created_at, task.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[int, str]:
    padded = token + "=" * (-len(token) % 4)
    try:
        created_at, task_id = orjson.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, TypeError):
        raise ValueError(f"next_token {token!r} is not one this store handed out") from None
    if not isinstance(created_at, int) or not isinstance(task_id, str):
        raise ValueError(f"next_token {token!r} is not one this store handed out")
    return created_at, task_id


# Signature nonces (gateway.auth.refuse_replay) share the task store's database, so every
# gateway that shares the store refuses a replay, also after a restart. Each remember
# deletes at most this many expired nonces: the table stays as small as the traffic of
# the replay window without a sweeper, and no request pays for a long backlog at once.
NONCE_PRUNE_BATCH = 100
