"""A broker resource alarm, for real: RabbitMQ's memory watermark set so low that the
node is over it at once (every publishing connection is blocked), then restored.

While it lasts, the producer and the gateway refuse new invocations with an error that
names the alarm, promptly; the worker holds what it received and settles nothing it
could not confirm. Once it clears, everything accepted runs and nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aio_pika
import aiohttp
import pytest

from asyncinvoke import BrokerBlocked, Client, contract
from asyncinvoke.gateway import Gateway
from tests.chaos.conftest import NodeNamespace
from tests.conftest import WorkerProcess, declare_queue, write_functions
from tests.support.private_broker import PrivateBroker

pytestmark = pytest.mark.timeout(300)

CONCURRENCY = 2  # the worker's prefetch is twice this: all it may hold during the alarm
DELAYED = 30  # invocations that come due while the alarm lasts
PUBLISH_TIMEOUT_S = 3.0  # the producer's and the gateway's, so the test stays short


def _queue_counts(node: PrivateBroker, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) of ``queue`` on the node."""
    counts = node.queue_counts()
    assert queue in counts, f"queue {queue} not on the node: {sorted(counts)}"
    return counts[queue]


async def _eventually(check: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.2)
    return time.monotonic() - start


async def _consume_ids(
    connection: aio_pika.abc.AbstractConnection, queue_name: str, seen: list[str]
) -> tuple[aio_pika.abc.AbstractChannel, aio_pika.abc.AbstractQueue, str]:
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=200)
    queue = await channel.get_queue(queue_name, ensure=False)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        record = contract.unpack(message.body)
        seen.append(record["requestContext"]["requestId"])
        await message.ack()

    tag = await queue.consume(on_message)
    return channel, queue, tag


async def test_an_alarm_refuses_new_work_clearly_and_loses_nothing_accepted(
    node_namespace: NodeNamespace, node_amqp: aio_pika.abc.AbstractConnection
) -> None:
    space = node_namespace
    node = space.node
    results = space.queue_name("results")
    # As quiet as the dlq tool makes aiormq (cli/dlq.py): the alarm must be heard anyway.
    aiormq_log = logging.getLogger("aiormq")
    quiet_before = aiormq_log.level
    aiormq_log.setLevel(logging.CRITICAL)
    config = write_functions(
        space.tmp_path,
        f"""
        [functions.echo]
        handler = "tests.support.handlers:echo"
        concurrency = {CONCURRENCY}
        on_success = "queue:{results}"
        """,
    )
    functions_file = space.functions(config.read_text())
    settings = space.settings.with_overrides(publish_timeout_s=PUBLISH_TIMEOUT_S)
    await declare_queue(node_amqp, results)
    worker = WorkerProcess(space, config)
    gateway = Gateway(settings, functions_file, {})
    seen: list[str] = []
    consumer = None
    alarm = False
    try:
        await worker.start()
        await gateway.start("127.0.0.1", 0)
        consumer = await _consume_ids(node_amqp, results, seen)
        # Before the alarm, with the ordinary publish timeout: a node still busy with an
        # earlier chaos test (a restart's recovery) may take more than 3 s to confirm.
        async with Client(settings=space.settings) as warm:
            before = [await warm.invoke("echo", {"n": n}) for n in range(5)]
            # Due while the alarm lasts: they reach the worker then, through the ladder.
            delayed = await warm.invoke_many(
                [("echo", {"n": n}) for n in range(DELAYED)], delay=3
            )
        async with Client(settings=settings) as client:
            await client.invoke("echo", {"warm": True})
            await _eventually(lambda: set(before) <= set(seen), 30, "the first results")

            node.raise_memory_alarm()
            alarm = True
            raised_at = time.monotonic()

            # The producer: the first publish tells the broker's alarm apart from a slow
            # broker only once it timed out; from then on it is refused at once.
            with pytest.raises(BrokerBlocked, match="low on memory") as first:
                await client.invoke("echo", {"during": 1})
            assert first.value.published, "the first publish went out before the alarm"
            assert "resource alarm" in str(first.value)
            started = time.monotonic()
            with pytest.raises(BrokerBlocked, match="not published") as second:
                await client.invoke("echo", {"during": 2})
            assert not second.value.published
            assert time.monotonic() - started < PUBLISH_TIMEOUT_S + 2

            # The gateway: 503 in FC's shape, within its publish timeout.
            url = f"http://127.0.0.1:{gateway.port}/2023-03-30/functions/echo/invocations"
            headers = {"x-fc-invocation-type": "Async", "content-type": "application/json"}
            timings = []
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
                for _ in range(2):
                    started = time.monotonic()
                    async with http.post(url, data=b"{}", headers=headers) as response:
                        error = await response.json()
                        timings.append(time.monotonic() - started)
                        assert response.status == 503, error
                        assert error["Code"] == "ServiceUnavailable"
                        assert "low on memory" in error["Message"], error
            assert max(timings) < PUBLISH_TIMEOUT_S + 2, timings

            # The worker: what came due is held, unacknowledged and bounded by its
            # prefetch; nothing of it is settled while the alarm lasts.
            queue = space.names.function_queue("echo")
            await _eventually(
                lambda: _queue_counts(node, queue)[1] > 0, 30, "deliveries held by the worker"
            )
            await asyncio.sleep(4)  # every delayed invocation is due by now
            ready, unacked = _queue_counts(node, queue)
            during = len(seen)
            assert unacked <= 2 * CONCURRENCY, (ready, unacked)
            assert ready + unacked >= DELAYED - 2 * CONCURRENCY, (ready, unacked)
            assert not set(delayed) & set(seen), "a result was confirmed during the alarm"
            assert any('"broker_blocked"' in line for line in worker.lines), worker.lines[-20:]

            node.clear_memory_alarm()
            alarm = False
            cleared_at = time.monotonic()
            recovered = await _eventually(
                lambda: set(before + delayed) <= set(seen), 90, "every accepted invocation"
            )
            # Once cleared, the producer works again.
            after = await client.invoke("echo", {"after": True})
            await _eventually(lambda: after in seen, 30, "an invocation after the alarm")
        accepted = set(before + delayed + [after])
        lost = accepted - set(seen)
        duplicates = len(seen) - len(set(seen))
        print(
            f"\nresource alarm: {len(accepted)} accepted, lost {len(lost)}, duplicates "
            f"{duplicates}, results during the alarm {during - len(before)}, alarm lasted "
            f"{cleared_at - raised_at:.1f} s, all results {recovered:.1f} s after it cleared"
        )
        assert not lost
    finally:
        aiormq_log.setLevel(quiet_before)
        if alarm:
            node.clear_memory_alarm()
        if consumer is not None:
            channel, queue_obj, tag = consumer
            await queue_obj.cancel(tag)
            await channel.close()
        await gateway.stop()
        await worker.kill()


async def test_a_task_whose_publish_may_have_gone_out_stays_enqueued_and_runs_after_the_alarm(
    node_namespace: NodeNamespace, node_amqp: aio_pika.abc.AbstractConnection
) -> None:
    """A publish that timed out under the alarm may still be taken by the broker: its task
    must not be marked Failed (the worker would then drop the invocation unrun). One that
    was held back never went out: its task is Failed, and says why."""
    space = node_namespace
    node = space.node
    store = f"sqlite:///{space.tmp_path / 'tasks.db'}"
    config = write_functions(
        space.tmp_path,
        """
        [functions.echo]
        handler = "tests.support.handlers:echo"
        task_mode = true
        """,
    )
    space.functions(config.read_text())
    settings = space.settings.with_overrides(
        publish_timeout_s=PUBLISH_TIMEOUT_S, task_store=store
    )
    worker = WorkerProcess(space, config, ASYNCINVOKE_TASK_STORE=store)
    alarm = False
    try:
        await worker.start()
        async with Client(settings=space.settings) as warm:
            await warm.invoke("echo", {"warm": True})
        async with Client(settings=settings) as client:
            await client.invoke("echo", {"warm": True})
            node.raise_memory_alarm()
            alarm = True
            with pytest.raises(BrokerBlocked) as first:
                await client.invoke("echo", {"during": 1}, id="maybe-out", task=True)
            assert first.value.published
            with pytest.raises(BrokerBlocked) as second:
                await client.invoke("echo", {"during": 2}, id="held-back", task=True)
            assert not second.value.published
            store_api = await client.tasks()
            maybe = await store_api.get("maybe-out")
            held = await store_api.get("held-back")
            assert maybe is not None and maybe.status.value == "Enqueued", maybe
            assert held is not None and held.status.value == "Failed", held
            assert "not accepted by the broker" in (held.events[-1].detail or "")

            node.clear_memory_alarm()
            alarm = False

            async def ended() -> str:
                task = await store_api.get("maybe-out")
                assert task is not None
                return task.status.value

            deadline = time.monotonic() + 60
            status = await ended()
            while status != "Succeeded" and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                status = await ended()
            assert status == "Succeeded", "the publish the broker took after the alarm ran"
            assert (await store_api.get("held-back")).status.value == "Failed"  # type: ignore[union-attr]
    finally:
        if alarm:
            node.clear_memory_alarm()
        await worker.kill()
