"""Delays wait in the broker's ladder and never start early (issue: delayed invocation)."""

from __future__ import annotations

import asyncio
import statistics
import time

import aio_pika
import msgpack
import pytest

from asyncinvoke import Client, topology
from tests.conftest import (
    Namespace,
    WorkerProcess,
    collect,
    declare_queue,
    records_of,
    running_worker,
)

# Whole seconds, sub-second remainders, and each ladder level up to 16 s (0..20 s).
CLIENT_DELAYS = [0, 0.25, 0.8, 1, 1.5, 2, 2.75, 3.3, 4, 5.5, 7.9, 8, 9.01, 12.4, 15.999, 16, 20]
# A plain producer's delay arrives at the worker a little after created_at: the worker
# forwards it into the ladder for the whole seconds left and holds the last fraction.
PLAIN_DELAYS = [1, 2, 3, 7, 11]
LATENESS_CEILING_MS = 3000


async def test_delays_from_0_to_20_seconds_never_start_early(
    namespace: Namespace, amqp, capsys: pytest.CaptureFixture[str]
) -> None:
    results = namespace.queue_name("results")
    functions_file = namespace.functions(f"""
        [functions.clock]
        handler = "tests.support.handlers:started_at"
        on_success = "queue:{results}"
        concurrency = 64
    """)
    due: dict[str, tuple[str, float, int]] = {}  # id -> (path, delay, due ms)
    async with running_worker(namespace, functions_file):
        await declare_queue(amqp, results)
        async with Client(settings=namespace.settings) as client:
            for delay in CLIENT_DELAYS:
                created = time.time_ns() // 1_000_000
                inv_id = await client.invoke("clock", None, delay=delay)
                # The client stamps created_at just before this line's created: never later.
                due[inv_id] = ("client", delay, created + round(delay * 1000))
        channel = await amqp.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(namespace.names.invoke)
        for index, delay in enumerate(PLAIN_DELAYS):
            created = time.time_ns() // 1_000_000 - 137  # a producer clock's odd millisecond
            inv_id = f"plain_{index}"
            body = msgpack.packb(
                {
                    "v": 1,
                    "id": inv_id,
                    "fn": "clock",
                    "payload": None,
                    "created_at": created,
                    "delay": delay,
                }
            )
            await exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key="clock",
            )
            due[inv_id] = ("plain", delay, created + delay * 1000)
        got = records_of(await collect(amqp, results, len(due), 40))
    lateness = {}
    for record in got:
        inv_id = record["requestContext"]["requestId"]
        started_ms = record["responsePayload"]
        lateness[inv_id] = started_ms - due[inv_id][2]
    assert set(lateness) == set(due)
    with capsys.disabled():
        print("\n  delay lateness (ms), started minus due time:")
        for inv_id, (path, delay, _) in sorted(due.items(), key=lambda item: item[1][1]):
            print(f"    {path:6} delay {delay:>7.3f} s  late {lateness[inv_id]:>5} ms")
        values = sorted(lateness.values())
        print(f"    n={len(values)} median {statistics.median(values)} ms, max {values[-1]} ms")
    early = {inv_id: ms for inv_id, ms in lateness.items() if ms < 0}
    assert not early, f"started before their due time: {early}"
    # How late is for the delay benchmark (tests/bench/bench_delay.py, target p99 <= 50 ms;
    # docs/benchmarks.md has the distribution): a stall of the shared test machine (2 cores,
    # several suites at once) can add a second. This bound only catches gross errors: a
    # delay held back by seconds (a ladder level of 4 s or more waited twice, say).
    late = {inv_id: ms for inv_id, ms in lateness.items() if ms >= LATENESS_CEILING_MS}
    assert not late, f"started {LATENESS_CEILING_MS} ms or more after their due time: {late}"


async def test_delayed_invocations_wait_in_the_broker_while_no_worker_runs(
    namespace: Namespace, amqp
) -> None:
    results = namespace.queue_name("results")
    functions_file = namespace.functions(f"""
        [functions.clock]
        handler = "tests.support.handlers:started_at"
        on_success = "queue:{results}"
    """)
    await declare_queue(amqp, results)
    worker = WorkerProcess(namespace, functions_file.path)
    await worker.start()
    try:
        async with Client(settings=namespace.settings) as client:
            sent = time.time_ns() // 1_000_000
            ids = await client.invoke_many([("clock", None) for _ in range(30)], delay=1.5)
            ids += await client.invoke_many([("clock", None) for _ in range(30)], delay=3)
        assert await worker.terminate() == 0
        # Nothing waits in a worker: all 60 are in the ladder, none in the function queue.
        ladder_depth = 0
        for level in range(17):
            ladder_depth += await topology.queue_depth(amqp, namespace.names.level(level)) or 0
        assert ladder_depth == 60
        # Let every one fall due with no worker: they gather in the function queue.
        queue = namespace.names.function_queue("clock")
        async with asyncio.timeout(15):
            while (await topology.queue_depth(amqp, queue) or 0) < 60:
                await asyncio.sleep(0.1)
        worker = WorkerProcess(namespace, functions_file.path)
        await worker.start()
        got = records_of(await collect(amqp, results, 60, 30))
    finally:
        await worker.kill()
    assert {record["requestContext"]["requestId"] for record in got} == set(ids)
    assert all(record["responsePayload"] >= sent + 1500 for record in got)
