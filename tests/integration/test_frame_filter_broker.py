"""The delivery fast path (frame_filter.py) on the real broker, through aio-pika and
aiormq as the worker uses them.

The first test is the alarm for a library upgrade: the fast path reaches aiormq only
through its ``transport_factory`` argument, which aio-pika does not pass on by itself
(``failover.FailoverConnection`` puts it in). Should either library stop taking it, the
worker would quietly fall back to aiormq's reader and lose the fast path's speed; this
test fails instead.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aio_pika
import pytest

from asyncinvoke.acks import Acks
from asyncinvoke.broker import Broker
from asyncinvoke.consumer import Consumers, Delivery, Message
from asyncinvoke.frame_filter import FastDelivery
from tests.conftest import AMQP_URL, Namespace, declare_queue
from tests.support.connections import close_connections_named


async def publish(connection: aio_pika.abc.AbstractConnection, queue: str, count: int,
                  **properties: Any) -> None:  # fmt: skip
    async with connection.channel(publisher_confirms=True) as channel:
        await asyncio.gather(*(
            channel.default_exchange.publish(
                aio_pika.Message(f"m{number}".encode(), message_id=f"id-{number}",
                                 **properties),
                routing_key=queue,
            )
            for number in range(count)
        ))  # fmt: skip


async def consume_some(
    broker: Broker, queue: str, count: int
) -> tuple[list[Message], Consumers]:
    acks = Acks()
    consumers = Consumers(broker, acks, barrier_timeout_s=10)
    got: list[Message] = []
    done = asyncio.Event()

    async def on_message(message: Message) -> None:
        got.append(message)
        acks.ack(message)
        if len(got) >= count:
            done.set()

    await consumers.consume(queue, 50, on_message)
    await asyncio.wait_for(done.wait(), 30)
    return got, consumers


@pytest.mark.parametrize("fast", [True, False])
async def test_the_worker_s_consumers_read_through_the_filter_unless_switched_off(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection, fast: bool
) -> None:
    queue = namespace.queue_name("fast")
    await declare_queue(amqp, queue)
    await publish(amqp, queue, 20, reply_to="replies", correlation_id="c-7")
    broker = Broker(namespace.settings, fast_consume=fast)
    await broker.connect()
    try:
        got, consumers = await consume_some(broker, queue, 20)
        await consumers.barrier()
        await consumers.cancel()
    finally:
        await broker.close()
    # A FastDelivery came through the filter; a Delivery through aiormq's reader.
    assert {type(message) for message in got} == ({FastDelivery} if fast else {Delivery})
    assert sorted(message.message_id or "" for message in got) == sorted(
        f"id-{number}" for number in range(20)
    )
    first = min(got, key=lambda message: message.delivery_tag or 0)
    assert (first.body, first.reply_to, first.correlation_id, first.routing_key) == (
        b"m0", "replies", "c-7", queue,
    )  # fmt: skip
    async with amqp.channel() as channel:  # every ack held: nothing left, nothing unacked
        declared = await channel.declare_queue(queue, passive=True)
        assert declared.declaration_result.message_count == 0


async def test_a_connection_that_only_carries_deliveries_is_not_taken_for_dead(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection
) -> None:
    """aiormq drops a connection on which it read no frame for (heartbeat + 1) x 3 s.
    The broker sends no heartbeat while it sends deliveries, and the filter takes those
    away: it passes a heartbeat on in their place. Heartbeat 1 s: a 6 s limit, and 9 s
    of deliveries alone."""
    queue = namespace.queue_name("steady")
    await declare_queue(amqp, queue)
    url = AMQP_URL + ("&" if "?" in AMQP_URL else "?") + "heartbeat=1"
    broker = Broker(replace(namespace.settings, amqp_url=url), fast_consume=True)
    await broker.connect()
    assert broker.connection is not None and broker.connection.transport is not None
    underlay = broker.connection.transport.connection
    try:
        total = 900
        publishing = asyncio.create_task(paced(amqp, queue, total, per_second=100))
        got, consumers = await consume_some(broker, queue, total)
        await publishing
        # The same connection all along: not dropped and reconnected.
        assert broker.connection.transport is not None
        assert broker.connection.transport.connection is underlay
        assert not underlay.is_closed
        await consumers.barrier()
        await consumers.cancel()
    finally:
        await broker.close()
    assert {type(message) for message in got} == {FastDelivery}


async def paced(connection: aio_pika.abc.AbstractConnection, queue: str, total: int,
                per_second: int) -> None:  # fmt: skip
    async with connection.channel(publisher_confirms=True) as channel:
        for _ in range(0, total, per_second // 10):
            await asyncio.gather(*(
                channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue)
                for _ in range(per_second // 10)
            ))  # fmt: skip
            await asyncio.sleep(0.1)


async def test_after_a_reconnect_deliveries_come_through_the_new_connection_s_filter(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection
) -> None:
    """The broker closes the worker's connection; aio-pika reconnects, the consumer
    subscribes again, and its deliveries are read by the filter of the new transport
    (not by aiormq's reader, which would serve them, slower, had the filter not been
    found for the new channel)."""
    queue = namespace.queue_name("reconnect")
    await declare_queue(amqp, queue)
    name = f"asyncinvoke-test-{namespace.ns}"
    broker = Broker(namespace.settings, name=name, fast_consume=True)
    await broker.connect()
    acks = Acks()
    consumers = Consumers(broker, acks, barrier_timeout_s=10)
    got: list[Message] = []

    async def on_message(message: Message) -> None:
        got.append(message)
        acks.ack(message)

    try:
        await consumers.consume(queue, 50, on_message)
        await publish(amqp, queue, 5)
        async with asyncio.timeout(30):
            while len(got) < 5:
                await asyncio.sleep(0.05)
        await consumers.barrier()
        assert await close_connections_named(name, "asyncinvoke test: reconnect") == 1
        async with asyncio.timeout(60):
            while len(got) < 10:  # whenever the consumer is back, these reach it
                await publish(amqp, queue, 1)
                await asyncio.sleep(0.5)
        await consumers.barrier()
        await consumers.cancel()
    finally:
        await broker.close()
    assert {type(message) for message in got} == {FastDelivery}
