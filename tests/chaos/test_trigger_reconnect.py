"""Triggers through dropped connections (the chaos suite's private node): after
``close_all_connections`` the timers tick again and a source trigger consumes again."""

from __future__ import annotations

import asyncio

import aio_pika
import orjson

from tests.chaos.conftest import NodeNamespace
from tests.conftest import collect, declare_queue, records_of, running_worker, wait_for


async def test_timers_and_sources_resume_after_every_connection_is_dropped(
    node_namespace: NodeNamespace, node_amqp: aio_pika.abc.AbstractRobustConnection
) -> None:
    space = node_namespace
    ticks, batches = space.queue_name("ticks"), space.queue_name("batches")
    source = space.queue_name("src")
    for queue in (ticks, batches):
        await declare_queue(node_amqp, queue)
    async with node_amqp.channel() as channel:
        await channel.declare_queue(source, durable=True)
    functions_file = space.functions(f"""
        [functions.tick]
        handler = "tests.support.handlers:echo"
        on_success = "queue:{ticks}"
        [[functions.tick.triggers]]
        name = "beat"
        type = "timer"
        cron = "@every 1s"
        [functions.batch]
        handler = "tests.support.handlers:batch_numbers"
        on_success = "queue:{batches}"
        [[functions.batch.triggers]]
        name = "src"
        type = "rabbitmq"
        queue = "{source}"
        """)
    async with running_worker(space, functions_file) as worker:
        await collect(node_amqp, ticks, 1, 10)
        await wait_for(lambda: not worker.not_ready(), 10, "the source consumed")

        await asyncio.to_thread(space.node.ctl, "-q", "close_all_connections", "test: drop")
        await wait_for(lambda: worker.triggers.leadership.is_leader, 20, "a leader again")
        # The drop closed the test's connection too: read on a new one.
        reader = await aio_pika.connect(space.node.url)
        try:
            await collect(reader, ticks, 2, 15)  # ticks again after the drop
            await wait_for(lambda: not worker.not_ready(), 20, "the source consumed again")
            async with reader.channel() as channel:
                await channel.default_exchange.publish(
                    aio_pika.Message(orjson.dumps({"n": 7})), routing_key=source
                )
            (record,) = records_of(await collect(reader, batches, 1, 15))
            assert record["responsePayload"] == [7]
        finally:
            await reader.close()
