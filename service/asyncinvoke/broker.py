"""The connection to RabbitMQ: channels and confirmed, persistent publishes.

Thin over aio-pika. Everything that publishes goes through ``Broker.publish``,
which always waits for the broker's confirm, always has a timeout (a publish
during a reconnect can otherwise hang), and raises ``UnroutableError`` when a
mandatory publish is returned.

Two things the broker does to publishers are handled here:

- **Returns.** aiormq matches a returned message to its publish by ``message_id``,
  and only the latest publish of an id is on file: with two publishes of one id in
  flight, the return of the first would fail the second, and the first would count
  as delivered. Records carry the invocation id as their ``message_id`` (the
  contract says so), so one id can be in flight twice (a duplicate delivery, a
  record and a retry). ``publish`` lets one publish per ``message_id`` be in flight
  at a time, and after a timeout keeps the id until the broker answered it.
- **Resource alarms.** A node low on memory or disk blocks every connection that
  publishes: no confirm comes until the alarm clears, and RabbitMQ says so
  (``connection.blocked``, with its reason) only once a publish went out. The
  producer (``wait_while_blocked=False``) gets ``BrokerBlocked`` naming the alarm.
  The worker (``wait_while_blocked=True``) holds its follow-up publishes until the
  alarm clears instead: the attempt already ran, and timing out would run it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from uuid import uuid4

import aio_pika
import aiormq
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from asyncinvoke import alarms, contract, failover
from asyncinvoke.errors import (
    BrokerBlocked,
    BrokerUnavailable,
    PublishError,
    PublishInterrupted,
    PublishTimeout,
    UnroutableError,
)
from asyncinvoke.frame_room import wait_for_room
from asyncinvoke.nodes import NodeRing, parse_nodes
from asyncinvoke.observability import get_logger
from asyncinvoke.settings import Settings

PERSISTENT = 2
log = get_logger(component="broker")
RECONNECT_INTERVAL_S = 2.0  # between attempts while the broker is away
CLOSED_CHANNEL_RETRY_S = 0.05  # before a publish a closed channel refused is tried again
# Before a publish the broker refused (basic.nack) is sent again: doubling up to the max.
NACK_RETRY_S = 0.05
NACK_RETRY_MAX_S = 0.5
# How long refusals are retried (within the publish timeout): a quorum queue's leader
# election after its node died takes a second or two; a queue that is full or has lost
# its majority refuses for longer, and the caller hears of it after this.
NACK_RETRY_WINDOW_S = 5.0
# At most one new publisher channel this often, however many publishes were refused.
FRESH_PUBLISHER_EVERY_S = 1.0
ANSWER_POLL_S = 0.1  # how often a timed-out publish is checked for the broker's late answer
# What a publish meets when the connection drops under it (aiormq's, not ours).
_CONNECTION_LOST = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)


class Broker:
    def __init__(
        self,
        settings: Settings,
        *,
        name: str = "asyncinvoke",
        wait_while_blocked: bool = False,
    ):
        self.settings = settings
        self.name = name
        self.wait_while_blocked = wait_while_blocked
        # The cluster's nodes (a bad list is a ConfigError here), and the one in use.
        self.ring = NodeRing(parse_nodes(settings.amqp_url))
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._publisher: aio_pika.abc.AbstractChannel | None = None
        # Up from connect until the connection is lost, and again once aio-pika has
        # reconnected and restored every channel and consumer.
        self._up = False
        self._connected = asyncio.Event()  # set while _up
        # The broker's reason while a resource alarm blocks this connection, else None.
        self.blocked_reason: str | None = None
        self._unblocked = asyncio.Event()
        self._unblocked.set()
        self._deadlines: set[asyncio.Timeout] = set()  # of the publishes awaiting a confirm
        self._publishing: dict[str, asyncio.Future[None]] = {}  # message_id → its publish
        self._releasing: set[asyncio.Task[None]] = set()
        self._fresh_publisher_at = 0.0  # loop time the publisher channel was last replaced
        self._retiring: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        alarms.hear_alarms()
        self.connection = await failover.connect(
            self.ring, name=self.name, reconnect_interval_s=RECONNECT_INTERVAL_S
        )
        log.info("broker_connected", node=self.node, nodes=len(self.ring.nodes))
        self._publisher = await self.connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self.connection.close_callbacks.add(self._on_lost)
        self.connection.reconnect_callbacks.add(self._on_restored)
        alarms.listen(self)
        self._up = True
        self._connected.set()

    def _on_lost(self, _: object, exc: BaseException | None = None) -> None:
        if self._up:
            log.warning(
                "broker_connection_lost", node=self.node, error=str(exc) if exc else None
            )
        self._up = False
        self._connected.clear()
        # A new connection starts unblocked; the broker says so again should the alarm last.
        self._set_unblocked()

    def _on_restored(self, _: object) -> None:
        self._up = True
        self._connected.set()
        log.info("broker_reconnected", node=self.node)

    def _is_mine(self, connection: object) -> bool:
        transport = getattr(self.connection, "transport", None)
        return transport is not None and getattr(transport, "connection", None) is connection

    def _on_blocked(self, connection: object, reason: str) -> None:
        if not self._is_mine(connection):
            return
        self.blocked_reason = reason or "resource alarm"
        self._unblocked.clear()
        log.error(
            "broker_blocked",
            reason=self.blocked_reason,
            effect="publishes wait until the alarm clears"
            if self.wait_while_blocked
            else "publishes fail with BrokerBlocked until the alarm clears",
        )
        if self.wait_while_blocked:
            for deadline in list(self._deadlines):
                if not deadline.expired():
                    deadline.reschedule(None)

    def _on_unblocked(self, connection: object) -> None:
        if self._is_mine(connection) and self.blocked_reason is not None:
            log.warning("broker_unblocked", reason=self.blocked_reason)
            self._set_unblocked()

    def _set_unblocked(self) -> None:
        self.blocked_reason = None
        self._unblocked.set()
        when = asyncio.get_running_loop().time() + self.settings.publish_timeout_s
        for deadline in list(self._deadlines):
            if not deadline.expired() and deadline.when() is None:
                deadline.reschedule(when)

    async def wait_unblocked(self) -> None:
        """Return once no resource alarm blocks this connection."""
        await self._unblocked.wait()

    async def close(self) -> None:
        self._up = False
        alarms.forget(self)
        for retiring in list(self._retiring):
            retiring.cancel()
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

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the connection (a failover takes a second or
        two); whether it is up."""
        if not self._up:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._connected.wait()
        return self._up

    @property
    def node(self) -> str:
        """The node in use, or being tried while reconnecting (its URL, password hidden)."""
        return self.ring.current.shown

    @property
    def publisher(self) -> aio_pika.abc.AbstractChannel:
        if self._publisher is None:
            raise BrokerUnavailable("not connected: call connect() first")
        return self._publisher

    async def channel(self, prefetch: int | None = None) -> aio_pika.abc.AbstractRobustChannel:
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
        message_id = message_id or uuid4().hex
        properties = spec.Basic.Properties(
            content_type=contract.CONTENT_TYPE,
            delivery_mode=PERSISTENT,
            message_id=message_id,
            headers=headers,
            reply_to=reply_to,
            correlation_id=correlation_id,
        )
        sent = False
        nacks = 0  # basic.nack answers so far
        first_nack_at = 0.0
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s) as deadline:
                self._deadlines.add(deadline)
                try:
                    while True:
                        # While failing over to another node: wait for it, in the timeout.
                        await self._connected.wait()
                        await self._hold_while_blocked(deadline)
                        mine = await self._take_message_id(message_id)
                        sent = True
                        used = self.publisher
                        try:
                            result = await self._publish_alone(
                                used, body, exchange, routing_key, properties, mandatory, mine
                            )
                            break
                        except aiormq.exceptions.ChannelInvalidStateError:
                            # Refused before it went out: the channel went with its node
                            # a moment before the connection's loss is known. Once it is,
                            # the wait above lasts until the next node answers.
                            sent = False
                            await asyncio.sleep(CLOSED_CHANNEL_RETRY_S)
                        except aiormq.exceptions.DeliveryError as exc:
                            if isinstance(exc, aiormq.exceptions.PublishError):
                                raise  # returned: unroutable, sending again cannot help
                            # basic.nack: the broker did not take it. A quorum queue with
                            # no leader for now (its node just died: the election takes a
                            # second or so, or a majority is gone) refuses this way, so
                            # it is sent again within the timeout.
                            sent = False
                            now = asyncio.get_running_loop().time()
                            first_nack_at = first_nack_at or now
                            refused_for = now - first_nack_at
                            if refused_for >= NACK_RETRY_WINDOW_S:
                                raise self._refused_error(
                                    exchange, routing_key, refused_for
                                ) from None
                            await self._fresh_publisher(used)
                            await asyncio.sleep(min(NACK_RETRY_S * 2**nacks, NACK_RETRY_MAX_S))
                            nacks += 1
                finally:
                    self._deadlines.discard(deadline)
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
                f"the publish to {exchange!r}/{routing_key!r} was not confirmed: the broker "
                f"refused the message: {exc}",
                exchange=exchange,
                routing_key=routing_key,
            ) from None
        except _CONNECTION_LOST as exc:
            raise _lost_error(exchange, routing_key, sent, exc, self.node) from None
        except TimeoutError:
            if nacks and not sent:
                waited = asyncio.get_running_loop().time() - first_nack_at
                raise self._refused_error(exchange, routing_key, waited) from None
            raise self._timeout_error(exchange, routing_key, sent) from None
        if isinstance(result, DeliveredMessage):  # returned, should on_return_raises be off
            raise UnroutableError(
                f"no queue is bound to exchange {exchange!r} for routing key {routing_key!r}",
                exchange=exchange,
                routing_key=routing_key,
            )

    async def _hold_while_blocked(self, deadline: asyncio.Timeout) -> None:
        """While an alarm is known, send nothing: a publish then would only add to the doubt.

        The producer waits out its timeout for the alarm to clear; the worker waits as
        long as the alarm lasts (its deadline runs again from the moment it clears).
        """
        if self._unblocked.is_set():
            return
        if self.wait_while_blocked:
            deadline.reschedule(None)
        await self._unblocked.wait()

    async def _take_message_id(self, message_id: str) -> asyncio.Future[None]:
        """Wait until no other publish of ``message_id`` is in flight, then take it."""
        while (earlier := self._publishing.get(message_id)) is not None:
            await asyncio.wait({earlier})
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._publishing[message_id] = mine
        return mine

    async def _fresh_publisher(self, refused: aio_pika.abc.AbstractChannel) -> None:
        """Publish on a new channel from now on: ``refused`` got a basic.nack.

        RabbitMQ 3.10.8 gives each channel, at its first publish to a quorum queue, a
        client state that lists the queue's members, its leader as the queue's record
        names it first; the first publish asks that node, and while it is unreachable
        the publish is refused and the state stays as it was. A channel whose first
        publish came between a leader node's death and the new leader's record update
        is refused every publish to that queue until the dead node is back (measured
        here for 5 s and more; read from the 3.10.8 ``rabbit_fifo_client:enqueue/3``). A
        new channel starts from the queue's record as it is now, naming the new leader.
        """
        now = asyncio.get_running_loop().time()
        if (
            self.connection is None
            or self._publisher is not refused
            or now - self._fresh_publisher_at < FRESH_PUBLISHER_EVERY_S
        ):
            return
        self._fresh_publisher_at = now
        try:
            fresh = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            log.warning("publisher_channel_not_replaced", node=self.node, error=str(exc))
            return
        if self._publisher is not refused:  # replaced meanwhile (a reconnect)
            await fresh.close()
            return
        self._publisher = fresh
        log.warning(
            "publisher_channel_replaced", node=self.node,
            reason="the broker refused publishes on it (basic.nack)",
        )
        retiring = asyncio.get_running_loop().create_task(self._retire(refused))
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)

    async def _retire(self, channel: aio_pika.abc.AbstractChannel) -> None:
        """Close a replaced publisher channel once the broker answered what went out on
        it (or the publish timeout passed): closing earlier would fail those publishes."""
        with contextlib.suppress(Exception):
            underlay: Any = await channel.get_underlay_channel()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.publish_timeout_s):
                    while underlay.confirmations and not underlay.is_closed:
                        await asyncio.sleep(ANSWER_POLL_S)
            await channel.close()

    async def _publish_alone(
        self,
        publisher: aio_pika.abc.AbstractChannel,
        body: bytes,
        exchange: str,
        routing_key: str,
        properties: spec.Basic.Properties,
        mandatory: bool,
        mine: asyncio.Future[None],
    ) -> Any:
        """The publish itself, its message_id taken (``mine``) until the broker answered."""
        message_id = properties.message_id
        assert message_id is not None
        channel: Any = None
        answered = True
        try:
            channel = await publisher.get_underlay_channel()
            # Room in the frame queue first (frame_room.py), so the publish frame
            # cannot follow the close-ok of a channel the broker closed meanwhile.
            await wait_for_room(channel)
            return await channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=mandatory,
                # The confirm is still awaited; not waiting for the socket write as
                # well (under the channel's lock) keeps publishes pipelined.
                wait=False,
            )
        except asyncio.CancelledError:
            # Timed out (or cancelled) after it may have gone out: the broker may still
            # return it, and the return must not meet a newer publish of the same id.
            answered = channel is None
            raise
        finally:
            if answered:
                self._release(message_id, mine)
            else:
                task = asyncio.get_running_loop().create_task(
                    self._release_once_answered(channel, channel.delivery_tag, message_id, mine)
                )
                self._releasing.add(task)
                task.add_done_callback(self._releasing.discard)

    def _release(self, message_id: str, mine: asyncio.Future[None]) -> None:
        if self._publishing.get(message_id) is mine:
            del self._publishing[message_id]
        mine.set_result(None)

    async def _release_once_answered(
        self, channel: Any, sent_up_to: int, message_id: str, mine: asyncio.Future[None]
    ) -> None:
        """Hold a timed-out publish's message_id until the broker answered it (ack, nack
        or return) or its channel is gone: a late return must not meet a newer publish."""
        try:
            while not channel.is_closed and any(
                tag <= sent_up_to for tag in list(channel.confirmations)
            ):
                await asyncio.sleep(ANSWER_POLL_S)
        finally:
            self._release(message_id, mine)

    def _refused_error(self, exchange: str, routing_key: str, for_s: float) -> PublishError:
        return PublishError(
            f"the publish to {exchange!r}/{routing_key!r} was not confirmed: the broker "
            f"refused it (basic.nack) for {for_s:.1f} s on {self.node}, so it does not have "
            "the message. A quorum queue it routes to has no leader (a majority of its "
            "nodes is down?) or is full (overflow reject-publish); try again once "
            "'rabbitmqctl list_queues name leader messages' shows a leader and room",
            exchange=exchange,
            routing_key=routing_key,
        )

    def _timeout_error(self, exchange: str, routing_key: str, sent: bool) -> PublishTimeout:
        if self.blocked_reason is not None:
            outcome = (
                "the message went out before the alarm was known: the broker may take it "
                "when the alarm clears"
                if sent
                else "the message was not published"
            )
            return BrokerBlocked(
                f"RabbitMQ blocks publishing: resource alarm ({self.blocked_reason}); "
                f"no confirm for {exchange!r}/{routing_key!r} within "
                f"{self.settings.publish_timeout_s:g} s, {outcome}. Free memory or disk on "
                "the broker ('rabbitmqctl status' names the alarm), then try again",
                reason=self.blocked_reason,
                published=sent,
                exchange=exchange,
                routing_key=routing_key,
            )
        if not self._up:
            outcome = (
                "the broker may or may not have the message" if sent
                else "the message was not published"
            )
            return PublishTimeout(
                f"the publish to {exchange!r}/{routing_key!r} was not confirmed: no node "
                f"of RabbitMQ could be reached within {self.settings.publish_timeout_s:g} s "
                f"(trying {self.node}); {outcome}",
                exchange=exchange,
                routing_key=routing_key,
            )
        return PublishTimeout(
            f"the publish to {exchange!r}/{routing_key!r} was not confirmed: no confirm "
            f"from the broker within {self.settings.publish_timeout_s:g} s",
            exchange=exchange,
            routing_key=routing_key,
        )


def _lost_error(
    exchange: str, routing_key: str, sent: bool, exc: BaseException, node: str
) -> PublishInterrupted | BrokerUnavailable:
    """A dropped connection as one of our errors: in doubt once the message may have gone
    out, plainly unavailable before that. Either way the publish was not confirmed."""
    if sent:
        return PublishInterrupted(
            f"the publish to {exchange!r}/{routing_key!r} was not confirmed: the connection "
            f"to {node} was lost ({str(exc) or type(exc).__name__}); the broker may or may "
            "not have the message; the client fails over to the next node",
            node=node,
            exchange=exchange,
            routing_key=routing_key,
        )
    return BrokerUnavailable(
        f"the publish to {exchange!r}/{routing_key!r} was not confirmed: not connected to "
        f"{node} ({str(exc) or type(exc).__name__}); the message was not published; the "
        "client reconnects, try again"
    )
