"""producer: Client.invoke latency and Client.invoke_many throughput, against bare aio-pika.

Ours: a fresh namespace with one function queue (declared as a worker would; no
worker runs). Latency: ``--latency-n`` sequential ``Client.invoke`` calls after a
warm-up, p50 and p99. Throughput: ``Client.invoke_many`` of N no-op invocations
(its default window: 1000 in flight), N / wall time of the call.

Bare: a quorum queue, an aio-pika channel with ``publisher_confirms=True``, persistent
messages of the same body size through the default exchange. Latency: sequential
publishes, each awaiting its confirm. Throughput: N publishes, 1000 in flight via a
semaphore and ``asyncio.gather``.

Both sides are interleaved run by run.
"""

from __future__ import annotations

import time

import aio_pika

from asyncinvoke import Client, functions
from tests.bench.common import (
    AMQP_URL,
    FUNCTION,
    QUORUM,
    Namespace,
    Row,
    bare_publish_many,
    envelope_size,
    note_load,
    percentile,
    retrying,
    say,
)

WARM_UP = 50
WINDOW = 1000


def latency_stats(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    millis = [s * 1000 for s in samples]
    return percentile(millis, 50), percentile(millis, 99)


async def run_ours(n: int, latency_n: int) -> tuple[float, float, float]:
    space = Namespace("producer")
    try:
        await space.declare([functions.FunctionSpec(FUNCTION, handler="x:y")])
        async with Client(settings=space.settings) as client:
            for _ in range(WARM_UP):
                await client.invoke(FUNCTION, None)
            samples = []
            for _ in range(latency_n):
                started = time.perf_counter()
                await client.invoke(FUNCTION, None)
                samples.append(time.perf_counter() - started)
            p50, p99 = latency_stats(samples)
            started = time.perf_counter()
            await client.invoke_many([(FUNCTION, None)] * n, window=WINDOW)
            rate = n / (time.perf_counter() - started)
        say(f"ours: invoke p50 {p50:.3f} ms, p99 {p99:.3f} ms; invoke_many {rate:,.0f} msg/s")
        return p50, p99, rate
    finally:
        await space.cleanup()


async def run_bare(n: int, latency_n: int, body_size: int) -> tuple[float, float, float]:
    space = Namespace("producer-bare")
    queue = space.queue_name("bare")
    body = b"\x00" * body_size
    try:
        connection = await aio_pika.connect(AMQP_URL)
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.declare_queue(queue, durable=True, arguments=QUORUM)
            exchange = channel.default_exchange

            async def publish() -> None:
                message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
                await exchange.publish(message, routing_key=queue, timeout=30)

            for _ in range(WARM_UP):
                await publish()
            samples = []
            for _ in range(latency_n):
                started = time.perf_counter()
                await publish()
                samples.append(time.perf_counter() - started)
            p50, p99 = latency_stats(samples)
            started = time.perf_counter()
            await bare_publish_many(channel, queue, body, n, window=WINDOW)
            rate = n / (time.perf_counter() - started)
        finally:
            await connection.close()
        say(f"bare: publish p50 {p50:.3f} ms, p99 {p99:.3f} ms; many {rate:,.0f} msg/s")
        return p50, p99, rate
    finally:
        await space.cleanup()


async def run(n: int, runs: int, latency_n: int) -> list[Row]:
    body_size = envelope_size()
    p50 = Row("producer", f"invoke latency p50 ({latency_n} sequential)", "ms")
    p99 = Row("producer", f"invoke latency p99 ({latency_n} sequential)", "ms")
    many = Row("producer", f"invoke_many throughput ({WINDOW} in flight)", "msg/s", target=0.8)
    for row in (p50, p99):
        row.higher_is_better = False
    for index in range(runs):
        say(f"producer run {index + 1}/{runs}: N={n}, body {body_size} B, load {note_load():.2f}")
        bare = await retrying("bare", lambda: run_bare(n, latency_n, body_size))
        ours = await retrying("ours", lambda: run_ours(n, latency_n))
        for row, ours_value, bare_value in zip((p50, p99, many), ours, bare, strict=True):
            row.ours.append(ours_value)
            row.bare.append(bare_value)
    return [p50, p99, many]
