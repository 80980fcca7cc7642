"""The dead-letter tool's browse: ``{ns}.failed`` read without taking anything away.

``queue_browser`` does the AMQP side (slices, held deliveries, the barrier, the lock);
here its deliveries are records, with the facts the selectors read (id, function,
condition, time), from the headers where they are, else from the record.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from asyncinvoke import contract, queue_browser, topology
from asyncinvoke.broker import Broker
from asyncinvoke.dlq.records import Facts, facts_of_record
from asyncinvoke.errors import EmptyQueue
from asyncinvoke.queue_browser import READ_SLICE, Browsed
from asyncinvoke.settings import Settings
from asyncinvoke.text import text_or_none

WRITE_SLICE = 1000  # when acking: bounds the records a crash leaves replayed and kept
REPLAY_WINDOW = 256  # republished invocations awaiting their confirm
FUNCTION_HEADER = contract.FUNCTION_HEADER
CONDITION_HEADER = contract.CONDITION_HEADER

Progress = Callable[[int, int], None]  # (records read, records in the browse)


def _no_progress(done: int, total: int) -> None:
    pass


@dataclass(eq=False, slots=True)
class Delivery(Browsed):
    """One record as read; transient, dropped once handled."""

    _record: Any = None
    _decoded: bool = False

    def record(self) -> Any:
        """The decoded record, or None when the body is not msgpack."""
        if not self._decoded:
            self._decoded = True
            with contextlib.suppress(Exception):
                self._record = contract.unpack(self.message.body)
        return self._record

    def facts(self, *, need_timestamp: bool = False) -> Facts:
        properties = self.properties
        headers = properties.headers or {}
        facts = Facts(
            id=text_or_none(properties.message_id),
            function=text_or_none(headers.get(FUNCTION_HEADER)),
            condition=text_or_none(headers.get(CONDITION_HEADER)),
        )
        if need_timestamp or None in (facts.id, facts.function, facts.condition):
            from_record = facts_of_record(self.record())
            facts = Facts(
                id=facts.id or from_record.id,
                function=facts.function or from_record.function,
                condition=facts.condition or from_record.condition,
                timestamp_ms=from_record.timestamp_ms,
            )
        return facts


class Browser(queue_browser.Browser[Delivery]):
    """``{ns}.failed`` read without taking anything away; its deliveries are records."""

    def __init__(self, broker: Broker, queue: str, *, base_slice: int = READ_SLICE):
        super().__init__(broker, queue, Delivery, base_slice=base_slice)


@contextlib.asynccontextmanager
async def _browse(
    settings: Settings, *, base_slice: int = READ_SLICE, require_records: bool = True
) -> AsyncIterator[tuple[Broker, Browser]]:
    names = topology.Names(settings.namespace)
    async with (
        Broker(settings, name=f"asyncinvoke-dlq-{os.getpid()}") as broker,
        Browser(broker, names.failed, base_slice=base_slice) as browser,
    ):
        if require_records and browser.count == 0:
            raise EmptyQueue(names.failed)
        yield broker, browser


