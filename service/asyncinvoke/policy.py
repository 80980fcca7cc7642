"""Pure decisions over an invocation, its function's policy and the clock.

``admit`` decides what to do with a delivered invocation before it runs;
``settle`` decides what follows an attempt (a throttled one spends its own budget,
not a retry); the small functions below decide the
rest (task mode, a sync caller that is gone, a busy task's deferral, a poison
message). None does I/O: the pipeline carries out what they return.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from asyncinvoke import contract, ladder
from asyncinvoke.contract import Envelope, Outcome
from asyncinvoke.functions import Backoff, FunctionSpec

# A copy of a task that another worker runs now comes back this long after that
# worker's claim runs out: by then it has finished, or died.
BUSY_RETRY_AFTER_LEASE_MS = 1000
# A throttled invocation waits at least this long, whatever the function said
# (``Retry-After: 0``): a busy function must not be asked again in a tight loop for hours.
MIN_THROTTLE_WAIT_MS = 1000


# -- admission ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """Start it now."""


@dataclass(frozen=True, slots=True)
class Hold:
    """Due within ``ladder.HOLD_LIMIT_MS`` (a second and the ladder's lead): wait ``ms``
    here, then run."""

    ms: int


@dataclass(frozen=True, slots=True)
class Forward:
    """Due later: send it into the ladder for ``delay_s`` whole seconds."""

    delay_s: int


@dataclass(frozen=True, slots=True)
class Expire:
    """Older than the function's max_event_age: do not start it."""

    age_ms: int


RUN = Run()
Admission = Run | Hold | Forward | Expire


def task_mode(envelope: Envelope, spec: FunctionSpec | None) -> bool:
    """Whether an invocation is tracked as a task: its own say, else its function's
    (a function no longer configured tracks nothing)."""
    if envelope.task is not None:
        return envelope.task
    return spec.task_mode if spec is not None else False


def admit(envelope: Envelope, spec: FunctionSpec, now_ms: int) -> Admission:
    remaining_ms = envelope.due_at_ms() - now_ms
    # A longer remainder goes back into the ladder rather than waiting in the worker.
    if remaining_ms >= ladder.HOLD_LIMIT_MS:
        return Forward(ladder.seconds_to_wait(remaining_ms))
    age_ms = max(now_ms, envelope.due_at_ms()) - envelope.created_at
    if age_ms > spec.max_event_age_s * 1000:
        return Expire(age_ms)
    if remaining_ms > 0:
        return Hold(remaining_ms)
    return RUN


def poisoned(deaths: int, spec: FunctionSpec) -> bool:
    """Whether an invocation whose worker died ``deaths`` times must not run again: as the
    suspect queue counts, the first death and then ``delivery_limit`` more."""
    return deaths > spec.delivery_limit


def dead_lettered_deliveries(spec: FunctionSpec | None) -> int | None:
    """How many times the broker delivered a message it dead-lettered for its delivery
    limit: once in its function queue, then ``delivery_limit`` times alone as a suspect.
    None when the function is no longer configured."""
    return spec.delivery_limit + 1 if spec is not None else None


def busy_retry_at(lease_until: int) -> int:
    """When a copy of a task that another worker holds (until ``lease_until``) comes back."""
    return lease_until + BUSY_RETRY_AFTER_LEASE_MS


def caller_gone(envelope: Envelope, now_ms: int) -> bool:
    """Whether a synchronous call's caller has given up waiting: running it would answer
    no one."""
    return envelope.reply_by is not None and now_ms > envelope.reply_by


# -- settlement ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Done:
    """It succeeded."""

    @property
    def result(self) -> str:
        return "success"


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again, not before ``due_at`` (ms)."""

    due_at: int
    backoff_ms: int

    @property
    def result(self) -> str:
        return "retry"


@dataclass(frozen=True, slots=True)
class GiveUp:
    """No more attempts; the record carries ``condition``."""

    condition: str

    @property
    def result(self) -> str:
        return self.condition


@dataclass(frozen=True, slots=True)
class Throttle:
    """The function was busy: try again, not before ``due_at`` (ms), without spending a
    retry. ``since`` is the invocation's first throttle, where its budget counts from."""

    due_at: int
    wait_ms: int
    since: int

    @property
    def result(self) -> str:
        return "throttled"

    def next_envelope(self, envelope: Envelope) -> Envelope:
        """The copy that tries again: one throttle more, the same attempt number. It is no
        replay: a stray copy must not reopen a task that failed meanwhile."""
        return replace(
            envelope,
            throttles=envelope.throttles + 1,
            throttled_since=self.since,
            due_at=self.due_at,
            replay=False,
        )


DONE = Done()
Settlement = Done | Retry | Throttle | GiveUp


def backoff_ms(retry_index: int, backoff: Backoff, rng: random.Random | None = None) -> int:
    """The wait before retry number ``retry_index`` (0 for the first retry), in ms.

    ``initial * multiplier**retry_index`` capped at ``max``, then spread by ±jitter
    (and capped again, so ``max`` is a hard bound).
    """
    base = min(backoff.max, backoff.initial * backoff.multiplier**retry_index)
    spread = (rng or random).uniform(1.0 - backoff.jitter, 1.0 + backoff.jitter)
    return round(min(backoff.max, base * spread) * 1000)


def settle(
    outcome: Outcome,
    envelope: Envelope,
    spec: FunctionSpec,
    now_ms: int,
    rng: random.Random | None = None,
) -> Settlement:
    if outcome.ok:
        return DONE
    if outcome.throttled:
        return settle_throttle(outcome, envelope, spec, now_ms, rng)
    if not outcome.retryable:
        return GiveUp(contract.NON_RETRYABLE)
    if envelope.attempt >= spec.max_retries:
        return GiveUp(contract.RETRIES_EXHAUSTED)
    wait_ms = backoff_ms(envelope.attempt, spec.backoff, rng)
    due_at = now_ms + wait_ms
    if due_at - envelope.created_at > spec.max_event_age_s * 1000:
        return GiveUp(contract.EVENT_AGE_EXCEEDED)
    return Retry(due_at=due_at, backoff_ms=wait_ms)


def throttle_wait_ms(
    retry_after_ms: int | None,
    throttles: int,
    backoff: Backoff,
    rng: random.Random | None = None,
) -> int:
    """The wait before trying a throttled invocation again, in ms.

    The function's own word when it gave one (``Retry-After``, ``Throttled(retry_after=)``),
    never less, spread upwards by up to the jitter so that the invocations one busy function
    turned away do not all come back in the same instant; else the function's backoff,
    counted in throttles. Never less than MIN_THROTTLE_WAIT_MS.
    """
    if retry_after_ms is None:
        return max(MIN_THROTTLE_WAIT_MS, backoff_ms(throttles, backoff, rng))
    spread = (rng or random).uniform(1.0, 1.0 + backoff.jitter)
    return max(MIN_THROTTLE_WAIT_MS, retry_after_ms, round(retry_after_ms * spread))


def settle_throttle(
    outcome: Outcome,
    envelope: Envelope,
    spec: FunctionSpec,
    now_ms: int,
    rng: random.Random | None = None,
) -> Throttle | GiveUp:
    """Throttled: again after the wait, while the function's throttle budget (counted from
    the first throttle) and its max_event_age both last; max_retries is not touched."""
    since = envelope.throttled_since if envelope.throttled_since is not None else now_ms
    wait_ms = throttle_wait_ms(outcome.retry_after_ms, envelope.throttles, spec.backoff, rng)
    due_at = now_ms + wait_ms
    if due_at - since > spec.throttle_budget_s * 1000:
        return GiveUp(contract.THROTTLE_EXHAUSTED)
    if due_at - envelope.created_at > spec.max_event_age_s * 1000:
        return GiveUp(contract.EVENT_AGE_EXCEEDED)
    return Throttle(due_at=due_at, wait_ms=wait_ms, since=since)


def follows_again(settlement: Settlement) -> bool:
    """Whether the invocation is sent again (a retry or a throttle), not ended."""
    return isinstance(settlement, Retry | Throttle)
