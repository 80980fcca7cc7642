"""The worker: wiring only. One invocation's path:

    delivery → contract.decode → policy.admit → runners.run → policy.settle
             → destinations / dispatch (each publish confirmed) → ack, only now

A delivery is acknowledged only after everything that follows from it was
confirmed by the broker, so a crash anywhere loses nothing (it may run twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiohttp
import aiormq

from asyncinvoke import contract, dispatch, policy, records, topology
from asyncinvoke.broker import Broker
from asyncinvoke.contract import Envelope
from asyncinvoke.destinations import Destinations
from asyncinvoke.errors import AsyncInvokeError, InvalidMessage
from asyncinvoke.functions import FunctionsFile, FunctionSpec, load_handler
from asyncinvoke.observability import get_logger
from asyncinvoke.runners import HttpRunner, PythonRunner, Runner, make_context
from asyncinvoke.settings import Settings

SYSTEM_PREFETCH = 32
SETTLE_RETRY_PAUSE_S = 1.0
MAX_THREADS = 256

log = get_logger(component="worker")
Message = aio_pika.abc.AbstractIncomingMessage


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Function:
    spec: FunctionSpec
    runner: Runner


class Worker:
    def __init__(
        self,
        settings: Settings,
        functions_file: FunctionsFile,
        *,
        only: list[str] | None = None,
    ):
        self.settings = settings
        self.names = topology.Names(settings.namespace)
        specs = dict(functions_file.functions)
        if only:
            missing = sorted(set(only) - set(specs))
            if missing:
                raise AsyncInvokeError(
                    f"--function {', '.join(missing)}: not in {functions_file.path}; "
                    f"known: {', '.join(sorted(specs))}"
                )
            specs = {name: specs[name] for name in only}
        self.all_specs = dict(functions_file.functions)
        self.specs = specs
        self.config_dir = functions_file.path.parent.resolve()
        self.broker = Broker(settings, name=f"asyncinvoke-worker-{os.getpid()}")
        self.functions: dict[str, Function] = {}
        self.in_flight: set[asyncio.Task[Any]] = set()
        self._consumers: list[tuple[aio_pika.abc.AbstractQueue, str]] = []
        self._session: aiohttp.ClientSession | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.destinations: Destinations | None = None
        self.stopping = False

    # -- start and stop ----------------------------------------------------------------

    async def start(self) -> None:
        handlers = {
            name: load_handler(spec, self.config_dir)
            for name, spec in self.specs.items()
            if spec.handler
        }
        await self.broker.connect()
        await topology.declare(self.broker.publisher, self.names, self.specs.values())
        self._session = aiohttp.ClientSession()
        threads = sum(spec.concurrency for spec in self.specs.values() if spec.handler)
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, min(MAX_THREADS, threads)), thread_name_prefix="handler"
        )
        self.destinations = Destinations(self.broker, self.names, self._session)
        for name, spec in self.specs.items():
            runner: Runner
            if spec.handler:
                runner = PythonRunner(spec, handlers[name], self._executor)
            else:
                runner = HttpRunner(spec, self._session)
            self.functions[name] = Function(spec, runner)
        for name, function in self.functions.items():
            await self._consume(
                self.names.function_queue(name),
                function.spec.concurrency,
                self._make_callback(function),
            )
        await self._consume(self.names.unrouted, SYSTEM_PREFETCH, self._on_unrouted)
        await self._consume(self.names.dead, SYSTEM_PREFETCH, self._on_dead)
        log.info(
            "worker_started",
            namespace=self.names.ns,
            functions=sorted(self.functions),
            pid=os.getpid(),
        )

    async def _consume(self, queue_name: str, prefetch: int, callback: Any) -> None:
        channel = await self.broker.channel(prefetch=prefetch)
        queue = await channel.get_queue(queue_name, ensure=False)
        tag = await queue.consume(callback, no_ack=False)
        self._consumers.append((queue, tag))

    async def stop(self) -> None:
        """Stop consuming; in-flight attempts finish within the grace period; return the rest."""
        if self.stopping:
            return
        self.stopping = True
        log.info("worker_stopping", in_flight=len(self.in_flight))
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        if self.in_flight:
            _, pending = await asyncio.wait(
                set(self.in_flight), timeout=self.settings.shutdown_grace_s
            )
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
                log.warning("returned_to_queue", count=len(pending))
        # Closing the connection returns every unacknowledged delivery to its queue.
        await self.broker.close()
        if self._session is not None:
            await self._session.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("worker_stopped")

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Start, serve until SIGTERM/SIGINT (or ``stop`` is set), then stop gracefully."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await self.start()
            await stop.wait()
        finally:
            await self.stop()

    # -- one delivery ------------------------------------------------------------------

    def _make_callback(self, function: Function) -> Any:
        async def on_message(message: Message) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.in_flight.add(task)
            try:
                await self._handle(message, function)
            except asyncio.CancelledError:
                # Shutdown: leave it unacknowledged; closing the channel requeues it.
                raise
            except Exception as exc:
                await self._settle_failed(message, exc)
            finally:
                self.in_flight.discard(task)

        return on_message

    async def _handle(self, message: Message, function: Function) -> None:
        spec = function.spec
        received = now_ms()
        try:
            envelope = contract.decode(
                message.body,
                received_at_ms=received,
                max_payload_bytes=self.settings.max_payload_bytes,
                max_delay_s=self.settings.max_delay_s,
            )
            if envelope.fn != spec.name:
                raise InvalidMessage(
                    f"envelope names function {envelope.fn!r} but arrived on the queue of "
                    f"{spec.name!r}; publish with routing key = fn",
                    partial=envelope.to_wire(),
                )
        except InvalidMessage as exc:
            await self._reject_invalid(message, exc, spec.name, spec)
            return
        decision = policy.admit(envelope, spec, received)
        if type(decision) is policy.Forward:
            envelope.due_at = envelope.due_at_ms()
            await dispatch.send(self.broker, self.names, envelope, received)
            await _ack(message)
            log.info(
                "forwarded",
                invocation_id=envelope.id,
                function=spec.name,
                delay_s=decision.delay_s,
            )
            return
        if type(decision) is policy.Expire:
            record = records.expired(envelope, decision.age_ms, spec.max_event_age_s, received)
            await self._send(record, spec.on_failure)
            await _ack(message)
            log.info(
                "attempt",
                invocation_id=envelope.id,
                function=spec.name,
                attempt=envelope.attempt,
                outcome=contract.EVENT_AGE_EXCEEDED,
            )
            return
        if type(decision) is policy.Hold:
            await asyncio.sleep(decision.ms / 1000)
        outcome = await function.runner.run(envelope, make_context(envelope, spec))
        finished = now_ms()
        settlement = policy.settle(outcome, envelope, spec, finished)
        if type(settlement) is policy.Done:
            if spec.on_success is not None:
                await self._send(
                    records.of_outcome(envelope, outcome, contract.SUCCESS, finished),
                    spec.on_success,
                )
            result = "success"
        elif type(settlement) is policy.Retry:
            retry = Envelope(
                id=envelope.id,
                fn=envelope.fn,
                payload=envelope.payload,
                created_at=envelope.created_at,
                delay=envelope.delay,
                attempt=envelope.attempt + 1,
                task=envelope.task,
                meta=envelope.meta,
                due_at=settlement.due_at,
            )
            await dispatch.send(self.broker, self.names, retry, finished)
            result = "retry"
        else:
            assert type(settlement) is policy.GiveUp
            await self._send(
                records.of_outcome(envelope, outcome, settlement.condition, finished),
                spec.on_failure,
            )
            result = settlement.condition
        await _ack(message)
        if outcome.ok:
            log.info(
                "attempt",
                invocation_id=envelope.id,
                function=spec.name,
                attempt=envelope.attempt,
                outcome=result,
                duration_ms=round(outcome.duration_ms, 3),
            )
        else:
            error = outcome.error or {}
            log.info(
                "attempt",
                invocation_id=envelope.id,
                function=spec.name,
                attempt=envelope.attempt,
                outcome=result,
                duration_ms=round(outcome.duration_ms, 3),
                error_type=error.get("errorType"),
                error=str(error.get("errorMessage"))[:500],
            )

    async def _send(self, record: dict[str, Any], destination: Any) -> None:
        assert self.destinations is not None
        await self.destinations.send(record, destination)

    async def _reject_invalid(
        self, message: Message, exc: InvalidMessage, function: str, spec: FunctionSpec | None
    ) -> None:
        record = records.invalid(
            message.body, exc, function=function, message_id=message.message_id, now_ms=now_ms()
        )
        assert self.destinations is not None
        await self.destinations.to_failed(record)
        await _ack(message)
        log.warning(
            "invalid_message",
            function=function,
            invocation_id=record["requestContext"]["requestId"],
            reason=exc.reason,
        )

    async def _settle_failed(self, message: Message, exc: Exception) -> None:
        """What follows from a delivery could not be confirmed: return it, to try again."""
        log.error(
            "settle_failed",
            error=str(exc),
            error_type=type(exc).__name__,
            message_id=message.message_id,
        )
        await asyncio.sleep(SETTLE_RETRY_PAUSE_S)
        with contextlib.suppress(aiormq.exceptions.AMQPError, RuntimeError):
            await message.nack(requeue=True)

    # -- system queues -----------------------------------------------------------------

    def _decode_system(self, message: Message) -> Envelope:
        return contract.decode(
            message.body,
            received_at_ms=now_ms(),
            max_payload_bytes=self.settings.max_payload_bytes,
            max_delay_s=self.settings.max_delay_s,
        )

    async def _on_unrouted(self, message: Message) -> None:
        """An invocation no function queue took: an UnknownFunction record."""
        try:
            try:
                envelope = self._decode_system(message)
            except InvalidMessage as exc:
                await self._reject_invalid(message, exc, message.routing_key or "", None)
                return
            assert self.destinations is not None
            await self.destinations.to_failed(records.unknown_function(envelope, now_ms()))
            await _ack(message)
            log.warning("unknown_function", invocation_id=envelope.id, function=envelope.fn)
        except Exception as exc:
            await self._settle_failed(message, exc)

    async def _on_dead(self, message: Message) -> None:
        """A delivery the broker dead-lettered after its delivery limit: a poison message."""
        try:
            try:
                envelope = self._decode_system(message)
            except InvalidMessage as exc:
                await self._reject_invalid(message, exc, "", None)
                return
            count = message.headers.get("x-delivery-count")
            deliveries = int(count) + 1 if isinstance(count, int) else None
            spec = self.all_specs.get(envelope.fn)
            await self._send(
                records.delivery_limit(envelope, deliveries, now_ms()),
                spec.on_failure if spec else None,
            )
            await _ack(message)
            log.error(
                "attempt",
                invocation_id=envelope.id,
                function=envelope.fn,
                attempt=envelope.attempt,
                outcome=contract.DELIVERY_LIMIT_EXCEEDED,
            )
        except Exception as exc:
            await self._settle_failed(message, exc)


async def _ack(message: Message) -> None:
    try:
        await message.ack()
    except (aiormq.exceptions.AMQPError, RuntimeError) as exc:
        # The channel was lost after the follow-up was confirmed: the broker redelivers
        # this message, which may run again (at least once, never lost).
        log.warning("ack_failed", message_id=message.message_id, error=str(exc))
