"""What the retry, destination and poison tests share: queues, raw publishes, accounting.

Accounting is the point: every invocation a test sends must end in exactly one
terminal record, and nothing may be left behind in the queues it looked at.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from asyncinvoke import contract, topology
from asyncinvoke.functions import FunctionSpec
from tests.support.handlers import CALLS

Connection = AbstractConnection
Incoming = AbstractIncomingMessage


async def publish_raw(connection: Connection, names: topology.Names, wire: dict[str, Any]) -> None:
    """Publish an envelope as any AMQP producer would (SPEC section 4), confirmed."""
    async with connection.channel(publisher_confirms=True) as channel:
        exchange = await channel.get_exchange(names.invoke, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                contract.pack(wire),
                content_type=contract.CONTENT_TYPE,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=wire["id"],
            ),
            routing_key=wire["fn"],
            mandatory=True,
            timeout=10,
        )


def attempts_of(function: str, invocation_id: str) -> list[tuple[int, float]]:
    """(attempt, start time) of each run of ``invocation_id``, from the handlers' CALLS."""
    return [(attempt, t) for inv, attempt, t in CALLS[function] if inv == invocation_id]


def by_request_id(messages: Iterable[Incoming]) -> dict[str, tuple[Incoming, dict[str, Any]]]:
    """Records keyed by invocation id; a second record for one id fails the test."""
    keyed: dict[str, tuple[Incoming, dict[str, Any]]] = {}
    for message in messages:
        record = contract.unpack(message.body)
        request_id = record["requestContext"]["requestId"]
        assert request_id not in keyed, f"two records for {request_id}"
        keyed[request_id] = (message, record)
    return keyed


async def assert_empty(connection: Connection, *queues: str) -> None:
    """Nothing is left in ``queues`` (ready or returned by a stopped consumer)."""
    depths = {queue: await topology.queue_depth(connection, queue) for queue in queues}
    assert all(depth == 0 for depth in depths.values()), f"left behind: {depths}"


def assert_header(message: Incoming, invocation_id: str, function: str, condition: str) -> None:
    """The AMQP properties of a record (SPEC section 5)."""
    assert message.message_id == invocation_id
    assert message.headers.get("x-function") == function
    assert message.headers.get("x-condition") == condition


class RecordSink:
    """Consumes the records arriving in some queues, in the background, until closed.

    For tests that cannot know how many records will come (a crash may duplicate
    one): wait until every id sent has a record, stop the producers, then ``close``,
    which also takes what was still on its way, so nothing is left uncounted.
    """

    def __init__(self, connection: Connection, *queues: str):
        self.connection = connection
        self.queues = queues
        self.received: dict[str, list[Incoming]] = {queue: [] for queue in queues}
        self._arrived = asyncio.Event()
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._consumers: list[tuple[aio_pika.abc.AbstractQueue, str]] = []

    async def __aenter__(self) -> RecordSink:
        self._channel = await self.connection.channel()
        await self._channel.set_qos(prefetch_count=500)
        for name in self.queues:
            queue = await self._channel.get_queue(name, ensure=False)
            tag = await queue.consume(self._taker(name))
            self._consumers.append((queue, tag))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _taker(self, name: str) -> Any:
        async def take(message: Incoming) -> None:
            await message.ack()
            self.received[name].append(message)
            self._arrived.set()

        return take

    def request_ids(self) -> set[str]:
        return {
            contract.unpack(message.body)["requestContext"]["requestId"]
            for messages in self.received.values()
            for message in messages
        }

    async def wait_for_ids(self, ids: set[str], timeout: float) -> None:
        """Until every one of ``ids`` has a record; AssertionError naming the rest otherwise."""
        try:
            async with asyncio.timeout(timeout):
                while ids - self.request_ids():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            missing = ids - self.request_ids()
            raise AssertionError(f"no record within {timeout} s for {sorted(missing)}") from None

    async def close(self) -> None:
        if self._channel is None or self._channel.is_closed:
            return
        for queue, tag in self._consumers:
            await queue.cancel(tag)
        for name in self.queues:
            queue = await self._channel.get_queue(name, ensure=False)
            while (message := await queue.get(fail=False, timeout=10)) is not None:
                await message.ack()
                self.received[name].append(message)
        await self._channel.close()


async def first_done(*aws: asyncio.Future[Any], timeout: float) -> set[asyncio.Future[Any]]:
    """Wait for the first of ``aws`` to finish; an empty set means ``timeout`` passed."""
    done, _ = await asyncio.wait(aws, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    return done


async def assert_namespace_empty(
    connection: Connection, names: topology.Names, functions: Iterable[str]
) -> None:
    """No message is left anywhere in the namespace: function and suspect queues, the
    ladder, unrouted, dead and failed. Checked once the worker has stopped, this also
    catches a delivery it held unacknowledged (closing returns it to its queue)."""
    specs = [FunctionSpec(name) for name in functions]
    plans = (topology.core_plan(names), topology.functions_plan(names, specs))
    queues = [queue.name for plan in plans for queue in plan.queues if not queue.holds_state]
    depths = {queue: await topology.queue_depth(connection, queue) for queue in queues}
    left = {queue: depth for queue, depth in depths.items() if depth != 0}
    assert not left, f"left behind: {left}"
