"""Task states and the transitions between them (SPEC section 6). Pure.

    Enqueued ─► Dequeued ─► Running ─► Succeeded
        │           │          ├─────► Failed
        │           │          ├─────► Retrying ─► Dequeued / Running ...
        │           │          ├─────► Throttled ─► Dequeued / Running ... (no retry spent)
        │           │          └─────► Stopping ─► Stopped
        └───────────┴──(stop before start)──────► Stopped
    (not started in time: Expired; broke the contract: Invalid)

A terminal state is never left by a transition. Only a replay from the failure queue
(``asyncinvoke dlq replay``) reopens a task that ended without success (Failed, Expired,
Invalid): it is Enqueued again, a new attempt of the same task. Succeeded is final, and so
is Stopped, which an operator asked for, for every copy of a message: only an operator's
re-run (``asyncinvoke task rerun``, ``store.decide_rerun``) enqueues any ended task again,
as a new attempt sequence under the same id.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    ENQUEUED = "Enqueued"
    DEQUEUED = "Dequeued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    RETRYING = "Retrying"
    # Our addition to FC's names: the function was busy (HTTP 429/503, no connection,
    # ``Throttled``); the task waits to try again on its throttle budget.
    THROTTLED = "Throttled"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    EXPIRED = "Expired"
    INVALID = "Invalid"


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.STOPPED, Status.EXPIRED,
                      Status.INVALID})
# Ended without success and not by a stop: a replay makes these Enqueued again.
REPLAYABLE = frozenset({Status.FAILED, Status.EXPIRED, Status.INVALID})
# Not started yet: a stop makes these Stopped at once.
WAITING = frozenset({Status.ENQUEUED, Status.DEQUEUED, Status.RETRYING, Status.THROTTLED})

_ALLOWED: dict[Status, frozenset[Status]] = {
    Status.ENQUEUED: frozenset({Status.DEQUEUED, Status.RUNNING, Status.STOPPED,
                                Status.EXPIRED, Status.INVALID, Status.FAILED}),
    Status.DEQUEUED: frozenset({Status.RUNNING, Status.STOPPED, Status.EXPIRED,
                                Status.INVALID, Status.FAILED}),
    Status.RETRYING: frozenset({Status.DEQUEUED, Status.RUNNING, Status.STOPPED,
                                Status.EXPIRED, Status.FAILED}),
    Status.THROTTLED: frozenset({Status.DEQUEUED, Status.RUNNING, Status.STOPPED,
                                 Status.EXPIRED, Status.FAILED}),
    Status.RUNNING: frozenset({Status.SUCCEEDED, Status.FAILED, Status.RETRYING,
                               Status.THROTTLED, Status.STOPPING, Status.STOPPED}),
    Status.STOPPING: frozenset({Status.STOPPED}),
}


def can_transition(current: Status, target: Status) -> bool:
    """Whether ``current`` may become ``target``. Terminal states go nowhere."""
    return target in _ALLOWED.get(current, frozenset())


def is_terminal(status: Status) -> bool:
    return status in TERMINAL
