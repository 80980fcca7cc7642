"""The rule under everything: a delivery is acknowledged only after every publish that
follows from it was confirmed. Here the broker refuses (nacks) the follow-up, for real:
a policy makes the target queue full with ``reject-publish`` (on the private node, as a
policy is the broker's own state). The delivery stays unacknowledged and runs again;
once the queue takes messages again, the record arrives, once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import aio_pika
import pytest

from asyncinvoke import Client, contract
from tests.chaos.conftest import NodeNamespace
from tests.conftest import running_worker
from tests.support import handlers

pytestmark = pytest.mark.timeout(180)

FULL = json.dumps({"max-length": 0, "overflow": "reject-publish"})


def _in_broker(space: NodeNamespace, queues: list[str]) -> int:
    """Messages ready or unacknowledged in ``queues``, as the node counts them."""
    counts = space.node.queue_counts()
    return sum(sum(counts.get(queue, (0, 0))) for queue in queues)


async def _eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_a_refused_follow_up_leaves_the_delivery_unacknowledged_and_it_runs_again(
    node_namespace: NodeNamespace, node_amqp: aio_pika.abc.AbstractConnection
) -> None:
    space = node_namespace
    names = space.names
    function = "doomed"
    functions_file = space.functions(
        """
        [functions.doomed]
        handler = "tests.support.handlers:refuse"
        # Each refusal returns the delivery (a nack, about once a second), and RabbitMQ
        # 3.x counts a nack towards the delivery limit: room for the refusals here.
        delivery_limit = 20
        """
    )
    holding = [names.function_queue(function), names.suspect_queue(function), names.dead]
    handlers.CALLS.pop(function, None)
    policy = f"full-{space.ns}"
    async with running_worker(space, functions_file), Client(settings=space.settings) as client:
        # A quorum queue takes one message over its max-length: this one fills it.
        await client.broker.publish(names.failed, function, b"filler", message_id="filler")
        space.node.ctl("set_policy", "--apply-to", "queues", policy, f"^{names.failed}$", FULL)
        await asyncio.sleep(1)  # the policy reaches the queue
        try:
            invocation = await client.invoke(function, {"n": 1})
            # Runs, its record is refused, the delivery comes back and runs again.
            await _eventually(
                lambda: len(handlers.CALLS[function]) >= 2, 60, "the attempt to run again"
            )
            # Still the broker's, unacknowledged (the node's counts lag a few seconds).
            await _eventually(
                lambda: _in_broker(space, holding) >= 1, 15, "the delivery in the broker"
            )
            assert len(handlers.CALLS[function]) >= 2
            # Room is made the way an operator would: the queue is drained. (Removing
            # the policy is not enough on 3.10: a publisher channel that met a full
            # quorum queue is refused until the queue's length changes.)
            channel = await node_amqp.channel()
            queue = await channel.declare_queue(names.failed, passive=True)
            filler = await queue.get(timeout=5)
            assert filler.body == b"filler"
            await filler.ack()
            records = []
            deadline = time.monotonic() + 60
            while not records and time.monotonic() < deadline:
                message = await queue.get(timeout=5, fail=False)
                if message is None:
                    await asyncio.sleep(0.2)
                    continue
                records.append(contract.unpack(message.body))
                await message.ack()
            await asyncio.sleep(2)  # a second record, if there were one, is here now
            while (extra := await queue.get(timeout=5, fail=False)) is not None:
                records.append(contract.unpack(extra.body))
                await extra.ack()
            await channel.close()
        finally:
            space.node.ctl("clear_policy", policy)
    assert [record["requestContext"]["requestId"] for record in records] == [invocation]
    assert records[0]["requestContext"]["condition"] == contract.NON_RETRYABLE
    print(
        f"\nrefused failure record: the attempt ran {len(handlers.CALLS[function])} times, "
        "one record once the queue took it"
    )
