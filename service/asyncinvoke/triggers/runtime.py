"""What a worker runs for triggers: its leader candidacy, the scheduler (which works only
while this worker leads), and one consumer per enabled RabbitMQ source trigger.

Definitions come from the functions file and from the configuration store (the API's,
which win over a file's trigger of the same name). The store tells every worker of each
change as it reads it from its stream, so a trigger deleted or disabled through the API
stops consuming within the time to close its channel, well inside 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from asyncinvoke.broker import Broker
from asyncinvoke.docstore import Change, DocumentStore
from asyncinvoke.metrics import Metrics
from asyncinvoke.observability import get_logger
from asyncinvoke.settings import Settings
from asyncinvoke.topology import Names
from asyncinvoke.triggers.definitions import SourceConfig, TimerConfig, Trigger
from asyncinvoke.triggers.leader import Leadership
from asyncinvoke.triggers.sources import SourceConsumer
from asyncinvoke.triggers.stored import KIND, TriggerStore
from asyncinvoke.triggers.timers import Scheduler

log = get_logger(component="triggers")


def effective(file: Iterable[Trigger], stored: Iterable[Trigger]) -> dict[tuple[str, str], Trigger]:
    """The triggers in force: the file's, with stored ones of the same name over them."""
    triggers = {trigger.key: trigger for trigger in file}
    triggers.update((trigger.key, trigger) for trigger in stored)
    return triggers


class Triggers:
    def __init__(
        self,
        broker: Broker,
        names: Names,
        settings: Settings,
        metrics: Metrics,
        functions: Iterable[str],
        file_triggers: Iterable[Trigger],
        store: DocumentStore | None = None,
    ):
        self.broker = broker
        self.names = names
        self.settings = settings
        self.metrics = metrics
        self.functions = frozenset(functions)
        self.file_triggers = list(file_triggers)
        self.stored = TriggerStore(store, file_triggers) if store is not None else None
        self._unsubscribe: Callable[[], None] | None = None
        self.current: dict[tuple[str, str], Trigger] = {}
        self.changed = asyncio.Event()
        self.leadership = Leadership(broker, names)
        self.scheduler = Scheduler(
            broker,
            names,
            self.leadership,
            self.timers,
            self.changed,
            metrics,
            catch_up_s=settings.trigger_catch_up_s,
        )
        self.sources: dict[tuple[str, str], tuple[SourceConsumer, asyncio.Task[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def timers(self) -> list[Trigger]:
        return [t for t in self.current.values() if isinstance(t.config, TimerConfig)]

    async def start(self) -> None:
        """Start after the store did (it has read its stream whole)."""
        if self.stored is not None:
            self._unsubscribe = self.stored.store.subscribe(self._on_change)
        self.reload()
        await self.leadership.start()
        self.metrics.trigger_leader.set_function(lambda: float(self.leadership.is_leader))
        self._tasks.append(asyncio.create_task(self.scheduler.run()))

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in self._tasks:
            task.cancel()
        for _, task in self.sources.values():
            task.cancel()
        for task in [*self._tasks, *(task for _, task in self.sources.values())]:
            with contextlib.suppress(BaseException):
                await task
        self.sources.clear()
        await self.leadership.stop()

    def not_ready(self) -> list[str]:
        """The source triggers that cannot consume now, and why; and the timers' leader
        queue, should it be gone."""
        reasons = [
            f"{consumer.describe()}: {consumer.problem}"
            for consumer, _ in self.sources.values()
            if consumer.problem is not None
        ]
        if self.leadership.problem is not None:
            reasons.append(f"timer triggers: {self.leadership.problem}")
        return reasons

    def _on_change(self, change: Change) -> None:
        if change.kind == KIND:
            self.reload()

    def reload(self) -> None:
        stored: Iterable[Trigger] = ()
        if self.stored is not None:
            stored = self.stored.stored()
        current = {
            key: trigger
            for key, trigger in effective(self.file_triggers, stored).items()
            if trigger.function in self.functions
        }
        if current != self.current:
            self.current = current
            self.changed.set()
        self._reconcile_sources()

    def _reconcile_sources(self) -> None:
        wanted = {
            key: trigger
            for key, trigger in self.current.items()
            if isinstance(trigger.config, SourceConfig) and trigger.enabled
        }
        for key, (consumer, task) in list(self.sources.items()):
            if wanted.get(key) != consumer.trigger:
                task.cancel()  # closes its connection: unacked messages go back
                del self.sources[key]
                if key not in wanted:  # gone or disabled: its series go too
                    consumer.forget_metrics()
                log.info("trigger_source_stopped", function=key[0], trigger=key[1])
        for key, trigger in wanted.items():
            if key not in self.sources:
                consumer = SourceConsumer(
                    trigger, self.broker, self.names, self.settings, self.metrics
                )
                self.sources[key] = (consumer, asyncio.create_task(consumer.run()))
