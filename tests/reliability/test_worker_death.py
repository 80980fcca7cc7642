"""A worker killed with -9, or stopped with SIGTERM, loses nothing."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import aio_pika

from asyncinvoke import Client, contract, topology
from tests.conftest import Namespace, WorkerProcess, declare_queue


class ResultWatcher:
    """Consumes success records in the background and counts runs per invocation id."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, queue: str):
        self.connection = connection
        self.queue = queue
        self.runs: Counter[str] = Counter()
        self._changed = asyncio.Event()

    async def __aenter__(self) -> ResultWatcher:
        self.channel = await self.connection.channel()
        await self.channel.set_qos(prefetch_count=500)
        queue = await self.channel.get_queue(self.queue, ensure=False)
        self.tag = await queue.consume(self._on_message)
        self._queue = queue
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._queue.cancel(self.tag)
        await self.channel.close()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        record = contract.unpack(message.body)
        self.runs[record["requestContext"]["requestId"]] += 1
        await message.ack()
        self._changed.set()

    async def until(self, count: int, timeout: float) -> None:
        """Wait until ``count`` distinct invocations have run."""
        async with asyncio.timeout(timeout):
            while len(self.runs) < count:
                self._changed.clear()
                await self._changed.wait()


async def until_taken(connection: aio_pika.abc.AbstractConnection, queue: str, ready: int) -> None:
    """Wait until the worker has taken deliveries: at most ``ready`` left in the queue."""
    async with asyncio.timeout(20):
        while (await topology.queue_depth(connection, queue) or 0) > ready:
            await asyncio.sleep(0.02)


def _config(results: str, concurrency: int) -> str:
    return f"""
        [functions.work]
        handler = "tests.support.handlers:sleep"
        concurrency = {concurrency}
        on_success = "queue:{results}"
    """


async def test_kill_9_in_flight_loses_nothing(namespace: Namespace, amqp) -> None:
    results = namespace.queue_name("results")
    functions_file = namespace.functions(_config(results, 20))
    await declare_queue(amqp, results)
    worker = WorkerProcess(namespace, functions_file.path)
    await worker.start()
    try:
        async with Client(settings=namespace.settings) as client:
            ids = await client.invoke_many([("work", {"seconds": 0.05}) for _ in range(400)])
        async with ResultWatcher(amqp, results) as watcher:
            await watcher.until(60, timeout=30)
            await worker.kill()  # SIGKILL with ~20 attempts in flight
            done_before_kill = len(watcher.runs)
            assert done_before_kill < len(ids), "the kill came too late to prove anything"
            await worker.start()
            await watcher.until(len(ids), timeout=60)
        assert set(watcher.runs) == set(ids)
    finally:
        await worker.kill()


async def test_sigterm_finishes_or_returns_in_flight_attempts(namespace: Namespace, amqp) -> None:
    results = namespace.queue_name("results")
    functions_file = namespace.functions(_config(results, 50))
    await declare_queue(amqp, results)
    # A grace period shorter than an attempt: in-flight attempts must go back to the queue.
    worker = WorkerProcess(namespace, functions_file.path, "--shutdown-grace", "0.3")
    await worker.start()
    try:
        async with Client(settings=namespace.settings) as client:
            ids = await client.invoke_many([("work", {"seconds": 1.0}) for _ in range(80)])
        async with ResultWatcher(amqp, results) as watcher:
            # Stop once the worker holds its prefetch of 50 deliveries.
            await until_taken(amqp, namespace.names.function_queue("work"), 30)
            assert worker.process is not None
            worker.process.send_signal(signal.SIGTERM)
            assert await worker.wait_exit(timeout=20) == 0
            assert any('"returned_to_queue"' in line for line in worker.lines)
            worker = WorkerProcess(namespace, functions_file.path)
            await worker.start()
            await watcher.until(len(ids), timeout=60)
        assert set(watcher.runs) == set(ids)
    finally:
        await worker.kill()


async def test_sigterm_lets_attempts_finish_within_the_grace_period(
    namespace: Namespace, amqp
) -> None:
    results = namespace.queue_name("results")
    functions_file = namespace.functions(_config(results, 50))
    await declare_queue(amqp, results)
    worker = WorkerProcess(namespace, functions_file.path, "--shutdown-grace", "10")
    await worker.start()
    try:
        async with Client(settings=namespace.settings) as client:
            ids = await client.invoke_many([("work", {"seconds": 0.5}) for _ in range(50)])
        async with ResultWatcher(amqp, results) as watcher:
            await until_taken(amqp, namespace.names.function_queue("work"), 0)
            assert worker.process is not None
            worker.process.send_signal(signal.SIGTERM)
            assert await worker.wait_exit(timeout=20) == 0
            await watcher.until(len(ids), timeout=10)
        assert set(watcher.runs) == set(ids)
        assert not any('"returned_to_queue"' in line for line in worker.lines)
    finally:
        await worker.kill()
