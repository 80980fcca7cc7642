"""Queue depths and consumers, read with passive declares on the gateway's connection.

AMQP's ``queue.declare-ok`` gives the messages *ready* in a queue and its consumers;
messages delivered and not yet acknowledged are not in it (only the management plugin
knows them). The console therefore shows, beside "ready", the attempts in flight in this
process's worker (``serve``), and says that is what it is.

The delay ladder is one set of queues for every function, so what waits there is a total.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiormq

from asyncinvoke import ladder, topology
from asyncinvoke.broker import Broker

CACHE_S = 1.0  # live refreshes of several pages share one reading a second


@dataclass(frozen=True, slots=True)
class Depth:
    ready: int
    consumers: int


class Depths:
    def __init__(self, broker: Broker, names: topology.Names):
        self._broker = broker
        self._names = names
        self._cached: tuple[float, dict[str, Depth | None]] | None = None

    def ladder_queues(self) -> list[str]:
        return [self._names.level(level) for level in range(ladder.LEVELS)]

    async def read(self, queues: list[str], *, fresh: bool = False) -> dict[str, Depth | None]:
        """Each queue's depth, or None for a queue that does not exist; ``fresh``: now,
        not as read up to CACHE_S ago."""
        now = time.monotonic()
        if not fresh and self._cached is not None and now - self._cached[0] < CACHE_S:
            cached = self._cached[1]
            if all(queue in cached for queue in queues):
                return cached
        connection = self._broker.connection
        if connection is None:
            raise ConnectionError("not connected to RabbitMQ")
        found: dict[str, Depth | None] = {}
        channel = await connection.channel(publisher_confirms=False)
        try:
            for queue in queues:
                underlay = await channel.get_underlay_channel()
                try:
                    declared = await underlay.queue_declare(queue, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    found[queue] = None  # the broker closed the channel: open another
                    await channel.close()
                    channel = await connection.channel(publisher_confirms=False)
                    continue
                found[queue] = Depth(declared.message_count or 0, declared.consumer_count or 0)
        finally:
            if not channel.is_closed:
                await channel.close()
        self._cached = (now, found)
        return found
