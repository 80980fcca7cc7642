"""Publishes the broker returns or refuses, on the real broker: each raises, for the
publish it belongs to, and never for another."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from asyncinvoke import topology
from asyncinvoke.broker import Broker
from asyncinvoke.errors import PublishError, UnroutableError
from tests.conftest import Namespace, declare_queue


async def _depth(connection: aio_pika.abc.AbstractConnection, queue: str) -> int:
    async with connection.channel() as channel:
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        assert count is not None
        return count


@pytest.mark.parametrize("unroutable_first", [True, False])
async def test_a_return_fails_the_publish_it_belongs_to_when_two_share_a_message_id(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection, unroutable_first: bool
) -> None:
    # Records carry the invocation id as message_id, so one id can be in flight twice
    # (a duplicate delivery's record, say). aiormq matches a return by message_id: the
    # return of one must not fail the other, nor may the returned one count as delivered.
    existing = namespace.queue_name("existing")
    missing = f"{namespace.ns}.missing"
    await declare_queue(amqp, existing)
    async with Broker(namespace.settings) as broker:
        for _ in range(20):
            routed = broker.publish("", existing, b"routed", message_id="inv-1")
            returned = broker.publish("", missing, b"returned", message_id="inv-1")
            pair = (returned, routed) if unroutable_first else (routed, returned)
            outcomes = await asyncio.gather(*pair, return_exceptions=True)
            by_target = dict(
                zip(
                    ("returned", "routed") if unroutable_first else ("routed", "returned"),
                    outcomes,
                    strict=True,
                )
            )
            assert isinstance(by_target["returned"], UnroutableError), by_target
            assert by_target["routed"] is None, by_target
    assert await _depth(amqp, existing) == 20


async def test_a_publish_the_broker_refuses_raises_publish_error(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection
) -> None:
    # A full queue with reject-publish nacks the publish: Acks.nack reached, never a success.
    full = namespace.queue_name("full")
    async with amqp.channel() as channel:
        await channel.declare_queue(
            full,
            durable=True,
            arguments={
                "x-queue-type": "classic",
                "x-max-length": 1,
                "x-overflow": "reject-publish",
            },
        )
    async with Broker(namespace.settings) as broker:
        await broker.publish("", full, b"first", message_id="a")
        with pytest.raises(PublishError, match="refused") as refused:
            await broker.publish("", full, b"second", message_id="b")
    assert not isinstance(refused.value, UnroutableError)
    assert await _depth(amqp, full) == 1


async def test_records_survive_many_browses_of_the_failure_queue_on_this_broker(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection
) -> None:
    # The dlq tool browses by taking messages and returning them. On 4.x a default
    # delivery limit of 20 would drop the record; on 3.x a limit of -1 would drop it at
    # the first return. Declared for the broker's own version, it survives 30 browses.
    async with Broker(namespace.settings) as broker:
        await topology.declare(broker.publisher, namespace.names, [])
        await broker.publish(namespace.names.failed, "fn", b"record", message_id="inv-1")
    async with amqp.channel() as channel:
        queue = await channel.get_queue(namespace.names.failed)
        for browse in range(30):
            message = await queue.get(timeout=5, fail=False)
            assert message is not None, f"the record was dropped after {browse} browses"
            await message.nack(requeue=True)
    assert await _depth(amqp, namespace.names.failed) == 1
