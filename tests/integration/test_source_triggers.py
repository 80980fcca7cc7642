"""RabbitMQ source triggers on the real broker: batches by size and window, CloudEvents,
health when the source is gone, and consumption stopping when the trigger is deleted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
import orjson

from asyncinvoke import clock
from asyncinvoke.broker import Broker
from asyncinvoke.docstore import DocumentStore
from asyncinvoke.triggers.stored import TriggerStore
from tests.conftest import Namespace, collect, declare_queue, records_of, running_worker, wait_for


def functions_with_source(results: str, source: str, size: int, window: float) -> str:
    return f"""
        [functions.batch]
        handler = "tests.support.handlers:batch_numbers"
        on_success = "queue:{results}"
        [[functions.batch.triggers]]
        name = "src"
        type = "rabbitmq"
        queue = "{source}"
        batch_size = {size}
        batch_window = {window}
        """


async def publish(
    connection: aio_pika.abc.AbstractConnection,
    queue: str,
    bodies: list[bytes],
    **properties: object,
) -> None:
    async with connection.channel(publisher_confirms=True) as channel:
        await asyncio.gather(
            *(
                channel.default_exchange.publish(
                    aio_pika.Message(body, **properties),  # type: ignore[arg-type]
                    routing_key=queue,
                )
                for body in bodies
            )
        )


async def declare_plain(connection: aio_pika.abc.AbstractConnection, queue: str) -> None:
    async with connection.channel() as channel:
        await channel.declare_queue(queue, durable=True)


async def consumers_on(connection: aio_pika.abc.AbstractConnection, queue: str) -> int:
    async with connection.channel() as channel:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.consumer_count)


async def test_batches_are_full_or_sent_when_their_window_closes_as_cloudevents(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection
) -> None:
    results, source = namespace.queue_name("results"), namespace.queue_name("src")
    await declare_queue(amqp, results)
    await declare_plain(amqp, source)
    functions_file = namespace.functions(functions_with_source(results, source, 100, 0.5))
    async with running_worker(namespace, functions_file):
        await publish(amqp, source, [orjson.dumps({"n": n}) for n in range(250)])
        sizes = sorted(
            len(r["responsePayload"]) for r in records_of(await collect(amqp, results, 3, 10))
        )
        assert sizes == [50, 100, 100]

        # A lone message waits out the window; one that is not JSON arrives base64.
        sent_at = time.monotonic()
        await publish(amqp, source, [b"\xffraw"], message_id="m-1", headers={"k": "v"})
        (record,) = records_of(await collect(amqp, results, 1, 10))
        waited = time.monotonic() - sent_at
        assert 0.45 <= waited < 3
        (event,) = orjson.loads(record["requestPayload"])
        assert event["data_base64"] == "/3Jhdw=="
        assert (event["specversion"], event["id"], event["amqpmessageid"]) == ("1.0", "m-1", "m-1")
        assert orjson.loads(event["amqpheaders"]) == {"k": "v"}
        assert event["source"] == f"/rabbitmq/%2F/{source}"


async def test_a_missing_source_is_unhealthy_in_readyz_and_metrics_and_is_retried(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection
) -> None:
    results, source = namespace.queue_name("results"), namespace.queue_name("src")
    await declare_queue(amqp, results)
    functions_file = namespace.functions(functions_with_source(results, source, 10, 0))
    async with running_worker(namespace, functions_file) as worker:
        await wait_for(
            lambda: any("does not exist" in r for r in worker.not_ready()),
            5,
            "the missing source in not_ready",
        )
        assert 'asyncinvoke_trigger_healthy{function="batch",trigger="src"} 0.0' in (
            worker.metrics.render().decode()
        )
        await declare_plain(amqp, source)
        await wait_for(lambda: not worker.not_ready(), 10, "the source consumed after a retry")
        await publish(amqp, source, [orjson.dumps({"n": 1})])
        assert records_of(await collect(amqp, results, 1, 10))[0]["responsePayload"] == [1]

        async with amqp.channel() as channel:
            await channel.queue_delete(source)
        await wait_for(
            lambda: any("went away" in r or "does not exist" in r for r in worker.not_ready()),
            5,
            "the deleted source",
        )


@asynccontextmanager
async def trigger_store(namespace: Namespace) -> AsyncIterator[TriggerStore]:
    async with Broker(namespace.settings) as broker, DocumentStore(broker, namespace.names) as docs:
        yield TriggerStore(docs)


async def test_deleting_a_stored_source_trigger_stops_consumption_within_2_s(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection
) -> None:
    results, source = namespace.queue_name("results"), namespace.queue_name("src")
    await declare_queue(amqp, results)
    await declare_plain(amqp, source)
    functions_file = namespace.functions(f"""
        [functions.batch]
        handler = "tests.support.handlers:batch_numbers"
        on_success = "queue:{results}"
        """)
    async with trigger_store(namespace) as store, running_worker(namespace, functions_file):
        await store.create(
            "batch",
            {
                "triggerName": "live",
                "triggerType": "rabbitmq",
                "triggerConfig": {"queueName": source},
            },
            clock.now_ms(),
        )
        deadline = time.monotonic() + 5
        while await consumers_on(amqp, source) != 1:
            assert time.monotonic() < deadline, "the stored trigger never consumed"
            await asyncio.sleep(0.05)
        await publish(amqp, source, [orjson.dumps({"n": 5})])
        await collect(amqp, results, 1, 10)

        deleted_at = time.monotonic()
        await store.delete("batch", "live")
        while await consumers_on(amqp, source) != 0:
            assert time.monotonic() - deleted_at < 2, "still consuming 2 s after the delete"
            await asyncio.sleep(0.02)
        await publish(amqp, source, [orjson.dumps({"n": 6})])
        await asyncio.sleep(0.5)
        async with amqp.channel() as channel:
            assert (
                await channel.declare_queue(source, passive=True)
            ).declaration_result.message_count == 1
