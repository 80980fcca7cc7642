"""A namespace declared before asyncinvoke placed queue leaders is declared again as it is."""

from __future__ import annotations

import aio_pika

from asyncinvoke import topology
from asyncinvoke.broker import Broker
from tests.conftest import Namespace


async def test_a_queue_made_without_a_leader_locator_is_kept_and_still_checked(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection
) -> None:
    file = namespace.functions(
        """
        [functions.f]
        handler = "tests.support.handlers:noop"
        """
    )
    spec = file.functions["f"]
    queue = namespace.names.function_queue("f")
    old_arguments = dict(topology.function_queue_arguments(namespace.names, spec))
    del old_arguments[topology.LEADER_LOCATOR]
    async with amqp.channel() as channel:
        await channel.declare_queue(queue, durable=True, arguments=old_arguments)
    async with Broker(namespace.settings) as broker:
        await topology.declare(broker.publisher, namespace.names, [spec])
        # The publisher channel was reopened after the refusal, and still publishes.
        await broker.publish(namespace.names.invoke, "f", b"\x80", mandatory=True)
    async with amqp.channel() as channel:
        declared = await channel.declare_queue(queue, passive=True)
        assert declared.declaration_result.message_count == 1
