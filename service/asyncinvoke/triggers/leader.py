"""One scheduler per namespace, elected by the broker: no lock table, no Redis.

Every worker consumes ``{ns}.triggers.leader``, a quorum queue with a single active
consumer: RabbitMQ delivers to one consumer at a time, and when that consumer's
connection dies it moves on to the next. The queue holds one message, the *baton*: the
last scheduled time handled per timer trigger. The worker it is delivered to is the
leader and keeps it unacknowledged. The leader records progress by publishing a new baton
(confirmed) and only then acking the one it held, so a ``kill -9`` anywhere leaves a baton
in the queue with the progress of the last record; the broker hands it to the next active
consumer, which catches up from there.

Each worker publishes an empty baton when it starts (so a fresh namespace, or one whose
queue was purged, has one). The leader folds every baton it receives into its state
(latest time per trigger wins) and, holding two, records once and acks both, so the
batons come back to one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import aio_pika
import aiormq

from asyncinvoke import contract
from asyncinvoke.broker import Broker
from asyncinvoke.errors import AsyncInvokeError
from asyncinvoke.observability import get_logger
from asyncinvoke.subscription import Subscription
from asyncinvoke.topology import Names

BATON_VERSION = 1
# Batons a leader may hold at once: more than one means a start-up's extra, to fold in.
PREFETCH = 8

log = get_logger(component="triggers")


def merge(held: Mapping[str, int], received: Mapping[str, int]) -> dict[str, int]:
    """Two batons' progress as one: per trigger, the later time handled."""
    merged = dict(held)
    for key, handled_ms in received.items():
        if handled_ms > merged.get(key, -1):
            merged[key] = handled_ms
    return merged


def encode_baton(handled: Mapping[str, int]) -> bytes:
    return contract.pack({"v": BATON_VERSION, "handled": dict(handled)})


def decode_baton(body: bytes) -> dict[str, int]:
    """A baton's progress; a baton that cannot be read counts as empty (it is acked
    away, never a reason to stop scheduling)."""
    try:
        data: Any = contract.unpack(body)
        handled = data["handled"]
        return {str(key): int(value) for key, value in handled.items()}
    except Exception:
        return {}


class Leadership:
    """This worker's candidacy: ``elected`` is set while it holds the baton queue's
    attention; ``handled`` is the progress it holds; ``record`` persists it."""

    def __init__(self, broker: Broker, names: Names):
        self.broker = broker
        self.names = names
        self.handled: dict[str, int] = {}
        self.elected = asyncio.Event()
        self.deposed = asyncio.Event()
        self.deposed.set()
        self._held: list[aio_pika.abc.AbstractIncomingMessage] = []
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._subscription: Subscription | None = None
        self._lock = asyncio.Lock()

    @property
    def is_leader(self) -> bool:
        return self.elected.is_set()

    @property
    def problem(self) -> str | None:
        """Why this worker is no candidate now (the baton queue was deleted), or None."""
        return self._subscription.problem if self._subscription is not None else None

    async def start(self) -> None:
        channel = self._channel = await self.broker.channel(prefetch=PREFETCH)
        channel.close_callbacks.add(self._on_channel_lost)
        assert self.broker.connection is not None
        self.broker.connection.close_callbacks.add(self._on_channel_lost)
        # Consumed again after a reconnect while the queue exists (a candidate again);
        # never declared again: a deleted namespace stays deleted (subscription.py).
        # A queue declared anew after it was deleted has no baton: this worker gives it one.
        self._subscription = Subscription(
            channel,
            self.names.trigger_leader,
            lambda message: self._on_baton(aio_pika.IncomingMessage(message)),
            on_cancelled=self._step_down,  # the queue, and the baton held, are gone
            on_resumed=self._give_baton_again,
        )
        await self._subscription.start()
        await self.broker.publish("", self.names.trigger_leader, encode_baton({}))

    async def _give_baton_again(self) -> None:
        try:
            await self.broker.publish("", self.names.trigger_leader, encode_baton({}))
        except AsyncInvokeError as exc:
            log.warning("trigger_baton_not_given", error=str(exc))

    async def stop(self) -> None:
        """Step down: the held baton goes back to the queue with the last recorded progress."""
        self._step_down()
        if self._subscription is not None:
            self._subscription.forget()
        if self._channel is not None:
            self._channel.close_callbacks.discard(self._on_channel_lost)
            with contextlib.suppress(Exception):
                await self._channel.close()
            self._channel = self._subscription = None
        if self.broker.connection is not None:
            self.broker.connection.close_callbacks.discard(self._on_channel_lost)

    async def _on_baton(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with self._lock:
            self.handled = merge(self.handled, decode_baton(message.body))
            self._held.append(message)
            if not self.elected.is_set():
                log.info("trigger_leader_elected", triggers=len(self.handled))
                self.deposed.clear()
                self.elected.set()
            if len(self._held) > 1:
                await self._record()

    async def record(self, handled: Mapping[str, int]) -> None:
        """Persist ``handled`` as the new baton (confirmed), then let go of the old ones."""
        async with self._lock:
            # A baton folded in meanwhile may be ahead for a trigger: keep the later time.
            ahead = {key: ms for key, ms in self.handled.items() if key in handled}
            self.handled = merge(handled, ahead)
            await self._record()

    async def _record(self) -> None:
        if not self.elected.is_set():
            return
        try:
            await self.broker.publish("", self.names.trigger_leader, encode_baton(self.handled))
        except AsyncInvokeError as exc:
            # The held baton still has the last progress: recorded next time.
            log.warning("trigger_progress_not_recorded", error=str(exc))
            return
        held, self._held = self._held, []
        for message in held:
            with contextlib.suppress(aiormq.exceptions.AMQPError, RuntimeError):
                await message.ack()

    def _on_channel_lost(self, *_: object) -> None:
        # Deliveries of a lost channel cannot be acked, and the broker has given the
        # baton back to the queue: whoever it goes to now leads. A late notice of an old
        # channel's loss must not depose a leader already holding a baton of the new one.
        if self._held and all(_is_open(message) for message in self._held):
            return
        self._step_down()

    def _step_down(self) -> None:
        if self.elected.is_set():
            log.warning("trigger_leader_stepped_down")
        self.elected.clear()
        self.deposed.set()
        self._held = []


def _is_open(message: aio_pika.abc.AbstractIncomingMessage) -> bool:
    """Whether the channel ``message`` came on is still open (aiormq raises for one that
    lost its transport)."""
    try:
        return not message.channel.is_closed
    except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError):
        return False
