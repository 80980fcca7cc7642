"""Consuming a queue through aiormq, under aio-pika's robust channel.

aio-pika turns every delivery into an ``IncomingMessage`` (every property parsed into
an attribute) and runs the callback in a second task, awaited by the first. On a no-op
invocation that is a large share of the worker's time (measured in docs/benchmarks.md,
bare aiormq against bare aio-pika). So the worker's consumers sit one layer lower, and the callback
gets a ``Delivery``, a slim view of the few properties the pipeline reads. It runs in a
task of ours rather than aiormq's, which a closing channel would cancel.

While a resource alarm blocks the connection (``Broker.blocked_reason``), a delivery
is held before its attempt starts: its follow-ups could not be confirmed, so it
would only run and wait. The prefetch bounds what is held; the attempts start once
the alarm clears.

The robust channel still does the reconnecting: once it is reopened on a new
connection (its prefetch restored), the consumer subscribes again if its queue still
exists, and never declares it (subscription.py: a namespace deleted while the worker
ran stays deleted, and readiness says so). A consumer the broker cancels (its queue
deleted) subscribes again in the background once the queue is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import aio_pika
import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.common import FieldValue

from asyncinvoke.acks import Acks
from asyncinvoke.broker import Broker
from asyncinvoke.errors import AsyncInvokeError
from asyncinvoke.observability import get_logger
from asyncinvoke.subscription import FanoutSubscription, Subscription

log = get_logger(component="consumer")

# A consumer argument that makes a consumer the broker never gives a message (a credit
# below 1, encoded as a 64-bit 'long', which is what RabbitMQ 3.x reads it as).
_ZERO_CREDIT: dict[str, FieldValue] = {"x-credit": {"credit": -(2**63), "drain": False}}


class Message(Protocol):
    """What the worker reads of a delivery: an aio-pika ``IncomingMessage`` or a
    ``Delivery``."""

    @property
    def body(self) -> bytes: ...
    @property
    def channel(self) -> Any: ...  # the aiormq channel it came on (for acks)
    @property
    def delivery_tag(self) -> int | None: ...
    @property
    def redelivered(self) -> bool | None: ...
    @property
    def routing_key(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def reply_to(self) -> str | None: ...
    @property
    def correlation_id(self) -> str | None: ...


class Delivery:
    """One delivery, as the pipeline reads it; built without parsing what it does not."""

    __slots__ = (
        "body",
        "channel",
        "correlation_id",
        "delivery_tag",
        "message_id",
        "redelivered",
        "reply_to",
        "routing_key",
    )

    def __init__(self, message: DeliveredMessage):
        deliver = message.delivery
        properties = message.header.properties
        self.body: bytes = message.body
        self.channel: Any = message.channel
        self.delivery_tag: int | None = deliver.delivery_tag  # type: ignore[union-attr]
        self.redelivered: bool | None = deliver.redelivered  # type: ignore[union-attr]
        self.routing_key: str | None = deliver.routing_key  # type: ignore[union-attr]
        self.message_id: str | None = properties.message_id
        self.reply_to: str | None = properties.reply_to
        self.correlation_id: str | None = properties.correlation_id


Callback = Callable[[Delivery], Coroutine[Any, Any, None]]


async def _handed_over() -> None:
    """What aiormq's own task for a delivery runs: nothing; the attempt has its task."""


class Consumer(Subscription):
    """One queue consumed on one robust channel for the pipeline; survives reconnects
    (never re-creating the queue: subscription.py)."""

    def __init__(
        self,
        channel: aio_pika.abc.AbstractRobustChannel,
        queue: str,
        callback: Callback,
        broker: Broker | None = None,
    ):
        super().__init__(channel, queue, self._deliver)
        self.callback = callback
        self.broker = broker  # whose resource alarms hold deliveries back
        self._running: set[asyncio.Task[None]] = set()

    def _deliver(self, message: DeliveredMessage) -> Coroutine[Any, Any, None]:
        # The attempt runs in a task of ours: aiormq cancels the tasks it made for a
        # channel when the channel closes, and a connection drop must not cut a running
        # attempt short (redelivery.py settles its redelivery once it ends).
        delivery = Delivery(message)
        if self.broker is not None and self.broker.blocked_reason is not None:
            attempt = self._after_alarm(delivery)
        else:
            attempt = self.callback(delivery)
        task = asyncio.get_running_loop().create_task(attempt)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return _handed_over()

    async def _after_alarm(self, delivery: Delivery) -> None:
        assert self.broker is not None
        await self.broker.wait_unblocked()
        await self.callback(delivery)


class Consumers:
    """Every queue one worker consumes, on channels of one broker connection.

    The AMQP side of consuming lives here and nowhere else: the passive declare that
    checks a queue exists, the consumers themselves, the per-worker control queue, and
    the ack barrier. The worker only says which queues, with which prefetch and callback.
    """

    def __init__(self, broker: Broker, acks: Acks, *, barrier_timeout_s: float):
        self.broker = broker
        self.acks = acks
        self.barrier_timeout_s = barrier_timeout_s
        self._consumers: list[Consumer] = []
        self._channels: list[tuple[aio_pika.abc.AbstractRobustChannel, str, int]] = []
        self._control: FanoutSubscription | None = None

    def __bool__(self) -> bool:
        """Whether anything is consumed yet."""
        return bool(self._consumers) or self._control is not None

    async def consume(
        self, queue: str, prefetch: int, callback: Callback, *, paused: bool = False
    ) -> None:
        """Consume ``queue`` (which must exist) on a channel of its own; ``paused``: make
        the channel, but receive nothing until ``resume``."""
        channel = await self.broker.channel(prefetch=prefetch)
        self._channels.append((channel, queue, prefetch))
        underlay = await channel.get_underlay_channel()
        try:
            await underlay.queue_declare(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise AsyncInvokeError(
                f"queue {queue!r} does not exist: run 'asyncinvoke topology declare'"
            ) from None
        consumer = Consumer(channel, queue, callback, self.broker)
        self._consumers.append(consumer)
        if not paused:
            await consumer.start()
        else:
            consumer._cancelled = True

    def _find(self, queue: str) -> Consumer:
        return next(consumer for consumer in reversed(self._consumers) if consumer.queue == queue)

    async def pause(self, queue: str) -> None:
        """Stop receiving from ``queue`` (live configuration: a paused function); the
        deliveries received stay with their callbacks, which return them."""
        await self._find(queue).cancel()

    async def resume(self, queue: str) -> None:
        """Receive from ``queue`` again, on its channel, after ``pause``."""
        old = self._find(queue)
        if not old._cancelled:
            return
        consumer = Consumer(old.channel, queue, old.callback, self.broker)
        self._consumers[self._consumers.index(old)] = consumer
        await consumer.start()

    async def set_prefetch(self, queue: str, prefetch: int) -> None:
        """A new prefetch for ``queue`` (live configuration: its concurrency). RabbitMQ
        applies a per-consumer prefetch to consumers started after it, so a running
        consumer is started again (what it received stays with its callbacks)."""
        for number, (channel, consumed, _) in enumerate(self._channels):
            if consumed == queue:
                await channel.set_qos(prefetch_count=prefetch)
                self._channels[number] = (channel, queue, prefetch)
        if not self._find(queue)._cancelled:
            await self.pause(queue)
            await self.resume(queue)

    def problems(self) -> list[str]:
        """What cannot be consumed now because it was deleted (for readiness)."""
        subscriptions: list[Subscription] = [*self._consumers]
        if self._control is not None:
            subscriptions.append(self._control)
        return [problem for s in subscriptions if (problem := s.problem) is not None]

    async def control(
        self, exchange: str, callback: Callable[[Any], Coroutine[Any, Any, None]], prefetch: int
    ) -> None:
        """This worker's own queue on the fanout ``exchange`` (no acks: a broadcast lost
        with a connection is asked for again by its sender)."""
        channel = await self.broker.channel(prefetch=prefetch)
        self._control = FanoutSubscription(channel, exchange, callback)
        await self._control.start()

    async def barrier(self) -> None:
        """Return once the broker applied every ack sent so far on the consuming channels
        (``settle_barrier`` on each, at once). A queue found deleted has no acks to
        apply: the barrier's consume would only fail on it."""
        await self.acks.flush()
        missing = {consumer.queue for consumer in self._consumers if consumer.missing}
        await asyncio.gather(
            *(self._barrier(*consumed) for consumed in self._channels if consumed[1] not in missing)
        )

    async def _barrier(
        self, channel: aio_pika.abc.AbstractRobustChannel, queue: str, prefetch: int
    ) -> None:
        try:
            underlay = await channel.get_underlay_channel()
        except aiormq.exceptions.ChannelInvalidStateError:
            return  # being reopened: what it had in flight comes back anyway
        if underlay.is_closed or underlay.connection.is_closed:
            return
        try:
            async with asyncio.timeout(self.barrier_timeout_s):
                await settle_barrier(underlay, queue, restore_prefetch=prefetch)
        except TimeoutError:
            log.warning("ack_barrier_timeout", channel=underlay.number, queue=queue)
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            # The channel went away: its unacknowledged deliveries return anyway.
            log.warning("ack_barrier_failed", queue=queue, error=str(exc))

    async def cancel(self) -> None:
        """Stop receiving on every queue; deliveries received stay with their callbacks."""
        for consumer in self._consumers:
            with contextlib.suppress(Exception):
                await consumer.cancel()
        if self._control is not None:
            with contextlib.suppress(Exception):
                await self._control.cancel()


async def settle_barrier(
    channel: aiormq.abc.AbstractChannel,
    queue: str,
    *,
    restore_prefetch: int | None = None,
    keep_delivery: bool = False,
) -> None:
    """Return once the broker applied every ack sent on ``channel`` for quorum ``queue``.

    Needed before a channel's acks must hold whatever happens next: before it is closed
    (the dead-letter tool), or before a suspect runs and may kill the process (the
    worker). A ``basic.qos`` round trip is NOT enough, although the channel handles its
    frames in order: on RabbitMQ 3.10.8 the channel hands a quorum queue's settles to
    ``rabbit_fifo_client``, which, once 32 commands are pending (its soft limit), stashes
    further settles in ``unsent_commands`` and sends them only when the queue's leader
    reports earlier commands applied; a stash still held when the channel ends is
    dropped, and ``basic.qos`` is answered without waiting for it (read from the 3.10.8
    module's code). Measured on 3.10.8 (10,000 single acks on one channel, then the
    channel closed, 6 rounds each): no barrier, 57 acks lost in one round; a qos round
    trip and the barrier below, none lost. The qos only waited long enough, by luck.

    ``basic.consume`` and ``basic.cancel`` on the queue are synchronous commands through
    the queue's own log: the applied notice that releases the stash reaches the channel
    before the cancel does, and the cancel is applied after the released settles. The
    barrier consumer gets no message (zero credit); a broker that ignores ``x-credit``
    (RabbitMQ 4) may give it one, at most (prefetch 1), which is returned at once, or,
    with ``keep_delivery``, left unacknowledged until the channel closes (the dead-letter
    tool's browse, whose closing channels return the queue's head in order).
    """
    tag = f"asyncinvoke-barrier-{id(channel)}-{next(_barrier_numbers)}"

    async def give_back(message: DeliveredMessage) -> None:
        if not keep_delivery:
            assert message.delivery_tag is not None
            await channel.basic_nack(message.delivery_tag, requeue=True)

    await channel.basic_qos(prefetch_count=1)
    # Nothing more is sent on a channel where one of these failed: the broker closed it,
    # and its reopened successor gets its prefetch back from aio-pika.
    await channel.basic_consume(queue, give_back, consumer_tag=tag, arguments=_ZERO_CREDIT)
    await channel.basic_cancel(tag)
    if restore_prefetch is not None:
        # For consumers started on this channel later (a resubscribe).
        await channel.basic_qos(prefetch_count=restore_prefetch)


_barrier_numbers = itertools.count()
