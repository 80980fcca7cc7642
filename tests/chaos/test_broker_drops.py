"""The broker drops every connection, twice, during 5,000 invocations: all of them run,
the worker never exits, and /readyz says not-ready in between.

On the chaos suite's private node: ``close_all_connections`` on the shared broker would
drop every other test run's connections too."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import aio_pika
import aiohttp
import pytest

from asyncinvoke import Client, contract
from tests.chaos.conftest import NodeNamespace
from tests.conftest import WorkerProcess, collect, declare_queue
from tests.support.private_broker import PrivateBroker


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _drop_all_connections(node: PrivateBroker) -> None:
    await asyncio.to_thread(node.ctl, "-q", "close_all_connections", "asyncinvoke test: drop")


async def _ready(session: aiohttp.ClientSession, port: int) -> bool:
    try:
        async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def _watch_readiness(
    session: aiohttp.ClientSession, port: int, answers: list[bool]
) -> None:
    while True:
        answers.append(await _ready(session, port))
        await asyncio.sleep(0.002)


async def _wait_for_results(
    ran: set[str],
    count: int,
    progress: asyncio.Event,
    namespace: NodeNamespace,
    worker: WorkerProcess,
    timeout: float = 60,
) -> None:
    """Until ``count`` results came in; on a stall, fail with what the queues and the
    worker say."""
    try:
        async with asyncio.timeout(timeout):
            while len(ran) < count:
                progress.clear()
                await progress.wait()
    except TimeoutError:
        listing = await asyncio.to_thread(
            namespace.node.ctl, "-q", "list_queues", "name", "messages_ready",
            "messages_unacknowledged", "consumers",
        )
        queues = [line for line in listing.splitlines() if namespace.ns in line]
        failed: list[str] = []
        connection = await aio_pika.connect(namespace.node.url)
        try:  # what ended in {ns}.failed instead, read without taking it away
            channel = await connection.channel()
            queue = await channel.get_queue(namespace.names.failed, ensure=False)
            while len(failed) < 5 and (message := await queue.get(no_ack=False, fail=False)):
                record = contract.unpack(message.body)
                failed.append(
                    f"{record['requestContext']['condition']}: "
                    f"{record.get('deliveryError') or record.get('responsePayload')}"
                )
        finally:
            await connection.close()
        pytest.fail(
            f"stalled at {len(ran)} of {count} results after {timeout} s\n"
            "queue, ready, unacknowledged, consumers:\n" + "\n".join(queues)
            + "\nin the failure queue:\n" + "\n".join(failed)
            + "\nworker log, every line but the attempts' (last 40):\n"
            + "\n".join([line for line in worker.lines if '"event":"attempt"' not in line][-40:])
        )


@pytest.mark.timeout(300)  # above the waits' own budgets, so a stall reports what it saw
async def test_all_invocations_run_through_two_connection_drops(
    node_namespace: NodeNamespace, node_amqp: aio_pika.abc.AbstractRobustConnection
) -> None:
    namespace = node_namespace
    results = namespace.queue_name("results")
    functions_file = namespace.functions(f"""
        [functions.work]
        handler = "tests.support.handlers:sleep"
        concurrency = 50
        on_success = "queue:{results}"
    """)
    await declare_queue(node_amqp, results)
    port = _free_port()
    worker = WorkerProcess(namespace, functions_file.path, "--metrics-port", str(port))
    await worker.start()
    ran: set[str] = set()
    progress = asyncio.Event()
    # The test's own connections are dropped too: a robust one keeps collecting.
    collector = await aio_pika.connect_robust(namespace.node.url, reconnect_interval=1)
    try:
        async with Client(settings=namespace.settings) as client:
            ids = await client.invoke_many([("work", {"seconds": 0.08}) for _ in range(5000)])
        channel = await collector.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.declare_queue(results, passive=True)

        async def on_result(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            ran.add(contract.unpack(message.body)["requestContext"]["requestId"])
            progress.set()
            # An ack on a dropped channel fails: the record comes again; a set counts it once.
            with contextlib.suppress(Exception):
                await message.ack()

        await queue.consume(on_result)
        async with aiohttp.ClientSession() as session:
            for threshold in (500, 1500):  # the drops come well before the end
                await _wait_for_results(ran, threshold, progress, namespace, worker)
                assert len(ran) < len(ids), "the drop came too late to prove anything"
                assert await _ready(session, port)
                # Reconnecting takes milliseconds while the broker is up: poll fast.
                answers: list[bool] = []
                watcher = asyncio.create_task(_watch_readiness(session, port, answers))
                await _drop_all_connections(namespace.node)
                async with asyncio.timeout(30):
                    while not (False in answers and answers[-1]):
                        await asyncio.sleep(0.05)
                watcher.cancel()
                assert worker.process is not None and worker.process.returncode is None
        await _wait_for_results(ran, len(ids), progress, namespace, worker, timeout=120)
        assert ran == set(ids)
        assert worker.process is not None and worker.process.returncode is None
    finally:
        await collector.close()
        await worker.kill()


async def _queue_drained(node: PrivateBroker, names: list[str], timeout: float) -> None:
    """Until none of ``names`` holds a message, ready or unacknowledged."""
    async with asyncio.timeout(timeout):
        while True:
            counts = await asyncio.to_thread(node.queue_counts)
            if all(sum(counts.get(name, (0, 0))) == 0 for name in names):
                return
            await asyncio.sleep(0.2)


async def test_attempts_running_through_a_connection_drop_are_neither_suspects_nor_rerun(
    node_namespace: NodeNamespace, tmp_path: Path
) -> None:
    """The worker lives through the drop: the deliveries it was running come back
    redelivered, and are settled by the attempts still running, not run again alone."""
    namespace = node_namespace
    marks = tmp_path / "marks.txt"
    marks.touch()
    results = namespace.queue_name("results")
    functions_file = namespace.functions(f"""
        [functions.work]
        handler = "tests.support.handlers:marked_sleep"
        concurrency = 20
        on_success = "queue:{results}"
    """)
    connection = await aio_pika.connect(namespace.node.url)
    try:
        await declare_queue(connection, results)
    finally:
        await connection.close()
    worker = WorkerProcess(namespace, functions_file.path)
    await worker.start()
    try:
        async with Client(settings=namespace.settings) as client:
            ids = await client.invoke_many(
                [("work", {"seconds": 4, "marks": str(marks)}) for _ in range(20)]
            )
        async with asyncio.timeout(30):
            while len(marks.read_text().splitlines()) < 20:
                await asyncio.sleep(0.05)
        await _drop_all_connections(namespace.node)
        connection = await aio_pika.connect(namespace.node.url)
        try:
            got = await collect(connection, results, 20, timeout=60)
        finally:
            await connection.close()
        assert {contract.unpack(m.body)["requestContext"]["requestId"] for m in got} == set(ids)
        # Before, all 20 went through the suspect queue one at a time (4 s each) and ran
        # twice; now the queues empty as soon as the attempts running end.
        held = [namespace.names.function_queue("work"), namespace.names.suspect_queue("work")]
        await _queue_drained(namespace.node, held, 30)
        assert sorted(marks.read_text().splitlines()) == sorted(f"{i} 0" for i in ids)
        assert not [line for line in worker.lines if '"event":"suspect"' in line]
        settled = [line for line in worker.lines if "redelivery_already_settled" in line]
        assert len(settled) == 20
        assert worker.process is not None and worker.process.returncode is None
    finally:
        await worker.kill()
