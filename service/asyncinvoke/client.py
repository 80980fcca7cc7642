"""The producer API: ``Client.invoke`` and ``invoke_many`` (asynchronous), ``call``
(synchronous, through direct reply-to), and the task store (``tasks``, ``stop_task``,
``rerun_task``).

``invoke`` returns only after the broker confirmed the message. Before the first
publish for a function the client checks once that its queue exists, so a typo
in a function name is an exception here rather than a failure record later.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import uuid4

import aio_pika
import aiormq

from asyncinvoke import clock, contract, dispatch, topology, tracing
from asyncinvoke.broker import Broker
from asyncinvoke.contract import Envelope, ErrorInfo, Reply
from asyncinvoke.errors import (
    AsyncInvokeError,
    BrokerBlocked,
    BrokerUnavailable,
    CallTimeout,
    FunctionError,
    InvalidMessage,
    InvokeManyError,
    PayloadTooLarge,
    PublishTimeout,
    TaskExists,
    TaskExistsError,
    TaskNotFound,
    UnknownFunctionError,
)
from asyncinvoke.settings import Settings, from_env
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import Task, TaskStore
from asyncinvoke.tasks.tracker import TaskTracker

# Raised by Client and imported from here by older code: the classes live in errors.
__all__ = [
    "CallTimeout",
    "Client",
    "FunctionError",
    "InvokeManyError",
    "TaskExistsError",
    "UnknownFunctionError",
]

DEFAULT_WINDOW = 1000  # publishes in flight in invoke_many
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


class Client:
    def __init__(
        self,
        url: str | None = None,
        namespace: str | None = None,
        *,
        settings: Settings | None = None,
    ):
        base = settings or from_env()
        self.settings = base.with_overrides(amqp_url=url, namespace=namespace)
        self.names = topology.Names(self.settings.namespace)
        self.broker = Broker(self.settings, name=f"asyncinvoke-client-{os.getpid()}")
        self._known_functions: set[str] = set()
        self._replies: dict[str, asyncio.Future[Reply]] = {}
        self._reply_consumer: str | None = None
        self._reply_lock = asyncio.Lock()
        self._tracker: TaskTracker | None = None

    async def connect(self) -> None:
        await self.broker.connect()

    async def close(self) -> None:
        if self._tracker is not None:
            await self._tracker.close()
        await self.broker.close()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def envelope(
        self,
        function: str,
        payload: Any = None,
        *,
        delay: float = 0,
        id: str | None = None,
        task: bool | None = None,
        meta: Mapping[str, str] | None = None,
        now_ms: int | None = None,
    ) -> tuple[Envelope, bytes]:
        """Build and validate one envelope; InvalidMessage says what is wrong.

        ``delay`` is in seconds and may have a fraction: the wire's ``delay`` is whole
        seconds, so a fractional delay travels as the service's own due time (ms).
        """
        created_at = now_ms if now_ms is not None else clock.now_ms()
        wire: dict[str, Any] = {
            "v": contract.VERSION,
            "id": id if id is not None else clock.new_id(),
            "fn": function,
            "payload": payload,
            "created_at": created_at,
        }
        if delay:
            # nan and inf pass a comparison with 0 and then break math.ceil: refuse them here.
            if (
                not isinstance(delay, int | float)
                or isinstance(delay, bool)
                or not math.isfinite(delay)
                or delay < 0
            ):
                raise InvalidMessage(
                    f"delay must be between 0 and {self.settings.max_delay_s} seconds, "
                    f"got {delay!r}"
                )
            wire["delay"] = math.ceil(delay)
            if delay != int(delay):
                wire["due_at"] = created_at + round(delay * 1000)
        if task is not None:
            wire["task"] = task
        # The trace context current here (the caller's publish span) rides in the meta.
        traced_meta = tracing.traced_meta(meta)
        if traced_meta:
            wire["meta"] = traced_meta
        envelope = contract.from_wire(
            wire, received_at_ms=created_at, max_delay_s=self.settings.max_delay_s
        )
        try:
            body = contract.encode(envelope)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidMessage(f"payload cannot be encoded as msgpack: {exc}") from None
        if len(body) > self.settings.max_payload_bytes:
            raise PayloadTooLarge(
                f"invocation {envelope.id} is {len(body)} bytes, over the limit of "
                f"{self.settings.max_payload_bytes} (ASYNCINVOKE_MAX_PAYLOAD_BYTES)"
            )
        return envelope, body

    async def ensure_function(self, function: str) -> None:
        if function in self._known_functions:
            return
        assert self.broker.connection is not None, "use 'async with Client()' or connect()"
        try:
            exists = await topology.function_exists(self.broker.connection, self.names, function)
        except (
            aiormq.exceptions.AMQPConnectionError,
            aiormq.exceptions.ChannelInvalidStateError,
            ConnectionError,
        ) as exc:
            raise BrokerUnavailable(
                f"not connected to the broker ({exc}); the client reconnects, try again"
            ) from None
        if not exists:
            raise UnknownFunctionError(function, self.names.ns)
        self._known_functions.add(function)

    async def invoke(
        self,
        function: str,
        payload: Any = None,
        *,
        delay: float = 0,
        id: str | None = None,
        task: bool | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> str:
        """Hand over one invocation; returns its id once the broker confirmed it.

        With ``task=True`` the task is recorded (Enqueued) before it is published, and an
        id that already exists is refused with TaskExists.
        """
        with tracing.publishing(self.names.invoke, function):
            envelope, body = self.envelope(
                function, payload, delay=delay, id=id, task=task, meta=meta
            )
            tracing.describe(envelope, len(body))
            await self.ensure_function(function)
            if task:
                await self._create_task(envelope)
            try:
                await dispatch.send(self.broker, self.names, envelope, body)
            except AsyncInvokeError as exc:
                if task:
                    await self._not_accepted(envelope, exc)
                raise
        return envelope.id

    async def tasks(self) -> TaskStore:
        """The task store (ASYNCINVOKE_TASK_STORE), opened on first use."""
        if self._tracker is None:
            self._tracker = TaskTracker(
                self.settings.task_store, retry_s=self.settings.task_store_retry_s
            )
        return await self._tracker.store()

    @property
    def task_store_outage(self) -> str | None:
        """Why the task store is unavailable now; None while it is up or was never used."""
        return None if self._tracker is None else self._tracker.outage

    async def stop_task(self, task_id: str) -> Task:
        """Stop a task: one not started never starts; a running one is cancelled.

        Raises TaskNotFound, or TaskFinished for a task that already ended.
        """
        store = await self.tasks()
        task = await store.request_stop(task_id, clock.now_ms())
        if task.status is Status.STOPPING:
            # Every worker hears it; the one running the task cancels it.
            await self.broker.publish(
                self.names.control, "", contract.pack({"stop": task_id}), mandatory=False
            )
        return task

    async def rerun_task(self, task_id: str) -> Task:
        """Run an ended task again: its stored payload, under the same id, as a new attempt
        sequence (retries and event age counted afresh); its events are kept. Returns the
        task, Enqueued, once the broker confirmed the invocation.

        Raises TaskNotFound, TaskNotEnded (409 at the gateway) for a task still waiting
        or running, TaskNotRerunnable for one without a stored payload, and
        UnknownFunctionError when no queue serves its function any more.
        """
        store = await self.tasks()
        found = await store.get(task_id)
        if found is None:
            raise TaskNotFound(task_id)
        # Checked before the task is touched: a task reopened for a function with no
        # queue would wait Enqueued for nothing.
        await self.ensure_function(found.function)
        now = clock.now_ms()
        with tracing.publishing(self.names.invoke, found.function):
            # Built first, so that a payload the envelope refuses leaves the task as it
            # was. A task without a payload is refused by the store's rerun.
            payload = None if found.payload is None else contract.unpack(found.payload)
            envelope, body = self.envelope(
                found.function, payload, id=task_id, task=True, now_ms=now
            )
            tracing.describe(envelope, len(body))
            rerun = await store.rerun(task_id, now, f"rerun after it ended {found.status.value}")
            try:
                await dispatch.send(self.broker, self.names, envelope, body)
            except AsyncInvokeError as exc:
                await self._not_accepted(envelope, exc)
                raise
        return rerun

    async def _create_task(self, envelope: Envelope) -> None:
        store = await self.tasks()
        try:
            await store.create(
                envelope.id,
                envelope.fn,
                contract.pack(envelope.payload),
                envelope.created_at,
                "accepted" if not envelope.delay else f"accepted, due in {envelope.delay} s",
            )
        except TaskExists:
            existing = await store.get(envelope.id)
            status = existing.status.value if existing else "unknown"
            raise TaskExists(envelope.id, status) from None

    async def _not_accepted(self, envelope: Envelope, exc: Exception) -> None:
        store = await self.tasks()
        now = clock.now_ms()
        if _maybe_published(exc):
            # The broker may still take it (a lost confirm, an alarm that clears): a Failed
            # task would make the worker drop it unrun. It stays Enqueued, and runs if the
            # broker has it; the caller's exception says the outcome is unknown.
            return
        await store.transition(
            envelope.id,
            Status.FAILED,
            now,
            f"not accepted by the broker: {exc}",
            error=str(exc),
        )

    async def call(
        self,
        function: str,
        payload: Any = None,
        *,
        timeout: float = 30.0,
        id: str | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> Any:
        """Run ``function`` synchronously, through RabbitMQ, and return its result.

        One attempt, no retries. A function error raises FunctionError; no reply within
        ``timeout`` seconds raises CallTimeout.
        """
        correlation_id = uuid4().hex
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        try:
            with tracing.publishing(self.names.invoke, function):
                envelope, _ = self.envelope(function, payload, id=id, meta=meta)
                envelope.reply_by = envelope.created_at + round(timeout * 1000)
                tracing.describe(envelope, 0)
                await self.ensure_function(function)
                await self.prepare_calls()
                self._replies[correlation_id] = future
                await self.broker.publish(
                    self.names.invoke,
                    function,
                    contract.encode(envelope),
                    message_id=envelope.id,
                    reply_to=DIRECT_REPLY_TO,
                    correlation_id=correlation_id,
                )
            try:
                async with asyncio.timeout(timeout):
                    reply = await future
            except TimeoutError:
                raise CallTimeout(function, envelope.id, timeout) from None
        finally:
            self._replies.pop(correlation_id, None)
        if not reply.ok:
            raise FunctionError(
                function,
                reply.error or ErrorInfo("", ""),
                reply.function_error,
                reply.status_code,
            )
        return reply.result

    async def prepare_calls(self) -> None:
        """Ready synchronous calls: consume direct reply-to on the channel that publishes.

        Done once (``call`` does it on first use); concurrent first calls wait for one
        subscription, as a second one would make the broker close the channel.
        """
        if self._reply_consumer is not None:
            return
        async with self._reply_lock:
            if self._reply_consumer is not None:
                return
            # Declared passively so that aio-pika restores the consumer after a reconnect.
            queue = await self.broker.publisher.declare_queue(DIRECT_REPLY_TO, passive=True)
            self._reply_consumer = await queue.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = self._replies.get(message.correlation_id or "")
        if future is None or future.done():
            return  # a reply for a call that timed out
        try:
            reply = contract.unpack(message.body)
        except Exception as exc:
            future.set_exception(AsyncInvokeError(f"undecodable reply: {exc}"))
            return
        if not isinstance(reply, dict):
            future.set_exception(AsyncInvokeError("undecodable reply: not a map"))
            return
        future.set_result(Reply.from_wire(reply))

    async def invoke_many(
        self,
        invocations: Iterable[tuple[str, Any]],
        *,
        delay: float = 0,
        window: int = DEFAULT_WINDOW,
    ) -> list[str]:
        """Hand over many invocations with up to ``window`` publishes in flight.

        Returns the ids in order once every publish was confirmed. If some fail,
        raises InvokeManyError listing the accepted and the failed ids.
        """
        now = clock.now_ms()
        invocations = list(invocations)
        failed: dict[str, BaseException] = {}
        semaphore = asyncio.Semaphore(window)

        async def one(envelope: Envelope, body: bytes) -> None:
            async with semaphore:
                try:
                    await dispatch.send(self.broker, self.names, envelope, body)
                except AsyncInvokeError as exc:
                    failed[envelope.id] = exc

        # One publish span for the batch; every invocation in it carries its context.
        with tracing.publishing(self.names.invoke, "", batch=len(invocations)):
            built = [
                self.envelope(function, payload, delay=delay, now_ms=now)
                for function, payload in invocations
            ]
            for function in {envelope.fn for envelope, _ in built}:
                await self.ensure_function(function)
            await asyncio.gather(*(one(envelope, body) for envelope, body in built))
        ids = [envelope.id for envelope, _ in built]
        if failed:
            raise InvokeManyError([i for i in ids if i not in failed], failed)
        return ids


def _maybe_published(exc: Exception) -> bool:
    """Whether a failed publish may still have reached the broker."""
    if isinstance(exc, BrokerBlocked):
        return exc.published
    return isinstance(exc, PublishTimeout)
