"""consumer.settle_barrier on the real broker: acks sent before it hold, even when the
process dies right after it, and the barrier takes no message from the queue."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aio_pika

from tests.conftest import AMQP_URL, ROOT, Namespace, declare_queue

MESSAGES = 2000
ROUNDS = 2

# Takes every message of the queue, acks each on its own (thousands of frames: the
# broker's queue client falls behind and holds settles back), runs the barrier, closes
# the channel and dies without closing the connection.
CHILD = """
import asyncio, os, sys
import aiormq
from asyncinvoke.consumer import settle_barrier

async def main(url, queue, count):
    connection = await aiormq.connect(url)
    channel = await connection.channel()
    await channel.basic_qos(prefetch_count=count)
    tags, done = [], asyncio.Event()

    async def take(message):
        tags.append(message.delivery_tag)
        if len(tags) == count:
            done.set()

    await channel.basic_consume(queue, take)
    await asyncio.wait_for(done.wait(), 60)
    for tag in tags:
        await channel.basic_ack(tag)
    await settle_barrier(channel, queue, restore_prefetch=count)
    await channel.close()
    os._exit(0)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def _settled_depth(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    """The queue's ready count once no consumer holds anything (unacked ones returned)."""
    async with asyncio.timeout(60):
        while True:
            declared = await channel.declare_queue(queue, passive=True)
            result = declared.declaration_result
            if result.consumer_count == 0:
                await asyncio.sleep(0.5)  # returns of a closed channel land a moment later
                again = (await channel.declare_queue(queue, passive=True)).declaration_result
                if again.message_count == result.message_count:
                    assert again.message_count is not None
                    return again.message_count
            await asyncio.sleep(0.1)


async def test_acks_before_the_barrier_hold_when_the_process_dies_after_it(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection
) -> None:
    queue = namespace.queue_name("barrier")
    await declare_queue(amqp, queue)
    async with amqp.channel(publisher_confirms=True) as channel:
        for round_number in range(ROUNDS):
            for _ in range(0, MESSAGES, 500):
                await asyncio.gather(*(
                    channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue)
                    for _ in range(500)
                ))
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CHILD, AMQP_URL, queue, str(MESSAGES),
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(child.communicate(), 120)
            assert child.returncode == 0, output.decode(errors="replace")
            left = await _settled_depth(channel, queue)
            print(f"round {round_number}: {MESSAGES} acked, {left} back in the queue")
            assert left == 0, f"{left} of {MESSAGES} acks were lost although the barrier returned"
