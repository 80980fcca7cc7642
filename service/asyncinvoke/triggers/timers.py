"""The scheduler: while this worker leads, fire every enabled timer's ticks on time.

Each round asks ``ticks.plan`` what is due for each timer since the progress on the baton,
publishes those ticks as ordinary invocations (each confirmed by the broker), records the
new progress on the baton, then sleeps until the next tick of any timer or until the
definitions change. A tick is published at or after its scheduled time, never before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from asyncinvoke import clock, contract, dispatch
from asyncinvoke.broker import Broker
from asyncinvoke.contract import Envelope
from asyncinvoke.errors import AsyncInvokeError
from asyncinvoke.metrics import Metrics
from asyncinvoke.observability import get_logger
from asyncinvoke.topology import Names
from asyncinvoke.triggers import ticks
from asyncinvoke.triggers.definitions import TimerConfig, Trigger
from asyncinvoke.triggers.leader import Leadership

# How long a round that could not publish waits before it tries again.
RETRY_S = 1.0

log = get_logger(component="triggers")


def progress_key(trigger: Trigger) -> str:
    return f"{trigger.function}/{trigger.name}"


def anchor_ms(trigger: Trigger, now_ms: int, window_ms: int) -> int:
    """Where a timer new to the baton starts: its last change (created, re-enabled), so a
    tick between the change and the scheduler seeing it still fires, but never further
    back than the window; ``now`` for a timer of the functions file."""
    if trigger.modified_ms <= 0:
        return now_ms
    return max(min(trigger.modified_ms, now_ms), now_ms - window_ms)


class Scheduler:
    def __init__(
        self,
        broker: Broker,
        names: Names,
        leadership: Leadership,
        timers: Callable[[], Iterable[Trigger]],
        changed: asyncio.Event,
        metrics: Metrics,
        *,
        catch_up_s: float = ticks.DEFAULT_CATCH_UP_S,
    ):
        self.broker = broker
        self.names = names
        self.leadership = leadership
        self.timers = timers
        self.changed = changed
        self.metrics = metrics
        self.window_ms = round(catch_up_s * 1000)

    async def run(self) -> None:
        while True:
            await self.leadership.elected.wait()
            try:
                await self._lead()
            except AsyncInvokeError as exc:
                log.warning("trigger_round_failed", error=str(exc))
                await asyncio.sleep(RETRY_S)

    async def _lead(self) -> None:
        while self.leadership.is_leader:
            # Cleared before the definitions are read: a change during the round wakes
            # the sleep that follows it at once.
            self.changed.clear()
            handled = dict(self.leadership.handled)
            before = dict(handled)
            enabled = [
                timer
                for timer in self.timers()
                if isinstance(timer.config, TimerConfig) and timer.enabled
            ]
            now = clock.now_ms()
            for timer in enabled:
                handled.setdefault(progress_key(timer), anchor_ms(timer, now, self.window_ms))
            plans = await asyncio.gather(*(self._fire_due(timer, handled) for timer in enabled))
            live = {progress_key(timer) for timer in enabled}
            handled = {key: ms for key, ms in handled.items() if key in live}
            if handled != before and self.leadership.is_leader:
                await self.leadership.record(handled)
            await self._sleep_until(min((plan.next_ms for plan in plans), default=None))

    async def _fire_due(self, timer: Trigger, handled: dict[str, int]) -> ticks.TickPlan:
        assert isinstance(timer.config, TimerConfig)
        key = progress_key(timer)
        plan = ticks.plan(timer.config.schedule, handled[key], clock.now_ms(), self.window_ms)
        if plan.skipped:
            log.warning(
                "trigger_ticks_skipped",
                function=timer.function,
                trigger=timer.name,
                skipped=plan.skipped,
                first=plan.first_skipped_ms,
                last=plan.last_skipped_ms,
                catch_up_window_s=self.window_ms / 1000,
            )
            self.metrics.trigger_ticks.labels(timer.function, timer.name, "skipped").inc(
                plan.skipped
            )
        for scheduled_ms in plan.fire:
            await self._fire(timer, timer.config, scheduled_ms)
            handled[key] = scheduled_ms
        handled[key] = plan.handled_ms
        return plan

    async def _fire(self, timer: Trigger, config: TimerConfig, scheduled_ms: int) -> None:
        now = clock.now_ms()
        envelope = Envelope(
            id=ticks.tick_id(timer.function, timer.name, scheduled_ms),
            fn=timer.function,
            payload=ticks.timer_event(timer.name, scheduled_ms, config.payload),
            created_at=now,
        )
        await dispatch.send(self.broker, self.names, envelope, contract.encode(envelope))
        lateness_s = (clock.now_ms() - scheduled_ms) / 1000
        self.metrics.trigger_ticks.labels(timer.function, timer.name, "fired").inc()
        self.metrics.trigger_lateness.observe(lateness_s)
        log.info(
            "trigger_tick",
            function=timer.function,
            trigger=timer.name,
            invocation_id=envelope.id,
            scheduled_ms=scheduled_ms,
            lateness_ms=round(lateness_s * 1000),
        )

    async def _sleep_until(self, due_ms: int | None) -> None:
        """Until ``due_ms`` (the next tick of any timer), a change of definitions, or the
        loss of leadership, whichever comes first."""
        wakers = [
            asyncio.ensure_future(self.changed.wait()),
            asyncio.ensure_future(self.leadership.deposed.wait()),
        ]
        timeout = None if due_ms is None else max(0.0, (due_ms - clock.now_ms()) / 1000)
        try:
            await asyncio.wait(wakers, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waker in wakers:
                waker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waker
