"""SyncClient through broker drops (``rabbitmqctl close_all_connections``, on a private
node): a loop of invocations goes on; every call that returned ran, every call that
failed raised one of asyncinvoke's errors, and calls succeed again after each drop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import aio_pika
import pytest

from asyncinvoke import AsyncInvokeError, SyncClient, contract
from tests.chaos.conftest import NodeNamespace
from tests.conftest import declare_queue, running_worker
from tests.support import private_broker

DROPS = 2
AFTER_EACH_DROP = 50  # successful calls needed after a drop before the next one


class InvokeLoop:
    """Invokes from a thread until told to stop, keeping what returned and what raised."""

    def __init__(self, client: SyncClient):
        self.client = client
        self.returned: list[str] = []
        self.raised: list[tuple[str, BaseException]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        serial = 0
        while not self.stop.is_set():
            serial += 1
            invocation_id = f"n{serial}"
            try:
                self.client.invoke("work", {"serial": serial}, id=invocation_id)
            except Exception as exc:
                self.raised.append((invocation_id, exc))
                time.sleep(0.05)  # as a caller would back off; the reconnect takes a moment
            else:
                self.returned.append(invocation_id)


async def _wait_returned(loop: InvokeLoop, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(loop.returned) < count:
        if time.monotonic() > deadline:
            pytest.fail(
                f"{len(loop.returned)} calls returned, {count} expected within {timeout} s; "
                f"last errors: {loop.raised[-3:]}"
            )
        await asyncio.sleep(0.02)


@pytest.mark.timeout(120)
async def test_sync_client_survives_connection_drops_and_what_returned_ran(
    node_namespace: NodeNamespace,
    broker_node: private_broker.PrivateBroker,
    node_amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    results = node_namespace.queue_name("results")
    await declare_queue(node_amqp, results)
    functions_file = node_namespace.functions(f"""
        [functions.work]
        handler = "tests.support.handlers:echo"
        on_success = "queue:{results}"
    """)
    ran: set[str] = set()

    async def on_result(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        ran.add(contract.unpack(message.body)["requestContext"]["requestId"])
        # An ack on a dropped channel fails: the record comes again, the set counts it once.
        with contextlib.suppress(Exception):
            await message.ack()

    async with running_worker(node_namespace, functions_file):
        channel = await node_amqp.channel()
        await channel.set_qos(prefetch_count=500)
        queue = await channel.declare_queue(results, passive=True)
        await queue.consume(on_result)
        with SyncClient(settings=node_namespace.settings) as client:
            loop = InvokeLoop(client)
            thread = threading.Thread(target=loop.run, name="invoke-loop")
            thread.start()
            try:
                for drop in range(DROPS):
                    await _wait_returned(loop, (drop + 1) * AFTER_EACH_DROP, timeout=30)
                    await asyncio.to_thread(
                        broker_node.ctl, "close_all_connections", "test: SyncClient drop"
                    )
                await _wait_returned(loop, (DROPS + 1) * AFTER_EACH_DROP, timeout=30)
            finally:
                loop.stop.set()
                await asyncio.to_thread(thread.join, 30)
        assert not thread.is_alive()

        returned = set(loop.returned)
        deadline = time.monotonic() + 30
        while not returned <= ran and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert returned <= ran, f"returned but never ran: {sorted(returned - ran)[:10]}"
    foreign = [(i, exc) for i, exc in loop.raised if not isinstance(exc, AsyncInvokeError)]
    assert not foreign, f"calls failed with errors that are not asyncinvoke's: {foreign[:3]}"
    summary: dict[str, Any] = {
        "returned": len(loop.returned),
        "raised": len(loop.raised),
        "errors": sorted({type(exc).__name__ for _, exc in loop.raised}),
    }
    print(summary)
