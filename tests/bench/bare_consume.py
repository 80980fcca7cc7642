"""The baseline consumer: a bare consume-and-ack loop, run as its own process.

    python -m tests.bench.bare_consume --queue Q --n N [--prefetch 200] [--timeout S]
                                       [--client aio-pika|aiormq]

``aio-pika`` (the default) is the library asyncinvoke is built on; ``aiormq`` is the
protocol layer below it, without aio-pika's message objects: the ceiling of an asyncio
consumer in Python on this machine.

Consumes N messages from an existing queue, acks each one, and prints one JSON line
``{"n", "first", "last", "rate", "cpu_us"}``: times (epoch s) of the first and the last
ack, rate = (n - 1) / (last - first), and this process's CPU time per message between
them, in µs. Exit status 1 on timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from functools import partial
from typing import Any

import aio_pika
import aiormq

from tests.bench.common import AMQP_URL


class _Count:
    """Acks counted, and the wall and CPU times of the first and the last."""

    def __init__(self, n: int):
        self.n = n
        self.acked = 0
        self.first = self.last = self.cpu_first = self.cpu_last = 0.0
        self.done = asyncio.Event()

    def acked_one(self) -> None:
        if self.acked == 0:
            self.first, self.cpu_first = time.time(), time.process_time()
        elif self.acked == self.n - 1:
            self.last, self.cpu_last = time.time(), time.process_time()
        self.acked += 1
        if self.acked >= self.n:
            self.done.set()

    def result(self) -> dict[str, float]:
        n = self.n
        return {
            "n": n,
            "first": self.first,
            "last": self.last,
            "rate": (n - 1) / (self.last - self.first),
            "cpu_us": (self.cpu_last - self.cpu_first) / (n - 1) * 1e6,
        }


async def consume(queue_name: str, n: int, prefetch: int, timeout: float) -> dict[str, float]:
    connection = await aio_pika.connect(AMQP_URL)
    count = _Count(n)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(queue_name, ensure=False)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            count.acked_one()

        tag = await queue.consume(on_message, no_ack=False)
        finished = asyncio.ensure_future(count.done.wait())
        closed = asyncio.ensure_future(connection.closed())
        await asyncio.wait({finished, closed}, timeout=timeout, return_when="FIRST_COMPLETED")
        finished.cancel()
        closed.cancel()
        if not count.done.is_set():
            why = "the connection was closed" if connection.is_closed else f"timeout {timeout} s"
            print(f"bare consumer: {count.acked} of {n} acked; {why}", file=sys.stderr)
            raise SystemExit(1)
        await queue.cancel(tag)
    finally:
        await connection.close()
    return count.result()


async def consume_aiormq(
    queue_name: str, n: int, prefetch: int, timeout: float
) -> dict[str, float]:
    connection = await aiormq.connect(AMQP_URL)
    count = _Count(n)
    try:
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=prefetch)

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            assert message.delivery_tag is not None
            await channel.basic_ack(message.delivery_tag)
            count.acked_one()

        await channel.basic_consume(queue_name, on_message, no_ack=False)
        try:
            await asyncio.wait_for(count.done.wait(), timeout)
        except TimeoutError:
            print(f"bare aiormq consumer: {count.acked} of {n} acked; timeout", file=sys.stderr)
            raise SystemExit(1) from None
    finally:
        await connection.close()
    return count.result()


class _TurnAcks:
    """Acks noted during a loop turn, sent at its end as one ``multiple`` ack (every
    delivery of these loops is done as soon as it arrives, so the tags run on)."""

    def __init__(self, channel: aiormq.abc.AbstractChannel, count: _Count):
        self.channel = channel
        self.count = count
        self.highest = 0
        self.noted = 0
        self.scheduled = False

    def ack(self, tag: int) -> None:
        self.highest = tag
        self.noted += 1
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self.scheduled = False
        asyncio.get_running_loop().create_task(
            self.channel.basic_ack(self.highest, multiple=True, wait=False)
        )
        for _ in range(self.noted):
            self.count.acked_one()
        self.noted = 0


async def consume_aiormq_batched(
    queue_name: str, n: int, prefetch: int, timeout: float, *, fast: bool
) -> dict[str, float]:
    """aiormq, with one multiple ack per loop turn (as the worker acks); ``fast``: the
    deliveries read by ``asyncinvoke.frame_filter`` instead of aiormq's reader."""
    from asyncinvoke.frame_filter import FilteringTransportFactory

    factory = FilteringTransportFactory()
    connection = await aiormq.connect(AMQP_URL, transport_factory=factory)
    count = _Count(n)
    try:
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=prefetch)
        acks = _TurnAcks(channel, count)

        def on_delivery(message: Any) -> None:
            acks.ack(message.delivery_tag)

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            on_delivery(message)

        frame_filter = factory.filter_for(channel) if fast else None
        if fast and frame_filter is None:
            raise SystemExit("the frame filter cannot serve this channel")
        tag = frame_filter.register(channel, on_delivery) if frame_filter else None
        await channel.basic_consume(queue_name, on_message, no_ack=False, consumer_tag=tag)
        try:
            await asyncio.wait_for(count.done.wait(), timeout)
        except TimeoutError:
            print(f"bare consumer: {count.acked} of {n} acked; timeout", file=sys.stderr)
            raise SystemExit(1) from None
    finally:
        await connection.close()
    return count.result()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bare_consume")
    parser.add_argument("--queue", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--prefetch", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--client",
        choices=("aio-pika", "aiormq", "aiormq-batched", "fast"),
        default="aio-pika",
    )
    args = parser.parse_args()
    run: Any = {
        "aio-pika": consume,
        "aiormq": consume_aiormq,
        "aiormq-batched": partial(consume_aiormq_batched, fast=False),
        "fast": partial(consume_aiormq_batched, fast=True),
    }[args.client]
    result = asyncio.run(run(args.queue, args.n, args.prefetch, args.timeout))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
