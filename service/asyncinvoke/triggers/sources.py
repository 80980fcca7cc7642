"""A RabbitMQ source trigger: consume a queue, invoke the function once per batch.

A batch is sent when it holds ``batchSize`` messages or ``batchWindow`` seconds after its
first message arrived, whichever comes first. The batch's invocation is published and
confirmed before its source messages are acked (one ack, ``multiple``, up to the batch's
last delivery): a crash before the confirm redelivers them, a crash after it may invoke
twice; nothing is acked before its invocation is safe.

The source connection is this trigger's own (its broker may be another, and a source
that fails must not disturb the worker's). When the queue is missing, the broker cannot
be reached or the consumer is cancelled (the queue was deleted), the trigger is
unhealthy, says why, and tries again with backoff. Its URL is a secret: only its
redacted form is ever logged or shown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aio_pika
import aiormq

from asyncinvoke import clock, contract, dispatch
from asyncinvoke.broker import Broker
from asyncinvoke.contract import Envelope
from asyncinvoke.errors import SourceGone
from asyncinvoke.metrics import Metrics
from asyncinvoke.observability import get_logger
from asyncinvoke.settings import Settings, redact_url
from asyncinvoke.topology import Names
from asyncinvoke.triggers import events
from asyncinvoke.triggers.definitions import SourceConfig, Trigger

# Batches whose invocations are being published at once, per trigger and worker.
BATCHES_IN_FLIGHT = 8
MAX_PREFETCH = 2000
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 10.0
CONNECT_TIMEOUT_S = 5.0

log = get_logger(component="triggers")


def prefetch_for(batch_size: int) -> int:
    """Deliveries held: enough for the batches in flight and the one filling, at least two
    whole batches, and not many thousands."""
    return max(2 * batch_size, min(batch_size * (BATCHES_IN_FLIGHT + 1), MAX_PREFETCH))


class SourceConsumer:
    def __init__(
        self,
        trigger: Trigger,
        broker: Broker,
        names: Names,
        settings: Settings,
        metrics: Metrics,
    ):
        assert isinstance(trigger.config, SourceConfig)
        self.trigger = trigger
        self.config: SourceConfig = trigger.config
        self.broker = broker
        self.names = names
        self.settings = settings
        self.metrics = metrics
        self.url = self.config.source_url(settings.amqp_url)
        self.source = events.source_name(self.config.vhost, self.config.queue)
        self.problem: str | None = "not started yet"
        self._buffer: list[aio_pika.abc.AbstractIncomingMessage] = []
        self._arrived = asyncio.Event()
        self._gone = asyncio.Event()
        self._failure: Exception | None = None  # a batch's publish that failed
        self._healthy = metrics.trigger_healthy.labels(trigger.function, trigger.name)
        self._messages = metrics.trigger_messages.labels(trigger.function, trigger.name)
        self._batches = metrics.trigger_batches.labels(trigger.function, trigger.name)
        self._healthy.set(0)

    def forget_metrics(self) -> None:
        """Drop this trigger's labelled series (it was deleted or disabled)."""
        labels = (self.trigger.function, self.trigger.name)
        for metric in (
            self.metrics.trigger_healthy,
            self.metrics.trigger_messages,
            self.metrics.trigger_batches,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(*labels)

    @property
    def healthy(self) -> bool:
        return self.problem is None

    def describe(self) -> str:
        return f"trigger {self.trigger.function}/{self.trigger.name}"

    async def run(self) -> None:
        """Consume until cancelled; after any failure, unhealthy, then again."""
        wait_s = RETRY_INITIAL_S
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._unhealthy(_reason(exc, self.config.queue, self.url))
            else:
                wait_s = RETRY_INITIAL_S
            await asyncio.sleep(wait_s)
            wait_s = min(wait_s * 2, RETRY_MAX_S)

    def _unhealthy(self, reason: str) -> None:
        if self.problem != reason:
            log.warning(
                "trigger_source_unhealthy",
                function=self.trigger.function,
                trigger=self.trigger.name,
                reason=reason,
            )
        self.problem = reason
        self._healthy.set(0)

    async def _consume(self) -> None:
        self._buffer, self._gone, self._failure = [], asyncio.Event(), None
        connection = await aio_pika.connect(
            self.url,
            timeout=CONNECT_TIMEOUT_S,
            client_properties={"connection_name": f"asyncinvoke-trigger-{self.trigger.name}"},
        )
        try:
            connection.close_callbacks.add(lambda *_: self._gone.set())
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch_for(self.config.batch_size))
            queue = await channel.declare_queue(self.config.queue, passive=True)
            underlay = await channel.get_underlay_channel()
            underlay.on_consumer_cancel_callbacks.add(lambda *_: self._gone.set())
            channel.close_callbacks.add(lambda *_: self._gone.set())
            await queue.consume(self._on_message)
            if self.problem is not None:
                log.info(
                    "trigger_source_consuming",
                    function=self.trigger.function,
                    trigger=self.trigger.name,
                    queue=self.config.queue,
                    broker=redact_url(self.url),
                )
            self.problem = None
            self._healthy.set(1)
            await self._batches_forever()
        finally:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self._buffer.append(message)
        self._arrived.set()

    async def _batches_forever(self) -> None:
        """Cut batches and hand each to its own task, up to BATCHES_IN_FLIGHT at once (one
        publish at a time would make a batch of one as slow as a confirm's round trip).
        Each batch acks only after its invocation is confirmed *and* every batch before it
        was acked, so one ``multiple`` ack covers exactly its own deliveries."""
        loop = asyncio.get_running_loop()
        size, window = self.config.batch_size, self.config.batch_window_s
        slots = asyncio.Semaphore(BATCHES_IN_FLIGHT)
        previous = asyncio.Event()
        previous.set()
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._wait_for(lambda: bool(self._buffer), None)
                deadline = events.batch_deadline(loop.time(), window)
                await self._wait_for(
                    lambda: events.batch_is_full(len(self._buffer), size), deadline
                )
                batch, self._buffer = self._buffer[:size], self._buffer[size:]
                await self._take(slots)
                acked = asyncio.Event()
                task = asyncio.create_task(self._invoke(batch, previous, acked))
                running.add(task)

                def finished(done: asyncio.Task[None]) -> None:
                    running.discard(done)
                    slots.release()

                task.add_done_callback(finished)
                previous = acked
        finally:
            for task in list(running):
                task.cancel()

    async def _take(self, slots: asyncio.Semaphore) -> None:
        """A slot for one more batch; SourceGone (or the failure) if the source went away
        meanwhile: batches after a failed one wait for it forever and hold their slots."""
        if not slots.locked():  # the common case: no futures to make
            await slots.acquire()
            return
        slot = asyncio.ensure_future(slots.acquire())
        gone = asyncio.ensure_future(self._gone.wait())
        try:
            await asyncio.wait({slot, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not slot.done():
                slot.cancel()
        if not slot.done() or slot.cancelled():
            raise self._gone_error()

    async def _wait_for(self, ready: Callable[[], bool], deadline: float | None) -> None:
        """Until ``ready()`` or the deadline; SourceGone when the source went away."""
        loop = asyncio.get_running_loop()
        while not ready():
            if self._gone.is_set():
                raise self._gone_error()
            timeout = None if deadline is None else deadline - loop.time()
            if timeout is not None and timeout <= 0:
                return
            self._arrived.clear()
            arrived = asyncio.ensure_future(self._arrived.wait())
            gone = asyncio.ensure_future(self._gone.wait())
            try:
                await asyncio.wait(
                    {arrived, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                arrived.cancel()
                gone.cancel()
        if self._gone.is_set():
            raise self._gone_error()

    def _gone_error(self) -> Exception:
        if self._failure is not None:
            return self._failure
        return SourceGone("the source connection or consumer was closed")

    async def _invoke(
        self,
        batch: list[aio_pika.abc.AbstractIncomingMessage],
        previous: asyncio.Event,
        acked: asyncio.Event,
    ) -> None:
        try:
            encoded = events.encoded_events((_plain(message) for message in batch), self.source)
            for body in events.batches(encoded, self.settings.max_payload_bytes):
                envelope = Envelope(
                    id=clock.new_id(),
                    fn=self.trigger.function,
                    payload=body,
                    created_at=clock.now_ms(),
                )
                await dispatch.send(self.broker, self.names, envelope, contract.encode(envelope))
            await previous.wait()
            # Every delivery up to the batch's last on this channel is acked now: the
            # batches before it were (``previous``), the rest of these are its own.
            await batch[-1].ack(multiple=True)
        except Exception as exc:
            # Not acked: the consumer closes its channel and the broker redelivers them.
            self._failure = exc
            self._gone.set()
            raise
        acked.set()
        self._messages.inc(len(batch))
        self._batches.inc()


def _plain(message: aio_pika.abc.AbstractIncomingMessage) -> events.SourceMessage:
    properties = {
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": dict(message.headers) if message.headers else None,
        "delivery_mode": int(message.delivery_mode) if message.delivery_mode else None,
        "priority": message.priority,
        "correlation_id": message.correlation_id,
        "reply_to": message.reply_to,
        "expiration": str(message.expiration) if message.expiration else None,
        "message_id": message.message_id,
        "timestamp": message.timestamp,
        "type": message.type,
        "user_id": message.user_id,
        "app_id": message.app_id,
    }
    return events.SourceMessage(
        body=message.body,
        properties=properties,
        exchange=message.exchange or "",
        routing_key=message.routing_key or "",
        redelivered=bool(message.redelivered),
    )


def _reason(exc: BaseException, queue: str, url: str) -> str:
    """Why the source cannot be consumed, for /readyz and ``trigger get``: never the URL's
    secret, and never the raw exception text of a connection error (it may quote it)."""
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return f"source queue {queue!r} does not exist on {redact_url(url)}"
    if isinstance(exc, SourceGone):
        return f"source queue {queue!r} went away (deleted, or the connection dropped)"
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError | PermissionError):
        return f"the source broker {redact_url(url)} refused the login"
    if isinstance(exc, OSError | TimeoutError | aiormq.exceptions.AMQPConnectionError):
        return f"cannot reach the source broker {redact_url(url)} ({type(exc).__name__})"
    return f"source queue {queue!r}: {type(exc).__name__}: {redact_url(str(exc))}"


async def probe(config: SourceConfig, default_url: str, timeout_s: float = 3.0) -> str | None:
    """Why the source cannot be consumed now, or None when it can: asked of the source
    broker (a passive declare), for ``trigger get`` in a process that does not consume."""
    url = config.source_url(default_url)
    try:
        async with asyncio.timeout(timeout_s):
            connection = await aio_pika.connect(url, timeout=timeout_s)
            try:
                channel = await connection.channel()
                await channel.declare_queue(config.queue, passive=True)
            finally:
                await connection.close()
    except Exception as exc:
        return _reason(exc, config.queue, url)
    return None


async def status(trigger: Trigger, default_url: str) -> tuple[str, str]:
    """``(status, reason)`` as ``trigger get`` shows them: Ready, Disabled or Unhealthy."""
    if not trigger.enabled:
        return "Disabled", ""
    if isinstance(trigger.config, SourceConfig):
        problem = await probe(trigger.config, default_url)
        if problem is not None:
            return "Unhealthy", problem
    return "Ready", ""
