"""The dead-letter tool's browse: reading ``{ns}.failed`` without taking anything away.

A browse consumes with manual acks and never acks what it only reads. It takes the N
records ready when it starts, in slices (one consumer per channel: a prefetch holds at
most 65535), holds them unacked, and at the end closes the channels in slice order,
which returns every record to the head of the queue in its order; a crash returns them
too. Acks (replay, purge) wait until their slice's consumer is cancelled, and a barrier
comes before a channel that acked is closed. An exclusive lock queue allows one browse
at a time. Why this way, and what it costs: docs/dlq.md, "How reading stays
non-destructive".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
from aiormq.abc import DeliveredMessage

from asyncinvoke import contract, topology
from asyncinvoke.broker import Broker
from asyncinvoke.consumer import settle_barrier
from asyncinvoke.dlq.records import Facts, facts_of_record
from asyncinvoke.errors import BrowseInterrupted, Busy, EmptyQueue, QueueMissing
from asyncinvoke.settings import Settings
from asyncinvoke.text import text_or_none

READ_SLICE = 5000  # deliveries one consumer holds when only reading: the memory bound
WRITE_SLICE = 1000  # when acking: bounds the records a crash leaves replayed and kept
MAX_SLICE = 65535  # the prefetch count is an AMQP short
MAX_SLICES = 1000  # channels per browse, well under RabbitMQ's default channel_max 2047
REPLAY_WINDOW = 256  # republished invocations awaiting their confirm
IDLE_CHECK_S = 1.0  # no delivery for this long: ask the queue whether more can come
STALL_TIMEOUT_S = 30.0
RETURN_TIMEOUT_S = 10.0  # wait for the returned records to be ready again
CLOSE_TIMEOUT_S = 30.0
LOCK_SUFFIX = ".dlq-lock"
FUNCTION_HEADER = contract.FUNCTION_HEADER
CONDITION_HEADER = contract.CONDITION_HEADER

Progress = Callable[[int, int], None]  # (records read, records in the browse)


def _no_progress(done: int, total: int) -> None:
    pass


# -- the browse (I/O) -------------------------------------------------------------------


def slice_size(count: int, base: int) -> int:
    """Records per consumer: ``base``, grown so that no browse needs over MAX_SLICES."""
    return min(MAX_SLICE, max(base, -(-count // MAX_SLICES)))


@dataclass(eq=False, slots=True)
class _Slice:
    """One consumer on its own channel: a contiguous run of the queue's head."""

    channel: aio_pika.abc.AbstractChannel
    underlay: aiormq.abc.AbstractChannel
    tag: str
    received: int = 0
    taken: int = 0  # handed to the reader
    acked: int = 0
    cancelled: bool = False
    pending_acks: list[int] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class Delivery:
    """One record as read; transient, dropped once handled."""

    message: DeliveredMessage
    slice: _Slice
    _record: Any = None
    _decoded: bool = False

    @property
    def body(self) -> bytes:
        return self.message.body

    def record(self) -> Any:
        """The decoded record, or None when the body is not msgpack."""
        if not self._decoded:
            self._decoded = True
            with contextlib.suppress(Exception):
                self._record = contract.unpack(self.message.body)
        return self._record

    def facts(self, *, need_timestamp: bool = False) -> Facts:
        properties = self.message.header.properties
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


class Browser:
    """Read the first N records of a queue without removing them (see the module doc).

    ``async with Browser(...) as browser: async for delivery in browser.deliveries()``;
    ``await browser.ack(delivery)`` removes one. Leaving the block returns every
    unacked record to the queue in its order, and waits until it is ready again.
    """

    def __init__(self, broker: Broker, queue: str, *, base_slice: int = READ_SLICE):
        self.broker = broker
        self.queue = queue
        self.base_slice = base_slice
        self.count = 0
        self.consumers = 0
        self.removed = 0
        self._slice_size = base_slice
        self._slices: list[_Slice] = []
        self._inbox: asyncio.Queue[Delivery] = asyncio.Queue()
        self._received = 0
        self._advancing: asyncio.Task[None] | None = None
        self._control: aio_pika.abc.AbstractChannel | None = None
        self._lost: str | None = None  # why a reading channel closed under us
        self._finishing = False

    @property
    def _connection(self) -> aio_pika.abc.AbstractConnection:
        if self.broker.connection is None:
            raise BrowseInterrupted(self.queue, "not connected")
        return self.broker.connection

    async def _control_channel(self) -> aiormq.abc.AbstractChannel:
        if self._control is None or self._control.is_closed:
            self._control = await self._connection.channel(publisher_confirms=False)
        return await self._control.get_underlay_channel()

    async def _ready(self) -> int:
        """Records ready in the queue now (not held by a consumer)."""
        try:
            control = await self._control_channel()
            declared = await control.queue_declare(self.queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise QueueMissing(self.queue) from None
        return declared.message_count or 0

    async def __aenter__(self) -> Browser:
        control = await self._control_channel()
        try:
            declared = await control.queue_declare(self.queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise QueueMissing(self.queue) from None
        control = await self._control_channel()
        try:
            # An exclusive queue is the lock: the broker drops it with our connection.
            await control.queue_declare(
                self.queue + LOCK_SUFFIX,
                exclusive=True,
                auto_delete=True,
                arguments={"x-queue-type": "classic"},
            )
        except aiormq.exceptions.ChannelLockedResource:
            raise Busy(self.queue) from None
        self.count = declared.message_count or 0
        self.consumers = declared.consumer_count or 0
        self._slice_size = slice_size(self.count, self.base_slice)
        if self.count:
            await self._open_slice()
        return self

    async def _open_slice(self) -> None:
        channel = await self._connection.channel(publisher_confirms=False)
        underlay = await channel.get_underlay_channel()
        await underlay.basic_qos(prefetch_count=self._slice_size)
        chunk = _Slice(channel, underlay, f"asyncinvoke-dlq-{os.getpid()}-{len(self._slices)}")
        self._slices.append(chunk)
        underlay.closing.add_done_callback(self._on_channel_closed)
        await underlay.basic_consume(self.queue, self._consumer(chunk), consumer_tag=chunk.tag)

    def _on_channel_closed(self, closing: asyncio.Future[Any]) -> None:
        # Closed by the broker (consumer timeout, lost connection): its records went back
        # to the queue and would be read twice, so the browse stops.
        reason = None if closing.cancelled() else closing.exception()
        if not self._finishing and self._lost is None:
            self._lost = str(reason) if reason else "the broker closed a reading channel"

    def _consumer(self, chunk: _Slice) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        async def on_message(message: DeliveredMessage) -> None:
            chunk.received += 1
            self._received += 1
            self._inbox.put_nowait(Delivery(message, chunk))
            self._maybe_advance()

        return on_message

    def _maybe_advance(self) -> None:
        """Start the next slice once this one has no credit left and half of it was read.

        Waiting for the reader keeps at most about 1.5 slices of deliveries in memory
        however slowly records are handled; starting at half hides the round trips.
        """
        current = self._slices[-1]
        if (
            current.received == self._slice_size
            and current.taken >= self._slice_size // 2
            and self._received < self.count
            and (self._advancing is None or self._advancing.done())
            and not current.cancelled
        ):
            self._advancing = asyncio.ensure_future(self._advance(current))

    async def _advance(self, full: _Slice) -> None:
        """The slice's consumer has no credit left: cancel it, start the next one."""
        await self._cancel(full)
        await self._open_slice()

    async def _cancel(self, chunk: _Slice) -> None:
        if chunk.cancelled:
            return
        await chunk.underlay.basic_cancel(chunk.tag)
        chunk.cancelled = True  # no delivery can follow an ack from now on
        pending, chunk.pending_acks = chunk.pending_acks, []
        for tag in pending:
            await chunk.underlay.basic_ack(tag)

    async def _settle_barrier(self, chunk: _Slice) -> None:
        """Return once the broker applied every ack sent on this channel: closing it
        would otherwise drop the acks RabbitMQ still held back (``consumer.settle_barrier``),
        and put replayed records back."""
        await settle_barrier(chunk.underlay, self.queue, keep_delivery=True)

    async def ack(self, delivery: Delivery) -> None:
        """Remove this record from the queue (for good once its slice is cancelled)."""
        chunk = delivery.slice
        tag = delivery.message.delivery_tag
        assert tag is not None, "a basic.deliver always has a delivery tag"
        try:
            if chunk.cancelled:
                await chunk.underlay.basic_ack(tag)
            else:
                chunk.pending_acks.append(tag)
        except aiormq.exceptions.AMQPError as exc:
            raise BrowseInterrupted(self.queue, str(exc) or type(exc).__name__) from None
        chunk.acked += 1
        self.removed += 1

    def _check(self) -> None:
        if self._advancing is not None and self._advancing.done():
            error = self._advancing.exception()
            if error is not None:
                raise BrowseInterrupted(self.queue, str(error) or type(error).__name__)
        if self._lost is not None:
            raise BrowseInterrupted(self.queue, self._lost)

    async def _next(self) -> Delivery | None:
        idle_since = time.monotonic()
        while True:
            self._check()
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(self._inbox.get(), IDLE_CHECK_S)
            self._check()
            try:
                ready = await self._ready()
            except aiormq.exceptions.AMQPError as exc:
                raise BrowseInterrupted(self.queue, str(exc) or type(exc).__name__) from None
            if ready == 0:  # someone else took the rest; allow for deliveries in flight
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(self._inbox.get(), IDLE_CHECK_S)
                return None
            if time.monotonic() - idle_since > STALL_TIMEOUT_S:
                raise BrowseInterrupted(
                    self.queue, f"no delivery for {STALL_TIMEOUT_S:g} s with {ready} ready"
                )

    async def deliveries(self) -> AsyncIterator[Delivery]:
        """The first ``count`` records, in queue order."""
        yielded = 0
        while yielded < self.count:
            delivery = await self._next()
            if delivery is None:
                return
            yielded += 1
            delivery.slice.taken += 1
            self._maybe_advance()
            yield delivery

    async def __aexit__(self, *exc_info: object) -> None:
        # Best effort: records not settled return to the queue anyway when the
        # connection closes; only their order may then differ.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._finish()

    async def _finish(self) -> None:
        self._finishing = True
        if self._advancing is not None:
            with contextlib.suppress(Exception):
                await self._advancing
        live = [chunk for chunk in self._slices if not chunk.underlay.is_closed]
        for chunk in live:
            await self._cancel(chunk)
        await asyncio.gather(*(self._settle_barrier(c) for c in live if c.acked))
        for chunk in live:  # in order: each returns its run of the queue, in order
            await chunk.channel.close()
        expected = self.count - self.removed
        deadline = time.monotonic() + RETURN_TIMEOUT_S
        while await self._ready() < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        control = await self._control_channel()
        await control.queue_delete(self.queue + LOCK_SUFFIX)
        if self._control is not None:
            await self._control.close()


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


