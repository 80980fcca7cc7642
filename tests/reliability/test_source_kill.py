"""A RabbitMQ source trigger's worker killed with -9 mid-stream loses no source message:
every message published by pika arrives in a batch's event, each batch within batchSize."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aio_pika
import pika

from asyncinvoke import contract
from tests.conftest import AMQP_URL, Namespace, WorkerProcess, declare_queue, write_functions

MESSAGES = 10_000
BATCH_SIZE = 50


def publish_with_pika(queue: str, count: int) -> None:
    """A plain producer: pika, JSON bodies {"n": i}, persistent. Without publisher confirms
    (one round trip each would be most of this test's time): the test then waits until the
    queue holds them all."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        for n in range(count):
            channel.basic_publish(
                "", queue, b'{"n": %d}' % n, pika.BasicProperties(delivery_mode=2)
            )
        deadline = time.monotonic() + 30
        while channel.queue_declare(queue, passive=True).method.message_count < count:
            assert time.monotonic() < deadline, f"{queue} did not get all {count} messages"
            connection.sleep(0.05)
    finally:
        connection.close()


class Batches:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.seen: Counter[int] = Counter()
        self.changed = asyncio.Event()

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        numbers = contract.unpack(message.body)["responsePayload"]
        self.sizes.append(len(numbers))
        # Within one batch a message appears once.
        assert len(set(numbers)) == len(numbers)
        self.seen.update(numbers)
        await message.ack()
        self.changed.set()

    async def until(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while len(self.seen) < count:
                self.changed.clear()
                await self.changed.wait()


async def test_a_kill_9_mid_stream_loses_no_source_message(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection, tmp_path: Path
) -> None:
    results, source = namespace.queue_name("results"), namespace.queue_name("src")
    await declare_queue(amqp, results)
    config = write_functions(
        tmp_path,
        f"""
        [functions.batch]
        handler = "tests.support.handlers:batch_numbers"
        on_success = "queue:{results}"
        [[functions.batch.triggers]]
        name = "src"
        type = "rabbitmq"
        queue = "{source}"
        batch_size = {BATCH_SIZE}
        batch_window = 0.2
        """,
    )
    namespace.function_names.add("batch")
    await asyncio.to_thread(publish_with_pika, source, MESSAGES)
    batches = Batches()
    channel = await amqp.channel()
    await channel.set_qos(prefetch_count=200)
    queue = await channel.get_queue(results, ensure=False)
    tag = await queue.consume(batches.on_message)
    first = WorkerProcess(namespace, config)
    second = WorkerProcess(namespace, config)
    try:
        await first.start()
        await batches.until(MESSAGES // 3, 60)
        await first.kill()  # kill -9, batches in flight and unacked
        killed_at = len(batches.seen)
        await second.start()
        await batches.until(MESSAGES, 60)
    finally:
        await first.kill()
        await second.kill()
        await queue.cancel(tag)
        await channel.close()
    assert set(batches.seen) == set(range(MESSAGES))
    assert max(batches.sizes) <= BATCH_SIZE
    redelivered = sum(count - 1 for count in batches.seen.values())
    print(
        f"\n{MESSAGES} messages in {len(batches.sizes)} batches; killed after {killed_at} "
        f"seen; {redelivered} arrived twice (in flight at the kill)"
    )
