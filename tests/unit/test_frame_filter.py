"""The frame filter splits a byte stream into AMQP frames, takes the registered
consumers' deliveries out, and passes every other frame on unchanged, in order,
however the stream is cut into reads. Frames are made by pamqp (aiormq's own codec),
so what the filter reads is checked against what pamqp writes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from asyncinvoke import frame_filter
from asyncinvoke.frame_filter import HEARTBEAT_FRAME, FastDelivery, FrameFilter


@dataclass
class Inner:
    """What aiormq's stream would get."""

    received: bytearray = field(default_factory=bytearray)

    def data_received(self, data: bytes) -> None:
        self.received += data


@dataclass
class Transport:
    closing: bool = False
    aborted: bool = False

    def is_closing(self) -> bool:
        return self.closing or self.aborted

    def abort(self) -> None:
        self.aborted = True


@dataclass(eq=False)
class Channel:
    """The attributes of aiormq's channel the filter reads."""

    number: int
    connection: Any = None
    is_closed: bool = False


def frame(channel: int, value: Any) -> bytes:
    return pamqp_frame.marshal(value, channel)


def deliver(channel: int, tag: str, delivery_tag: int, body: bytes, *,
            redelivered: bool = False, frame_max: int = 131072,
            **properties: Any) -> bytes:  # fmt: skip
    """A delivery as RabbitMQ sends it: method, content header, body frames."""
    out = frame(channel, spec.Basic.Deliver(
        consumer_tag=tag, delivery_tag=delivery_tag, redelivered=redelivered,
        exchange="ns.invoke", routing_key="resize",
    ))  # fmt: skip
    header = ContentHeader(body_size=len(body), properties=spec.Basic.Properties(**properties))
    out += frame(channel, header)
    for start in range(0, len(body), frame_max):
        out += frame(channel, ContentBody(body[start : start + frame_max]))
    return out


def feed(target: FrameFilter, stream: bytes, cuts: list[int]) -> None:
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    start = 0
    for point in [*points, len(stream)]:
        if point > start:
            target.data_received(stream[start:point])
            start = point


def make_filter() -> tuple[FrameFilter, Inner]:
    inner = Inner()
    target = FrameFilter(inner, Transport())  # type: ignore[arg-type]
    target.connection = object()
    return target, inner


@pytest.fixture(autouse=True)
def no_liveness_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats stand in for taken frames once a second; these tests take well under."""
    monkeypatch.setattr(frame_filter, "LIVENESS_INTERVAL_S", 3600.0)


def other_traffic() -> bytes:
    """Frames of every kind the filter must pass on: connection, confirms, a return with
    its content, a get, a heartbeat."""
    return b"".join([
        frame(0, Heartbeat()),
        frame(0, spec.Connection.Blocked(reason="low on memory")),
        frame(2, spec.Basic.Ack(delivery_tag=7, multiple=True)),
        frame(2, spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="x",
                                   routing_key="k")),
        frame(2, ContentHeader(body_size=3, properties=spec.Basic.Properties(message_id="r"))),
        frame(2, ContentBody(b"abc")),
        frame(3, spec.Basic.QosOk()),
    ])  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_with_no_consumer_registered_every_byte_goes_on_unchanged(cuts: list[int]) -> None:
    target, inner = make_filter()
    stream = (
        frame(1, spec.Channel.OpenOk())
        + other_traffic()
        + deliver(1, "someone-else", 1, b"x" * 300, message_id="m1")
        + other_traffic()
    )
    feed(target, stream, cuts)
    assert bytes(inner.received) == stream


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=400_000), max_size=40),
    body_size=st.integers(min_value=0, max_value=300_000),
)
def test_registered_deliveries_are_taken_out_and_read_as_pamqp_wrote_them(
    cuts: list[int], body_size: int
) -> None:
    target, inner = make_filter()
    channel = Channel(1, target.connection)
    target.data_received(frame(1, spec.Channel.OpenOk()))
    assert target.can_serve(channel)
    got: list[FastDelivery] = []
    tag = target.register(channel, got.append)
    body = bytes(range(256)) * (body_size // 256) + b"z" * (body_size % 256)
    taken = [
        deliver(1, tag, 1, body, message_id="inv-1", reply_to="amq.rabbitmq.reply-to.g1",
                correlation_id="c-1", content_type="application/msgpack",
                headers={"x-delivery-count": 2, "x-function": "resize"}, delivery_mode=2,
                priority=3, expiration="60000", timestamp=None, app_id="app"),
        deliver(1, tag, 2, b"second", redelivered=True, frame_max=4),
    ]  # fmt: skip
    passed = [
        frame(1, spec.Basic.ConsumeOk(consumer_tag=tag)),
        other_traffic(),
        deliver(1, "barrier", 3, b"not ours", message_id="b"),
        frame(1, spec.Basic.CancelOk(consumer_tag=tag)),
        # After the cancel-ok, a delivery under the old tag is aiormq's to handle.
        deliver(1, tag, 4, b"late"),
    ]
    stream = passed[0] + taken[0] + passed[1] + taken[1] + b"".join(passed[2:])
    feed(target, stream, cuts)

    assert bytes(inner.received) == frame(1, spec.Channel.OpenOk()) + b"".join(passed)
    assert [(d.delivery_tag, d.redelivered, d.body) for d in got] == [
        (1, False, body),
        (2, True, b"second"),
    ]
    first, second = got
    assert (first.message_id, first.reply_to, first.correlation_id) == (
        "inv-1", "amq.rabbitmq.reply-to.g1", "c-1",
    )  # fmt: skip
    assert (second.message_id, second.reply_to, second.correlation_id) == (None, None, None)
    assert first.routing_key == "resize" and first.channel is channel


def test_a_channel_close_ends_its_consumers_and_a_reopened_channel_starts_afresh() -> None:
    target, inner = make_filter()
    channel = Channel(1, target.connection)
    target.data_received(frame(1, spec.Channel.OpenOk()))
    got: list[FastDelivery] = []
    tag = target.register(channel, got.append)
    target.data_received(frame(1, spec.Channel.Close(
        reply_code=406, reply_text="PRECONDITION_FAILED", class_id=60, method_id=80,
    )))  # fmt: skip
    assert not target.can_serve(channel)
    late = deliver(1, tag, 1, b"after the close")
    target.data_received(late)
    assert got == []
    assert inner.received.endswith(late)

    target.data_received(frame(1, spec.Channel.OpenOk()))
    reopened = Channel(1, target.connection)
    tag = target.register(reopened, got.append)
    target.data_received(deliver(1, tag, 1, b"fresh"))
    assert [(d.channel, d.body) for d in got] == [(reopened, b"fresh")]


def test_a_cancel_from_the_broker_ends_the_consumer_after_what_came_before_it() -> None:
    target, inner = make_filter()
    channel = Channel(5, target.connection)
    target.data_received(frame(5, spec.Channel.OpenOk()))
    got: list[FastDelivery] = []
    tag = target.register(channel, got.append)
    target.data_received(
        deliver(5, tag, 1, b"before")
        + frame(5, spec.Basic.Cancel(consumer_tag=tag))
        + deliver(5, tag, 2, b"after")
    )
    assert [d.body for d in got] == [b"before"]
    assert inner.received.endswith(frame(5, spec.Basic.Cancel(consumer_tag=tag))
                                   + deliver(5, tag, 2, b"after"))  # fmt: skip


def test_a_filter_serves_only_channels_it_saw_opened_on_its_own_connection() -> None:
    target, _ = make_filter()
    target.data_received(frame(1, spec.Channel.OpenOk()))
    assert target.can_serve(Channel(1, target.connection))
    assert not target.can_serve(Channel(2, target.connection))  # never opened here
    assert not target.can_serve(Channel(1, object()))  # another connection's
    assert not target.can_serve(Channel(1, target.connection, is_closed=True))


def test_while_every_frame_is_taken_a_heartbeat_goes_on_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(frame_filter, "LIVENESS_INTERVAL_S", 0.0)
    target, inner = make_filter()
    channel = Channel(1, target.connection)
    target.data_received(frame(1, spec.Channel.OpenOk()))
    got: list[FastDelivery] = []
    tag = target.register(channel, got.append)
    before = len(inner.received)
    target.data_received(deliver(1, tag, 1, b"a"))
    assert bytes(inner.received[before:]) == HEARTBEAT_FRAME
    assert frame(0, Heartbeat()) == HEARTBEAT_FRAME


def test_a_frame_it_cannot_read_drops_the_connection_after_passing_what_came_before() -> None:
    """Never seen from RabbitMQ; were it to happen, the deliveries the filter took part of
    must come back: the connection is dropped (aiormq reconnects, the broker requeues)."""
    target, inner = make_filter()
    channel = Channel(1, target.connection)
    target.data_received(frame(1, spec.Channel.OpenOk()))
    tag = target.register(channel, lambda _: None)
    before = frame(0, Heartbeat())
    bad = bytearray(deliver(1, tag, 1, b"a"))
    bad[-1] = 0  # the body frame's end
    target.data_received(before + bytes(bad) + frame(0, Heartbeat()))
    assert inner.received.endswith(before)
    assert target.transport.aborted  # type: ignore[attr-defined]
    assert not target.can_serve(channel)


def test_a_callback_that_raises_does_not_stop_the_stream() -> None:
    target, inner = make_filter()
    channel = Channel(1, target.connection)
    target.data_received(frame(1, spec.Channel.OpenOk()))

    def boom(_: FastDelivery) -> None:
        raise RuntimeError("boom")

    tag = target.register(channel, boom)
    after = frame(0, Heartbeat())
    target.data_received(deliver(1, tag, 1, b"a") + after)
    assert inner.received.endswith(after)


def test_the_filter_keeps_the_streams_flow_control() -> None:
    """pause/resume_writing and the end of the connection reach aiormq's stream."""
    loop = asyncio.new_event_loop()
    try:
        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        target = FrameFilter(protocol, Transport())  # type: ignore[arg-type]
        target.pause_writing()
        assert protocol._paused  # type: ignore[attr-defined]
        target.resume_writing()
        assert not protocol._paused  # type: ignore[attr-defined]
        target.connection_lost(None)
        assert reader.at_eof()
    finally:
        loop.close()
