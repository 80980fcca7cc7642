"""The dead-letter tool: read, replay, purge and export the records in ``{ns}.failed``.

How reading stays non-destructive
---------------------------------
``{ns}.failed`` is a quorum queue; AMQP 0-9-1 has no "peek". A browse therefore
*consumes* with manual acks and simply never acks what it only reads:

1. A passive declare gives N, the records ready now. The browse takes the first N
   deliveries; records that arrive later are left for the next command.
2. Deliveries are held unacked while reading, so the queue cannot hand the same
   record out twice within one browse, and a crash (even ``kill -9``) returns them
   all: the broker requeues every unacked delivery of a closed connection.
3. At the end the browse closes its channels. RabbitMQ 3.10's quorum queue returns a
   closed consumer's deliveries sorted by delivery order into its "returns" list,
   which it serves before anything else, so the queue's order is kept. (A
   ``basic.nack`` of many deliveries is *not* ordered in 3.10: it walks an Erlang map.)

A consumer holds at most its prefetch (an AMQP short, 65535), so a browse reads the
queue in *slices*: one consumer per channel, each taking the next ``slice`` records.
The next slice starts only after the previous consumer was cancelled, so every slice
is a contiguous run of the queue and closing the channels in slice order returns the
whole head of the queue in its original order. It starts once the previous slice has
been delivered and half read, which bounds this process's memory to about 1.5 slices
of deliveries however slowly records are handled; each record is handled as it
arrives and only counters are kept.

Acks (replay, purge) are deferred while their slice's consumer is active and sent
once it is cancelled: an ack frees consumer credit, and a delivery the broker sends
on that credit *while* the consumer is being cancelled is returned out of order.
Before a channel that acked is closed, a barrier makes sure the broker has all its
acks (3.10 drops buffered acks at channel close; see ``Browser._settle_barrier``).
Replay acks a record only after the broker confirmed the republished invocation, so
a crash leaves a record replayed *and* still in the queue (it may run twice), never
neither. At most one slice of acks plus the publish window is at stake.

Each browse holds an exclusive lock queue, so two operators never see half the
records each. A browse counts as a delivery of every record it reads: harmless on
RabbitMQ 3.x, where ``{ns}.failed`` has no delivery limit. RabbitMQ 4.x gives quorum
queues a default limit of 20 that these returns may count against: there, give
``{ns}.failed`` a ``delivery-limit`` of -1 (unlimited) by policy (docs/dlq.md).

Errors (all ``AsyncInvokeError``, one line each)::

    DlqError
    ├── QueueMissing        {ns}.failed does not exist
    ├── EmptyQueue          {ns}.failed holds no record
    ├── NothingSelected     no record matches the selection (RecordNotFound: by id)
    ├── Busy                another dlq command is reading the queue
    ├── BrowseInterrupted   the broker closed the channel or connection mid-way
    ├── BadReplayFile       a --from-file line is not an exported record
    ├── RecordsSkipped      some selected records cannot be replayed; they stay
    └── ReplayIncomplete    some replays were not confirmed; their records stay
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import aio_pika
import aiormq
import orjson
from aiormq.abc import DeliveredMessage
from pamqp.common import FieldValue

from asyncinvoke import contract, dispatch, ladder, topology
from asyncinvoke.broker import Broker
from asyncinvoke.client import new_id
from asyncinvoke.contract import Envelope
from asyncinvoke.errors import AsyncInvokeError, InvalidMessage
from asyncinvoke.settings import Settings

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


# -- errors ------------------------------------------------------------------------------


class DlqError(AsyncInvokeError):
    """Base of the dead-letter tool's errors."""


class QueueMissing(DlqError):
    def __init__(self, queue: str):
        super().__init__(
            f"queue {queue!r} does not exist: nothing has failed in this namespace yet, or "
            "ASYNCINVOKE_NAMESPACE is wrong ('asyncinvoke topology declare' creates it)"
        )
        self.queue = queue


class EmptyQueue(DlqError):
    def __init__(self, queue: str):
        super().__init__(f"the failure queue {queue!r} is empty: no failed invocations")
        self.queue = queue


class NothingSelected(DlqError):
    def __init__(self, queue: str, selector: Selector, scanned: int):
        super().__init__(
            f"no record in {queue!r} matches {selector.describe()} ({scanned} records read)"
        )
        self.queue = queue
        self.selector = selector


class RecordNotFound(NothingSelected):
    def __init__(self, queue: str, invocation_id: str, scanned: int):
        DlqError.__init__(
            self,
            f"no record with id {invocation_id!r} in {queue!r} ({scanned} records read); "
            "'asyncinvoke dlq list' shows the ids",
        )
        self.queue = queue
        self.invocation_id = invocation_id


class Busy(DlqError):
    def __init__(self, queue: str):
        super().__init__(
            f"another 'asyncinvoke dlq' command is reading {queue!r} right now; run this one "
            "when it has finished (a reader holds the records it has read)"
        )
        self.queue = queue


class BrowseInterrupted(DlqError):
    def __init__(self, queue: str, reason: str):
        super().__init__(
            f"lost the broker while reading {queue!r} ({reason}); unsettled records "
            "went back to the queue, nothing was lost"
        )
        self.queue = queue


class BadReplayFile(DlqError):
    def __init__(self, path: str, line: int, reason: str):
        super().__init__(f"{path}:{line}: {reason}; nothing was replayed")
        self.path = path
        self.line = line


class RecordsSkipped(DlqError):
    def __init__(self, report: ReplayReport):
        super().__init__(
            f"{len(report.skipped)} selected record(s) cannot be replayed and stay in "
            f"{report.source!r} (reasons above; 'asyncinvoke dlq show ID' has the details)"
        )
        self.report = report


class ReplayIncomplete(DlqError):
    def __init__(self, report: ReplayReport, error: BaseException):
        super().__init__(
            f"replay stopped after {report.replayed} of {report.selected} records: {error}; "
            f"the {report.selected - report.replayed} not replayed are still in "
            f"{report.source!r}"
        )
        self.report = report


# -- selection and record views (pure) ---------------------------------------------------

_DURATION_RE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now_ms: int) -> int:
    """``90s``/``15m``/``2h``/``7d``/``1w`` back from now, or an ISO 8601 time → ms.

    An ISO time without an offset is local time.
    """
    match = _DURATION_RE.match(text.strip())
    if match:
        return now_ms - int(match.group(1)) * _UNIT_S[match.group(2)] * 1000
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (90s, 15m, 2h, 7d) nor an ISO 8601 time "
            "(2024-05-01T12:00, 2024-05-01T12:00:00+02:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Facts:
    """What selection looks at: taken from AMQP properties, else from the record."""

    id: str | None
    function: str | None
    condition: str | None
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Selector:
    """Which records a command acts on; every given criterion must hold."""

    ids: frozenset[str] = frozenset()
    function: str | None = None
    condition: str | None = None
    since_ms: int | None = None

    @property
    def needs_timestamp(self) -> bool:
        return self.since_ms is not None

    def matches(self, facts: Facts) -> bool:
        return (
            (not self.ids or facts.id in self.ids)
            and (self.function is None or facts.function == self.function)
            and (self.condition is None or facts.condition == self.condition)
            and (
                self.since_ms is None
                or (facts.timestamp_ms is not None and facts.timestamp_ms >= self.since_ms)
            )
        )

    def describe(self) -> str:
        parts = [f"--id {i}" for i in sorted(self.ids)]
        if self.function is not None:
            parts.append(f"--function {self.function}")
        if self.condition is not None:
            parts.append(f"--condition {self.condition}")
        if self.since_ms is not None:
            since = datetime.fromtimestamp(self.since_ms / 1000).astimezone()
            parts.append(f"--since {since.isoformat(timespec='seconds')}")
        return " ".join(parts) if parts else "--all"


ALL = Selector()


def _context(record: Any) -> Mapping[str, Any]:
    context = record.get("requestContext") if isinstance(record, dict) else None
    return context if isinstance(context, dict) else {}


def _str_or_none(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def facts_of_record(record: Any) -> Facts:
    context = _context(record)
    return Facts(
        id=_str_or_none(context.get("requestId")),
        function=_str_or_none(context.get("functionName")),
        condition=_str_or_none(context.get("condition")),
        timestamp_ms=_int_or_none(record.get("timestamp")) if isinstance(record, dict) else None,
    )


def error_line(record: Any) -> str:
    """The first line of the record's error, for a table."""
    if not isinstance(record, dict):
        return "(the message is not a record)"
    response = record.get("responsePayload")
    text = ""
    if isinstance(response, dict) and ("errorType" in response or "errorMessage" in response):
        kind, message = response.get("errorType"), response.get("errorMessage")
        text = ": ".join(str(part) for part in (kind, message) if part not in (None, ""))
    delivery = record.get("deliveryError")
    if not text and isinstance(delivery, dict):
        text = f"destination {delivery.get('destination')}: {delivery.get('error')}"
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


@dataclass(frozen=True, slots=True)
class Summary:
    """One line of ``dlq list``."""

    id: str | None
    function: str | None
    condition: str | None
    attempts: int | None
    timestamp_ms: int | None
    error: str

    def to_dict(self, now_ms: int) -> dict[str, Any]:
        age = None if self.timestamp_ms is None else (now_ms - self.timestamp_ms) / 1000
        return {
            "id": self.id,
            "function": self.function,
            "condition": self.condition,
            "attempts": self.attempts,
            "timestamp": self.timestamp_ms,
            "age_s": age,
            "error": self.error,
        }


def summarize(record: Any, fallback: Facts) -> Summary:
    facts = facts_of_record(record)
    return Summary(
        id=facts.id or fallback.id,
        function=facts.function or fallback.function,
        condition=facts.condition or fallback.condition,
        attempts=_int_or_none(_context(record).get("approximateInvokeCount")),
        timestamp_ms=facts.timestamp_ms,
        error=error_line(record),
    )


class NotReplayable(Exception):
    """A record whose original invocation cannot be sent again; it stays in the queue."""


def replay_envelope(record: Any, *, now_ms: int, fresh_id: str | None = None) -> Envelope:
    """The record's original invocation as a new acceptance: now, no delay, attempt 0."""
    invocation = record.get("invocation") if isinstance(record, dict) else None
    if isinstance(invocation, bytes | bytearray):
        raise NotReplayable(
            "the original message could not be decoded (the record keeps its raw bytes); "
            "fix it and publish it by hand"
        )
    if not isinstance(invocation, dict):
        raise NotReplayable("the record carries no original invocation")
    try:
        original = contract.from_wire(
            invocation, received_at_ms=now_ms, max_delay_s=ladder.MAX_DELAY_S
        )
    except InvalidMessage as exc:
        raise NotReplayable(f"the original invocation breaks the contract: {exc}") from None
    return dataclasses.replace(
        original,
        id=fresh_id or original.id,
        created_at=now_ms,
        delay=0,
        attempt=0,
        due_at=None,
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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
            id=_str_or_none(properties.message_id),
            function=_str_or_none(headers.get(FUNCTION_HEADER)),
            condition=_str_or_none(headers.get(CONDITION_HEADER)),
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
        """Return once the broker has every ack sent on this channel.

        RabbitMQ 3.10's channel buffers settles beyond 32 unapplied commands and drops
        the buffer when the channel closes (measured: up to 40 % of a burst of acks
        lost), which would put replayed records back. Two synchronous queue commands
        after the acks (a consume, a cancel) let the buffer drain first. ``x-credit``
        with a credit below 1 makes a consumer that is never given a message (encoded
        as a 64-bit 'long', which is what the broker reads it as); a broker that
        ignores the argument gives it the prefetch of 1 set here.
        """
        tag = chunk.tag + "-barrier"
        await chunk.underlay.basic_qos(prefetch_count=1)
        await chunk.underlay.basic_consume(
            self.queue, _hold, consumer_tag=tag, arguments=_ZERO_CREDIT
        )
        await chunk.underlay.basic_cancel(tag)

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


_ZERO_CREDIT: dict[str, FieldValue] = {"x-credit": {"credit": -(2**63), "drain": False}}


async def _hold(message: DeliveredMessage) -> None:
    """A barrier consumer's delivery (never, on 3.x) stays unacked: it returns at close."""


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


# -- reading commands --------------------------------------------------------------------


@dataclass(slots=True)
class Group:
    function: str | None
    condition: str | None
    count: int = 0
    oldest_ms: int | None = None
    newest_ms: int | None = None

    def add(self, timestamp_ms: int | None) -> None:
        self.count += 1
        if timestamp_ms is None:
            return
        if self.oldest_ms is None or timestamp_ms < self.oldest_ms:
            self.oldest_ms = timestamp_ms
        if self.newest_ms is None or timestamp_ms > self.newest_ms:
            self.newest_ms = timestamp_ms


@dataclass(slots=True)
class Stats:
    queue: str
    total: int
    groups: list[Group]
    other_consumers: int

    @property
    def oldest_ms(self) -> int | None:
        return min((g.oldest_ms for g in self.groups if g.oldest_ms is not None), default=None)

    @property
    def newest_ms(self) -> int | None:
        return max((g.newest_ms for g in self.groups if g.newest_ms is not None), default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "total": self.total,
            "oldest": self.oldest_ms,
            "newest": self.newest_ms,
            "other_consumers": self.other_consumers,
            "groups": [dataclasses.asdict(group) for group in self.groups],
        }


async def stats(settings: Settings, progress: Progress = _no_progress) -> Stats:
    """Counts by function and condition, with the oldest and newest record of each."""
    groups: dict[tuple[str | None, str | None], Group] = {}
    total = 0
    async with _browse(settings, require_records=False) as (_, browser):
        async for delivery in browser.deliveries():
            facts = delivery.facts(need_timestamp=True)
            key = (facts.function, facts.condition)
            if key not in groups:
                groups[key] = Group(facts.function, facts.condition)
            groups[key].add(facts.timestamp_ms)
            total += 1
            progress(total, browser.count)
        other_consumers = browser.consumers
    ordered = sorted(groups.values(), key=lambda g: (-g.count, str(g.function), str(g.condition)))
    return Stats(topology.Names(settings.namespace).failed, total, ordered, other_consumers)


async def list_records(
    settings: Settings,
    selector: Selector,
    emit: Callable[[Summary], None],
    *,
    limit: int | None = None,
) -> tuple[int, int]:
    """Emit a summary of each selected record, in queue order; (listed, in the queue)."""
    listed = 0
    async with _browse(settings) as (_, browser):
        async for delivery in browser.deliveries():
            facts = delivery.facts(need_timestamp=selector.needs_timestamp)
            if not selector.matches(facts):
                continue
            emit(summarize(delivery.record(), facts))
            listed += 1
            if limit is not None and listed >= limit:
                break
        if not listed:
            raise NothingSelected(browser.queue, selector, browser.count)
        return listed, browser.count


async def show(settings: Settings, invocation_id: str) -> list[Any]:
    """Every record of this invocation id (normally one), decoded whole."""
    found: list[Any] = []
    scanned = 0
    async with _browse(settings) as (_, browser):
        async for delivery in browser.deliveries():
            scanned += 1
            if delivery.facts().id == invocation_id:
                record = delivery.record()
                found.append(record if record is not None else {"undecodable": delivery.body})
        if not found:
            raise RecordNotFound(browser.queue, invocation_id, scanned)
    return found


def export_line(record: Any, body: bytes) -> bytes:
    """One line of an export: the record as JSON, and its exact bytes for a lossless replay."""
    return contract.to_json({"record": record, "msgpack": base64.b64encode(body).decode()}) + b"\n"


@contextlib.contextmanager
def _output(path: str) -> Iterator[IO[bytes]]:
    """The file written whole or not at all (via FILE.partial); ``-`` is stdout."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    partial_path = Path(path + ".partial")
    try:
        try:
            stream = partial_path.open("wb", buffering=1 << 20)
        except OSError as exc:
            raise DlqError(f"cannot write {partial_path}: {exc.strerror or exc}") from None
        with stream:
            yield stream
        try:
            os.replace(partial_path, path)
        except OSError as exc:
            raise DlqError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        partial_path.unlink(missing_ok=True)


def _write(stream: IO[bytes], data: bytes, path: str) -> None:
    try:
        stream.write(data)
    except OSError as exc:
        raise DlqError(f"cannot write {path}: {exc.strerror or exc}") from None


async def export(
    settings: Settings, path: str, selector: Selector = ALL, progress: Progress = _no_progress
) -> int:
    """Write the selected records to ``path`` as JSON lines; returns how many."""
    written = scanned = 0
    async with _browse(settings) as (_, browser):
        with _output(path) as stream:
            async for delivery in browser.deliveries():
                scanned += 1
                if selector is ALL or selector.matches(
                    delivery.facts(need_timestamp=selector.needs_timestamp)
                ):
                    _write(stream, export_line(delivery.record(), delivery.body), path)
                    written += 1
                progress(scanned, browser.count)
            if not written:
                raise NothingSelected(browser.queue, selector, scanned)
    return written


async def count(
    settings: Settings, selector: Selector, progress: Progress = _no_progress
) -> int:
    """How many records a purge or replay with ``selector`` would take now."""
    selected = scanned = 0
    async with _browse(settings) as (_, browser):
        async for delivery in browser.deliveries():
            scanned += 1
            if selector.matches(delivery.facts(need_timestamp=selector.needs_timestamp)):
                selected += 1
            progress(scanned, browser.count)
        if not selected:
            raise NothingSelected(browser.queue, selector, browser.count)
    return selected


@dataclass(slots=True)
class PurgeReport:
    queue: str
    scanned: int
    purged: int


async def purge(
    settings: Settings, selector: Selector, progress: Progress = _no_progress
) -> PurgeReport:
    """Remove the selected records for good."""
    scanned = purged = 0
    async with _browse(settings, base_slice=WRITE_SLICE) as (_, browser):
        async for delivery in browser.deliveries():
            scanned += 1
            if selector.matches(delivery.facts(need_timestamp=selector.needs_timestamp)):
                await browser.ack(delivery)
                purged += 1
            progress(scanned, browser.count)
        if not purged:
            raise NothingSelected(browser.queue, selector, scanned)
    return PurgeReport(browser.queue, scanned, purged)


# -- replay ------------------------------------------------------------------------------


@dataclass(slots=True)
class ReplayReport:
    source: str  # the queue, or the file replayed from
    dry_run: bool
    scanned: int = 0
    selected: int = 0
    replayed: int = 0  # confirmed by the broker (dry run: would be)
    skipped: list[tuple[str | None, str]] = field(default_factory=list)  # (id, why)
    new_ids: dict[str, str] = field(default_factory=dict)  # old id → new id (--new-id)
    by_function: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dry_run": self.dry_run,
            "scanned": self.scanned,
            "selected": self.selected,
            "replayed": self.replayed,
            "by_function": self.by_function,
            "skipped": [{"id": i, "reason": why} for i, why in self.skipped],
            "new_ids": self.new_ids,
        }


class _Replayer:
    """Publishes replays with a window of confirms in flight; acks each after its confirm."""

    def __init__(
        self,
        broker: Broker,
        report: ReplayReport,
        *,
        dry_run: bool,
        fresh_ids: bool,
        on_confirmed: Callable[[Delivery], Any] | None = None,
    ):
        self.broker = broker
        self.names = topology.Names(broker.settings.namespace)
        self.report = report
        self.dry_run = dry_run
        self.fresh_ids = fresh_ids
        self.on_confirmed = on_confirmed
        self.error: BaseException | None = None
        self._window = asyncio.Semaphore(REPLAY_WINDOW)
        self._tasks: set[asyncio.Task[None]] = set()
        self._functions: dict[str, bool] = {}

    async def _function_exists(self, function: str) -> bool:
        if function not in self._functions:
            assert self.broker.connection is not None
            depth = await topology.queue_depth(
                self.broker.connection, self.names.function_queue(function)
            )
            self._functions[function] = depth is not None
        return self._functions[function]

    async def offer(self, record: Any, delivery: Delivery | None, fallback_id: str | None) -> None:
        """Replay one selected record, or note why it is skipped."""
        self.report.selected += 1
        try:
            envelope = replay_envelope(
                record, now_ms=now_ms(), fresh_id=new_id() if self.fresh_ids else None
            )
        except NotReplayable as exc:
            self.report.skipped.append((facts_of_record(record).id or fallback_id, str(exc)))
            return
        original_id = facts_of_record(record).id or fallback_id or envelope.id
        if not await self._function_exists(envelope.fn):
            self.report.skipped.append(
                (
                    original_id,
                    f"function {envelope.fn!r} has no queue in namespace {self.names.ns!r}: "
                    "start its worker or run 'asyncinvoke topology declare', then replay",
                )
            )
            return
        if self.fresh_ids:
            self.report.new_ids[original_id] = envelope.id
        if self.dry_run:
            self._count(envelope)
            return
        await self._window.acquire()
        task = asyncio.create_task(self._publish(envelope, delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count(self, envelope: Envelope) -> None:
        self.report.replayed += 1
        self.report.by_function[envelope.fn] = self.report.by_function.get(envelope.fn, 0) + 1

    async def _publish(self, envelope: Envelope, delivery: Delivery | None) -> None:
        try:
            await dispatch.send(self.broker, self.names, envelope)
        except Exception as exc:  # refused, returned, timed out, or the connection is gone
            self.error = self.error or exc
            return
        finally:
            self._window.release()
        self._count(envelope)
        if delivery is not None and self.on_confirmed is not None:
            try:
                await self.on_confirmed(delivery)  # only now: the record outlives a crash
            except DlqError as exc:
                self.error = self.error or exc

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.drain()


async def replay(
    settings: Settings,
    selector: Selector,
    *,
    dry_run: bool = False,
    fresh_ids: bool = False,
    progress: Progress = _no_progress,
) -> ReplayReport:
    """Republish the selected records' invocations, then remove each confirmed one."""
    async with _browse(settings, base_slice=WRITE_SLICE) as (broker, browser):
        report = ReplayReport(browser.queue, dry_run)
        replayer = _Replayer(
            broker, report, dry_run=dry_run, fresh_ids=fresh_ids, on_confirmed=browser.ack
        )
        try:
            async for delivery in browser.deliveries():
                report.scanned += 1
                facts = delivery.facts(need_timestamp=selector.needs_timestamp)
                if selector.matches(facts):
                    await replayer.offer(delivery.record(), delivery, facts.id)
                progress(report.scanned, browser.count)
                if replayer.error is not None:
                    break
            await replayer.drain()
        finally:
            await replayer.cancel()
        if replayer.error is not None:
            raise ReplayIncomplete(report, replayer.error)
        if not report.selected:
            raise NothingSelected(browser.queue, selector, report.scanned)
    return report


def _file_records(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, record) of an export; a record line (``show --json``) is taken too."""
    try:
        with open(path, "rb") as stream:
            for number, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    document = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise BadReplayFile(path, number, f"not JSON ({exc})") from None
                if isinstance(document, dict) and isinstance(document.get("msgpack"), str):
                    try:
                        record = contract.unpack(base64.b64decode(document["msgpack"]))
                    except Exception as exc:
                        raise BadReplayFile(path, number, f"bad 'msgpack' field ({exc})") from None
                elif isinstance(document, dict) and "requestContext" in document:
                    record = document  # a record as JSON: bytes were base64, they stay text
                else:
                    raise BadReplayFile(
                        path, number, "not a record ('asyncinvoke dlq export' writes them)"
                    )
                yield number, record
    except OSError as exc:
        raise DlqError(f"cannot read {path}: {exc.strerror or exc}") from None


async def replay_file(
    settings: Settings,
    path: str,
    selector: Selector = ALL,
    *,
    dry_run: bool = False,
    fresh_ids: bool = False,
    progress: Progress = _no_progress,
) -> ReplayReport:
    """Replay the records of an export file; the failure queue is not touched."""
    total = sum(1 for _ in _file_records(path))  # the whole file is checked before any publish
    report = ReplayReport(path, dry_run)
    async with Broker(settings, name=f"asyncinvoke-dlq-{os.getpid()}") as broker:
        replayer = _Replayer(broker, report, dry_run=dry_run, fresh_ids=fresh_ids)
        try:
            for _, record in _file_records(path):
                report.scanned += 1
                if selector.matches(facts_of_record(record)):
                    await replayer.offer(record, None, None)
                progress(report.scanned, total)
                if replayer.error is not None:
                    break
            await replayer.drain()
        finally:
            await replayer.cancel()
    if replayer.error is not None:
        raise ReplayIncomplete(report, replayer.error)
    if not report.selected:
        raise DlqError(f"no record in {path} matches {selector.describe()} ({total} records)")
    return report
