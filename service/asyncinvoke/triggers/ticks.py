"""Which ticks a scheduler fires now, and what a tick is: pure functions over the clock.

A scheduler remembers, per trigger, the last scheduled time it handled (``after_ms``).
``plan`` answers, at ``now_ms``: the ticks scheduled in ``(after_ms, now_ms]`` that are
still inside the catch-up window fire (once each, oldest first); older ones are skipped,
counted and logged by the caller. A tick is never fired before its scheduled time: ticks
after ``now_ms`` are not in the plan.

A tick is an ordinary invocation whose id is derived from the function, the trigger and
the scheduled time (``tick_id``): after a failover the new scheduler may fire a tick the
old one fired but had not yet recorded, and task mode refuses the second copy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from asyncinvoke.triggers.cron import Schedule, utc_iso

DEFAULT_CATCH_UP_S = 60.0
# Skipped ticks are counted one by one up to this many (a cron schedule has no
# arithmetic shortcut); beyond it the count says "at least".
MAX_COUNTED_SKIPS = 10_000
MAX_ID_LENGTH = 128


@dataclass(frozen=True, slots=True)
class TickPlan:
    fire: tuple[int, ...]  # scheduled times to fire now, oldest first
    skipped: int  # ticks older than the window, not fired
    first_skipped_ms: int | None
    last_skipped_ms: int | None
    handled_ms: int  # the new after_ms: every tick up to it is fired or skipped
    next_ms: int  # the first tick after now: when the scheduler wakes for this trigger


def plan(schedule: Schedule, after_ms: int, now_ms: int, window_ms: int) -> TickPlan:
    """The ticks in ``(after_ms, now_ms]``: fire those at or after ``now_ms - window_ms``.

    ``handled_ms`` moves only past ticks fired or skipped, so a round with nothing due
    changes nothing (and the scheduler records nothing).
    """
    oldest_fired = now_ms - window_ms
    handled = after_ms
    skipped, first, last = 0, None, None
    tick = schedule.next_after(after_ms)
    while tick < oldest_fired and tick <= now_ms:
        if first is None:
            first = tick
        last = handled = tick
        skipped += 1
        if skipped >= MAX_COUNTED_SKIPS:
            # Jump to the window: the count is a lower bound from here.
            handled = max(handled, oldest_fired - 1)
            tick = schedule.next_after(handled)
            break
        tick = schedule.next_after(tick)
    fire = []
    while tick <= now_ms:
        fire.append(tick)
        handled = tick
        tick = schedule.next_after(tick)
    return TickPlan(tuple(fire), skipped, first, last, handled, tick)


def tick_id(function: str, trigger: str, scheduled_ms: int) -> str:
    """``{function}-{trigger}-{scheduled_ms}``: the same on every scheduler; a hash stands
    in for the two names when the id would be over the contract's 128 characters."""
    wanted = f"{function}-{trigger}-{scheduled_ms}"
    if len(wanted) <= MAX_ID_LENGTH:
        return wanted
    digest = hashlib.sha256(f"{function}\0{trigger}".encode()).hexdigest()[:24]
    return f"t{digest}-{scheduled_ms}"


def timer_event(trigger: str, scheduled_ms: int, payload: str) -> bytes:
    """FC's timer event, as FC hands it to a function (JSON bytes)."""
    return orjson.dumps(
        {"triggerTime": utc_iso(scheduled_ms), "triggerName": trigger, "payload": payload}
    )
