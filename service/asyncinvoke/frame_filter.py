"""The delivery fast path: the function queues' deliveries read straight off the socket.

aiormq reads a delivery as three frames, each through its own round of awaits: three
reads from a stream, a lock, pamqp's unmarshalling of every field and property, a put
into the channel's queue and a get from it, then a task for the consumer's callback.
On a no-op invocation that is most of the worker's CPU (docs/benchmarks.md, issue 18).

Here a protocol of ours sits between the socket and aiormq's stream reader. It splits
what arrives into frames (the 7-byte header says how long each is) and, for the
consumers registered with it, takes their ``basic.deliver``, content header and body
frames out of the stream, reads the few fields the pipeline uses with ``struct``, and
hands each delivery to its callback at once. Every other frame goes on to aiormq, in
order, unchanged: the handshake, heartbeats, other channels, publisher confirms,
``basic.cancel`` from the broker, channel closes, replies to aiormq's own commands.
aiormq keeps the connection, the channels, acks and nacks, and reconnects. TLS
connections (``amqps://``) are read by aiormq as before: the filter has not been tested
behind a TLS transport yet.

Why it is sound:

- It uses aiormq's public ``transport_factory`` (the streams aiormq reads from are
  ours to make), nothing private of aiormq. ``test_frame_filter.py`` fails loudly if
  aiormq or aio-pika stop taking it through (then the worker falls back, below).
- A consumer is registered under a tag of ours before its ``basic.consume`` is sent,
  and forgotten when its ``basic.cancel-ok``, a ``basic.cancel`` from the broker or its
  channel's close comes in, in stream order: exactly the deliveries aiormq would have
  given it.
- Taking frames away must not make aiormq think the connection is dead: it counts the
  time since the last frame it read. While frames are taken and none passed on, a
  heartbeat frame is passed on in their place once a second.
- A consumer for which no filter can be found with certainty (another transport, a
  channel the filter did not see open) is subscribed the usual way, through aiormq.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
import weakref
from collections.abc import Callable
from typing import Any

from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
from yarl import URL

from asyncinvoke.observability import get_logger

log = get_logger(component="consumer")

FRAME_METHOD, FRAME_HEADER, FRAME_BODY = 1, 2, 3
FRAME_END = 0xCE
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
# Pass a heartbeat on to aiormq at least this often while every frame is taken.
LIVENESS_INTERVAL_S = 1.0

_HEADER = struct.Struct(">BHI")  # frame type, channel, payload size
_METHOD = struct.Struct(">HH")  # class id, method id
_LONGLONG = struct.Struct(">Q")
_CONTENT = struct.Struct(">HHQH")  # class id, weight, body size, property flags
_LONG = struct.Struct(">I")
_SHORT = struct.Struct(">H")

# (class id, method id) of the methods read here.
BASIC_DELIVER = (60, 60)
BASIC_CANCEL = (60, 30)
BASIC_CANCEL_OK = (60, 31)
CHANNEL_OPEN_OK = (20, 11)
CHANNEL_CLOSE = (20, 40)
CHANNEL_CLOSE_OK = (20, 41)

# Content header property flags (AMQP 0-9-1, basic class), in wire order.
_CONTENT_TYPE = 1 << 15
_CONTENT_ENCODING = 1 << 14
_HEADERS = 1 << 13
_DELIVERY_MODE = 1 << 12
_PRIORITY = 1 << 11
_CORRELATION_ID = 1 << 10
_REPLY_TO = 1 << 9
_EXPIRATION = 1 << 8
_MESSAGE_ID = 1 << 7

_tags = itertools.count(1)


class FastDelivery:
    """A delivery as the fast path reads it (the attributes of ``consumer.Delivery``)."""

    __slots__ = (
        "body",
        "channel",
        "correlation_id",
        "delivery_tag",
        "message_id",
        "redelivered",
        "reply_to",
        "routing_key",
    )

    body: bytes
    channel: Any
    correlation_id: str | None
    delivery_tag: int | None
    message_id: str | None
    redelivered: bool | None
    reply_to: str | None
    routing_key: str | None


OnDelivery = Callable[[FastDelivery], None]


class _Incoming:
    """A delivery between its ``basic.deliver`` frame and the last of its body."""

    __slots__ = ("delivery", "on_delivery", "parts", "remaining")

    def __init__(self, delivery: FastDelivery, on_delivery: OnDelivery):
        self.delivery = delivery
        self.on_delivery = on_delivery
        self.remaining = -1  # body bytes still to come; -1 until the header came
        self.parts: list[bytes] = []


class _Channel:
    __slots__ = ("channel", "consumers", "incoming")

    def __init__(self, channel: Any):
        self.channel = channel  # aiormq's channel object, which the acks go through
        self.consumers: dict[bytes, OnDelivery] = {}
        self.incoming: _Incoming | None = None


class FrameFilter(asyncio.Protocol):
    """Between the transport and aiormq's stream: takes the registered consumers'
    deliveries out, passes everything else on."""

    def __init__(self, inner: asyncio.Protocol, transport: asyncio.BaseTransport):
        self.inner = inner
        self.transport = transport
        self.connection: Any = None  # the aiormq connection on this transport, once bound
        self._buffer = b""
        self._fast: dict[int, _Channel] = {}
        self._open: set[int] = set()  # channel numbers the broker confirmed open
        self._last_passed = time.monotonic()
        self._broken = False  # a frame it could not read: the connection is dropped

    # -- consumers ---------------------------------------------------------------------

    def can_serve(self, channel: Any) -> bool:
        """Whether ``channel`` (aiormq's) is on this transport, open, and seen opened."""
        return (
            not self._broken
            and not self.transport.is_closing()
            and channel.connection is self.connection
            and not channel.is_closed
            and channel.number in self._open
        )

    def register(self, channel: Any, on_delivery: OnDelivery) -> str:
        """A consumer tag whose deliveries on ``channel`` go to ``on_delivery``; pass it
        to ``basic_consume`` (the registration must come first)."""
        state = self._fast.get(channel.number)
        if state is None or state.channel is not channel:
            state = self._fast[channel.number] = _Channel(channel)
        tag = f"asyncinvoke-fast-{channel.number}-{next(_tags)}"
        state.consumers[tag.encode()] = on_delivery
        return tag

    def unregister(self, channel: Any, tag: str) -> None:
        state = self._fast.get(channel.number)
        if state is not None and state.channel is channel:
            state.consumers.pop(tag.encode(), None)

    # -- the stream --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return  # the transport is being aborted
        if self._buffer:
            data = self._buffer + data
        size = len(data)
        position = 0
        kept_from = 0  # start of the run of frames passed on, not yet handed over
        kept: list[bytes] = []
        fast = self._fast
        try:
            while position + 7 <= size:
                frame_type, number, length = _HEADER.unpack_from(data, position)
                end = position + 8 + length
                if end > size:
                    break
                if data[end - 1] != FRAME_END:
                    raise ValueError(f"frame type {frame_type} on channel {number} ends wrong")
                if frame_type == FRAME_METHOD and number and length >= 4:
                    method = _METHOD.unpack_from(data, position + 7)
                    if method != BASIC_DELIVER:
                        self._on_method(number, method, data, position + 11)
                        position = end
                        continue
                state = fast.get(number) if number else None
                if state is not None and self._take(
                    state, frame_type, data, position + 7, end - 1
                ):
                    if kept_from < position:
                        kept.append(data[kept_from:position])
                    kept_from = end
                position = end
        except Exception as exc:
            self._give_up(exc, data[kept_from:position], kept)
            return
        self._buffer = data[position:] if position < size else b""
        if kept_from == 0 and position == size:
            if size:
                self._pass(data)
            return
        if kept_from < position:
            kept.append(data[kept_from:position])
        if kept:
            self._pass(b"".join(kept))
        else:
            now = time.monotonic()
            if now - self._last_passed >= LIVENESS_INTERVAL_S:
                # aiormq reads nothing while deliveries are taken: a heartbeat keeps
                # its count of the time since the last frame from running out.
                self._pass(HEARTBEAT_FRAME)

    def _give_up(self, exc: Exception, rest: bytes, kept: list[bytes]) -> None:
        """A frame this reader cannot read (it never happens with a broker that speaks
        AMQP 0-9-1): the frames before it go on, and the connection is dropped, so that
        every delivery it held comes back; the reconnect starts with a fresh filter."""
        self._broken = True
        log.error("frame_filter_failed", error=str(exc), error_type=type(exc).__name__)
        self._fast.clear()
        kept.append(rest)
        self._pass(b"".join(kept))
        self.transport.abort()  # type: ignore[attr-defined]

    def _pass(self, data: bytes) -> None:
        self._last_passed = time.monotonic()
        self.inner.data_received(data)  # type: ignore[attr-defined]

    def _on_method(self, number: int, method: tuple[int, int], data: bytes, at: int) -> None:
        """A method frame that goes on to aiormq; the ones that change who consumes are
        noted first (in stream order, after every delivery that came before them)."""
        if method == CHANNEL_OPEN_OK:
            self._open.add(number)
            self._fast.pop(number, None)
        elif method in (CHANNEL_CLOSE, CHANNEL_CLOSE_OK):
            self._open.discard(number)
            self._fast.pop(number, None)
        elif method in (BASIC_CANCEL, BASIC_CANCEL_OK):
            state = self._fast.get(number)
            if state is not None:
                tag_length = data[at]
                state.consumers.pop(data[at + 1 : at + 1 + tag_length], None)

    def _take(self, state: _Channel, frame_type: int, data: bytes, at: int, end: int) -> bool:
        """Read one frame of a fast channel; whether it was taken from the stream."""
        incoming = state.incoming
        if frame_type == FRAME_METHOD:  # basic.deliver
            at += 4
            tag_length = data[at]
            on_delivery = state.consumers.get(data[at + 1 : at + 1 + tag_length])
            if on_delivery is None:
                return False  # another consumer's (a barrier's): aiormq's
            at += 1 + tag_length
            delivery = FastDelivery()
            delivery.channel = state.channel
            delivery.delivery_tag = _LONGLONG.unpack_from(data, at)[0]
            delivery.redelivered = bool(data[at + 8] & 1)
            at += 9
            at += 1 + data[at]  # the exchange
            key_length = data[at]
            delivery.routing_key = data[at + 1 : at + 1 + key_length].decode()
            state.incoming = _Incoming(delivery, on_delivery)
            return True
        if incoming is None:
            return False  # the content of a frame passed on (a get, a return)
        if frame_type == FRAME_HEADER:
            _, _, body_size, flags = _CONTENT.unpack_from(data, at)
            _read_properties(incoming.delivery, flags, data, at + 14)
            incoming.remaining = body_size
            if body_size == 0:
                incoming.delivery.body = b""
                self._hand_over(state, incoming)
            return True
        if frame_type == FRAME_BODY and incoming.remaining > 0:
            part = data[at:end]
            incoming.remaining -= len(part)
            if incoming.remaining <= 0 and not incoming.parts:
                incoming.delivery.body = part
                self._hand_over(state, incoming)
            else:
                incoming.parts.append(part)
                if incoming.remaining <= 0:
                    incoming.delivery.body = b"".join(incoming.parts)
                    self._hand_over(state, incoming)
            return True
        return False

    def _hand_over(self, state: _Channel, incoming: _Incoming) -> None:
        state.incoming = None
        try:
            incoming.on_delivery(incoming.delivery)
        except Exception as exc:
            # Not ours to lose: unacknowledged, it comes back when the channel closes.
            log.error("fast_delivery_failed", error=str(exc), error_type=type(exc).__name__)

    # -- the rest of the protocol is the stream's ----------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fast.clear()
        self.inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _read_properties(delivery: FastDelivery, flags: int, data: bytes, at: int) -> None:
    """The three properties the pipeline reads; the rest are skipped, not parsed."""
    delivery.correlation_id = delivery.reply_to = delivery.message_id = None
    word = flags
    while word & 1:  # more flag words follow (none in AMQP 0-9-1's basic class)
        (word,) = _SHORT.unpack_from(data, at)
        at += 2
    if flags & _CONTENT_TYPE:
        at += 1 + data[at]
    if flags & _CONTENT_ENCODING:
        at += 1 + data[at]
    if flags & _HEADERS:
        at += 4 + _LONG.unpack_from(data, at)[0]
    if flags & _DELIVERY_MODE:
        at += 1
    if flags & _PRIORITY:
        at += 1
    if flags & _CORRELATION_ID:
        length = data[at]
        delivery.correlation_id = data[at + 1 : at + 1 + length].decode()
        at += 1 + length
    if flags & _REPLY_TO:
        length = data[at]
        delivery.reply_to = data[at + 1 : at + 1 + length].decode()
        at += 1 + length
    if flags & _EXPIRATION:
        at += 1 + data[at]
    if flags & _MESSAGE_ID:
        length = data[at]
        delivery.message_id = data[at + 1 : at + 1 + length].decode()


class FilteringTransportFactory(TransportFactory):
    """aiormq's own TCP transport with a ``FrameFilter`` in front of its stream; its TLS
    transport as it is."""

    def __init__(self) -> None:
        self._filters: weakref.WeakSet[FrameFilter] = weakref.WeakSet()
        self._newest: weakref.ref[FrameFilter] | None = None

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if url.scheme == "amqps":
            # Not measured or tested against a TLS listener yet: aiormq's reader serves
            # these connections (filter_for finds no filter for their channels).
            return await TLSTransportFactory().create(url, **kwargs)
        reader, writer = await TCPTransportFactory().create(url, **kwargs)
        transport = writer.transport
        frame_filter = FrameFilter(transport.get_protocol(), transport)  # type: ignore[arg-type]
        transport.set_protocol(frame_filter)
        self._filters.add(frame_filter)
        self._newest = weakref.ref(frame_filter)
        return reader, writer

    def filter_for(self, channel: Any) -> FrameFilter | None:
        """The filter of ``channel``'s transport, when it can be told for certain."""
        for frame_filter in self._filters:
            if frame_filter.connection is channel.connection:
                return frame_filter if frame_filter.can_serve(channel) else None
        newest = self._newest() if self._newest is not None else None
        if newest is None or newest.connection is not None or channel.number not in newest._open:
            return None
        # A wrong guess costs only speed: the consumer's basic.consume carries aiormq's
        # callback too, which gets whatever this filter does not take.
        newest.connection = channel.connection
        return newest if newest.can_serve(channel) else None
