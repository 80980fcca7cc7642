"""The connection to RabbitMQ: channels and confirmed, persistent publishes.

Thin over aio-pika. Everything that publishes goes through ``Broker.publish``,
which always waits for the broker's confirm, always has a timeout (a publish
during a reconnect can otherwise hang), and raises ``UnroutableError`` when a
mandatory publish is returned.
"""

from __future__ import annotations

import ssl
from typing import Any
from uuid import uuid4

import aio_pika
import aiormq
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from asyncinvoke import contract
from asyncinvoke.errors import BrokerUnavailable, PublishError, PublishTimeout, UnroutableError
from asyncinvoke.observability import get_logger
from asyncinvoke.settings import Settings, redact_url

PERSISTENT = 2
log = get_logger(component="broker")
RECONNECT_INTERVAL_S = 2.0  # between attempts while the broker is away


class Broker:
    def __init__(self, settings: Settings, *, name: str = "asyncinvoke"):
        self.settings = settings
        self.name = name
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._publisher: aio_pika.abc.AbstractChannel | None = None
        # Up from connect until the connection is lost, and again once aio-pika has
        # reconnected and restored every channel and consumer.
        self._up = False

    async def connect(self) -> None:
        url = self.settings.amqp_url
        kwargs: dict[str, Any] = {"client_properties": {"connection_name": self.name}}
        if url.startswith("amqps://"):
            kwargs["ssl_context"] = ssl.create_default_context()
        try:
            self.connection = await aio_pika.connect_robust(
                url, timeout=10, reconnect_interval=RECONNECT_INTERVAL_S, **kwargs
            )
        except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
            raise BrokerUnavailable(
                f"cannot connect to RabbitMQ at {redact_url(url)}: {exc or type(exc).__name__}; "
                "start it (make broker) or set ASYNCINVOKE_AMQP_URL"
            ) from None
        self._publisher = await self.connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self.connection.close_callbacks.add(self._on_lost)
        self.connection.reconnect_callbacks.add(self._on_restored)
        self._up = True

    def _on_lost(self, _: object, exc: BaseException | None = None) -> None:
        if self._up:
            log.warning("broker_connection_lost", error=str(exc) if exc else None)
        self._up = False

    def _on_restored(self, _: object) -> None:
        self._up = True
        log.info("broker_reconnected")

    async def close(self) -> None:
        self._up = False
        if self.connection is not None:
            await self.connection.close()
            self.connection = None

    async def __aenter__(self) -> Broker:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def is_connected(self) -> bool:
        return self._up

    @property
    def publisher(self) -> aio_pika.abc.AbstractChannel:
        if self._publisher is None:
            raise BrokerUnavailable("not connected: call connect() first")
        return self._publisher

    async def channel(self, prefetch: int | None = None) -> aio_pika.abc.AbstractChannel:
        assert self.connection is not None, "connect() first"
        channel = await self.connection.channel(publisher_confirms=False)
        if prefetch is not None:
            await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str | None = None,
        headers: dict[str, Any] | None = None,
        mandatory: bool = True,
        reply_to: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Publish persistently and wait for the confirm; raise if refused or returned."""
        properties = spec.Basic.Properties(
            content_type=contract.CONTENT_TYPE,
            delivery_mode=PERSISTENT,
            # Returns are matched to publishes by message_id: keep it unique per publish.
            message_id=message_id or uuid4().hex,
            headers=headers,
            reply_to=reply_to,
            correlation_id=correlation_id,
        )
        channel = await self.publisher.get_underlay_channel()
        try:
            result = await channel.basic_publish(  # type: ignore[call-arg]  # the ABC lacks wait
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=mandatory,
                timeout=self.settings.publish_timeout_s,
                # The confirm is still awaited; not waiting for the socket write as
                # well (under the channel's lock) keeps publishes pipelined.
                wait=False,
            )
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise PublishError(
                f"exchange {exchange!r} does not exist: run 'asyncinvoke topology declare'",
                exchange=exchange,
                routing_key=routing_key,
            ) from None
        except aiormq.exceptions.PublishError:
            raise UnroutableError(
                f"no queue is bound to exchange {exchange!r} for routing key {routing_key!r}",
                exchange=exchange,
                routing_key=routing_key,
            ) from None
        except aiormq.exceptions.DeliveryError as exc:
            raise PublishError(
                f"the broker refused the message for {exchange!r}/{routing_key!r}: {exc}",
                exchange=exchange,
                routing_key=routing_key,
            ) from None
        except TimeoutError:
            raise PublishTimeout(
                f"no confirm from the broker within {self.settings.publish_timeout_s:g} s "
                f"for {exchange!r}/{routing_key!r}",
                exchange=exchange,
                routing_key=routing_key,
            ) from None
        if isinstance(result, DeliveredMessage):  # returned, should on_return_raises be off
            raise UnroutableError(
                f"no queue is bound to exchange {exchange!r} for routing key {routing_key!r}",
                exchange=exchange,
                routing_key=routing_key,
            )
