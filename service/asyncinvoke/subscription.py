"""Consuming on a robust channel: restored after a reconnect, never re-created.

aio-pika restores what a robust channel declared (``declare_queue``) after a reconnect by
declaring it again, and then its consumers. For a namespace an operator deleted while a
process ran, that brought every queue back: a queue nobody asked for, and a file handle
per queue on the broker. So asyncinvoke splits the two:

- **Declared on purpose**, once: ``topology.declare`` at a worker's or gateway's start
  (and ``asyncinvoke topology declare``), and the configuration stream when a store
  starts. These go through the aiormq channel under aio-pika's, which aio-pika does not
  track: nothing repeats them.
- **Consumed**, here: after the channel reopens on a new connection, a ``Subscription``
  asks the broker (a passive declare, on a channel of its own) whether what it consumes
  still exists, and consumes again only then. The queue's messages (a timers' baton, the
  configuration log) are still there when the queue is, which is the one case where
  there is anything to restore.

A queue found missing (after a reconnect, or when the broker cancels the consumer because
its queue was deleted) is logged as an error once, reported by ``problem`` (readiness
turns unhealthy), and asked after every ``RESUBSCRIBE_PAUSE_S``: once it is declared again
(``asyncinvoke topology declare``) the subscription consumes again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import aio_pika
import aiormq
from aiormq.abc import DeliveredMessage

from asyncinvoke.observability import get_logger

log = get_logger(component="consumer")

RESUBSCRIBE_PAUSE_S = 5.0
OnMessage = Callable[[DeliveredMessage], Coroutine[Any, Any, None]]
# What a probe meets when it cannot tell (the connection is away): try again later.
_CANNOT_TELL = (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError, TimeoutError)


class Subscription:
    """One consumer of ``queue`` on one robust channel; ``on_message`` gets each delivery
    as aiormq hands it over. ``on_cancelled`` runs when the broker ends the consumer (its
    queue deleted), ``on_resumed`` after the queue came back from missing."""

    def __init__(
        self,
        channel: aio_pika.abc.AbstractRobustChannel,
        queue: str,
        on_message: OnMessage,
        *,
        arguments: dict[str, Any] | None = None,
        no_ack: bool = False,
        on_cancelled: Callable[[], None] | None = None,
        on_resumed: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ):
        self.channel = channel
        self.queue = queue
        self.on_message = on_message
        self.arguments = arguments
        self.no_ack = no_ack
        self.on_cancelled = on_cancelled
        self.on_resumed = on_resumed
        self.tag: str | None = None
        self.missing = False  # found deleted: consumed again once it is back
        self._cancelled = False
        self._resubscribing: asyncio.Task[None] | None = None
        self._resuming: set[asyncio.Task[None]] = set()

    @property
    def what(self) -> str:
        """What must exist for this to consume, as a problem names it."""
        return f"queue {self.queue!r}"

    @property
    def problem(self) -> str | None:
        """Why this consumes nothing now (for readiness), or None."""
        if not self.missing:
            return None
        return (
            f"{self.what} does not exist (deleted while this process ran?); it is not "
            "declared again by a reconnect: run 'asyncinvoke topology declare' (or restart "
            "a worker) to bring it back"
        )

    async def start(self) -> None:
        """Consume now (what it consumes must exist), and again after each reopen."""
        await self._subscribe()
        self.channel.reopen_callbacks.add(self._on_reopen)

    async def _subscribe(self) -> None:
        underlay = await self.channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
        self.tag = await self._consume(underlay)

    async def _consume(self, underlay: aiormq.abc.AbstractChannel) -> str:
        ok = await underlay.basic_consume(
            self.queue, self.on_message, no_ack=self.no_ack, arguments=self.arguments
        )
        assert ok.consumer_tag is not None
        return ok.consumer_tag

    async def _check(self, probe: aiormq.abc.AbstractChannel) -> None:
        """Raise ChannelNotFoundEntity if what this consumes is gone."""
        await probe.queue_declare(self.queue, passive=True)

    async def exists(self) -> bool | None:
        """Whether what this consumes exists, asked on a channel of its own (a failed
        passive declare closes its channel, which must not be the consuming one); None
        when the broker cannot be asked now."""
        try:
            underlay = await self.channel.get_underlay_channel()
            probe = await underlay.connection.channel(publisher_confirms=False)
        except _CANNOT_TELL:
            return None
        try:
            await self._check(probe)
            return True
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        except _CANNOT_TELL:
            return None
        finally:
            with contextlib.suppress(Exception):
                await probe.close()

    async def _on_reopen(self, _channel: object = None) -> None:
        # Runs while aio-pika restores the connection: nothing here may wait for the
        # broker to count as connected again (a publish would, until its timeout).
        if self._cancelled:
            return
        self.tag = None
        present = await self.exists()
        if present:
            try:
                await self._subscribe()
            except aiormq.exceptions.ChannelNotFoundEntity:
                return  # deleted just now: the channel reopens, and this runs again
            except _CANNOT_TELL as exc:
                log.warning("consumer_resubscribe_failed", queue=self.queue, error=str(exc))
            else:
                self._resumed()
                return
        elif present is False:
            self._found_missing()
        self._keep_trying()

    def _on_broker_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        if frame.consumer_tag != self.tag or self._cancelled:
            return
        log.warning("consumer_cancelled_by_broker", queue=self.queue)
        self.tag = None
        if self.on_cancelled is not None:
            self.on_cancelled()
        self._keep_trying()

    def _keep_trying(self) -> None:
        if self._resubscribing is None or self._resubscribing.done():
            self._resubscribing = asyncio.get_running_loop().create_task(self._resubscribe())

    def _found_missing(self) -> None:
        if not self.missing:
            self.missing = True
            log.error(
                "consumed_queue_missing",
                queue=self.queue,
                missing=self.what,
                effect="not declared again; consuming resumes once it exists",
                fix="asyncinvoke topology declare",
            )

    async def _resubscribe(self) -> None:
        while not self._cancelled and self.tag is None:
            present = await self.exists()
            if present is False:
                self._found_missing()
            elif present:
                try:
                    await self._subscribe()
                except aiormq.exceptions.ChannelNotFoundEntity:
                    self._found_missing()  # the channel reopens; its callback tries too
                except _CANNOT_TELL as exc:
                    log.warning("consumer_resubscribe_failed", queue=self.queue, error=str(exc))
                else:
                    log.info("consumer_resubscribed", queue=self.queue)
                    self._resumed()
                    return
            await asyncio.sleep(RESUBSCRIBE_PAUSE_S)

    def _resumed(self) -> None:
        """Consuming again: ``on_resumed`` runs (in a task of its own: a reopen must not
        wait for it) if the queue had been found missing."""
        if not self.missing:
            return
        self.missing = False
        log.info("consumed_queue_back", queue=self.queue)
        if self.on_resumed is not None:
            task = asyncio.get_running_loop().create_task(self.on_resumed())
            self._resuming.add(task)
            task.add_done_callback(self._resuming.discard)

    def forget(self) -> None:
        """Subscribe no more (for an owner about to close the channel, which ends the
        consumer: nothing need be asked of a broker that may be away)."""
        self._cancelled = True
        self.channel.reopen_callbacks.discard(self._on_reopen)
        if self._resubscribing is not None:
            self._resubscribing.cancel()

    async def cancel(self) -> None:
        """Stop receiving; deliveries already received stay with their callbacks."""
        self.forget()
        if self.tag is None:
            return
        with contextlib.suppress(aiormq.exceptions.AMQPError, RuntimeError, ConnectionError):
            underlay = await self.channel.get_underlay_channel()
            await underlay.basic_cancel(self.tag)


class FanoutSubscription(Subscription):
    """This process's own queue on the fanout ``exchange``: exclusive, so it ends with its
    connection and is declared anew at each subscribe; what must exist is the exchange."""

    def __init__(
        self, channel: aio_pika.abc.AbstractRobustChannel, exchange: str, on_message: OnMessage
    ):
        super().__init__(channel, "", on_message, no_ack=True)
        self.exchange = exchange

    @property
    def what(self) -> str:
        return f"exchange {self.exchange!r}"

    async def _check(self, probe: aiormq.abc.AbstractChannel) -> None:
        await probe.exchange_declare(self.exchange, passive=True)

    async def _consume(self, underlay: aiormq.abc.AbstractChannel) -> str:
        declared = await underlay.queue_declare(
            "", exclusive=True, auto_delete=True, arguments={"x-queue-type": "classic"}
        )
        assert declared.queue is not None
        self.queue = declared.queue
        await underlay.queue_bind(self.queue, self.exchange)
        return await super()._consume(underlay)
