"""A robust connection that moves to the next node of the cluster when it loses one.

aio-pika's ``RobustConnection`` reconnects, restoring channels, queues and consumers,
but always to the one URL it was made with: with that node dead it would knock on its
door forever. aio-pika calls ``_on_connection_close`` both when an open connection is
lost and when an attempt to open one fails, so that is where the next node is chosen;
the reconnect loop then dials ``self.url`` as always.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aio_pika
import aiormq
from yarl import URL

from asyncinvoke.errors import BrokerUnavailable
from asyncinvoke.nodes import NodeRing

CONNECT_TIMEOUT_S = 10.0  # one node's attempt; a dead node's port usually refuses at once


class FailoverConnection(aio_pika.RobustConnection):
    def __init__(
        self,
        ring: NodeRing,
        *,
        transport_factory: aiormq.connection.TransportFactory | None = None,
        **kwargs: Any,
    ):
        super().__init__(URL(ring.current.url), **kwargs)
        self.ring = ring
        if transport_factory is not None:
            # aio-pika passes on to aiormq.connect only the keywords it knows; this one
            # goes into what it passes on, for every (re)connect.
            self.kwargs["transport_factory"] = transport_factory

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # The close callbacks (the Broker's) still see the node that was lost; the
        # reconnect loop cannot run before this returns (nothing is awaited after).
        await super()._on_connection_close(closing)
        if not (self._close_called or self.is_closed) and len(self.ring.nodes) > 1:
            self.url = URL(self.ring.advance().url)


async def connect(
    ring: NodeRing,
    *,
    name: str,
    reconnect_interval_s: float,
    transport_factory: aiormq.connection.TransportFactory | None = None,
) -> FailoverConnection:
    """Connect to the first node that answers, starting at the ring's position.

    Raises BrokerUnavailable, naming every node tried (passwords hidden), if none does.
    """
    failures: list[str] = []
    for node in ring.in_order():
        ring.position = ring.nodes.index(node)
        kwargs: dict[str, Any] = {
            "client_properties": {"connection_name": name},
            "reconnect_interval": reconnect_interval_s,
        }
        if node.url.lower().startswith("amqps://"):
            kwargs["ssl_context"] = ssl.create_default_context()
        connection = FailoverConnection(ring, transport_factory=transport_factory, **kwargs)
        try:
            await connection.connect(timeout=CONNECT_TIMEOUT_S)
        except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
            failures.append(f"{node.shown}: {str(exc) or type(exc).__name__}")
            await connection.close()
            continue
        ring.position = ring.nodes.index(node)  # a failed attempt moved the ring on
        return connection
    raise BrokerUnavailable(
        f"cannot connect to RabbitMQ at {'; '.join(failures)}; "
        "start it (make broker) or set ASYNCINVOKE_AMQP_URL"
    )
