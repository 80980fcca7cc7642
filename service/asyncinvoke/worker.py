"""The worker: wiring only. It consumes each function's queue (prefetch = the
function's concurrency) and hands every delivery to ``pipeline.Pipeline``; it
also serves the system queues (unrouted → UnknownFunction, dead → poison
messages), the stop broadcasts of task mode, and graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Iterable
from typing import Any

import aio_pika
import aiohttp
import aiormq
from aiohttp import web

from asyncinvoke import contract, records, topology
from asyncinvoke.broker import Broker
from asyncinvoke.consumer import Consumer, Message
from asyncinvoke.destinations import Destinations
from asyncinvoke.errors import AsyncInvokeError, InvalidMessage, TaskStoreUnavailable
from asyncinvoke.functions import FunctionsFile, check_consumer_timeout, load_handler
from asyncinvoke.gate import Gate
from asyncinvoke.last_resort import LastResort
from asyncinvoke.metrics import Metrics, serve_health
from asyncinvoke.observability import get_logger
from asyncinvoke.pipeline import Function, Pipeline, now_ms
from asyncinvoke.redelivery import Redeliveries
from asyncinvoke.runners import HttpRunner, PythonRunner, Runner, Watchdog
from asyncinvoke.settings import Settings
from asyncinvoke.systemd import Notifier
from asyncinvoke.tasks.tracker import TaskTracker

SYSTEM_PREFETCH = 32
SETTLE_RETRY_PAUSE_S = 1.0
PURGE_EVERY_S = 600.0


def prefetch_for(concurrency: int) -> int:
    """Deliveries a function's consumer may hold: its concurrency (the attempts that run,
    capped by Function.slots) and as many again for deliveries waiting out the last
    fraction of a second of a delay, which must not hold back those due now."""
    return 2 * concurrency


log = get_logger(component="worker")


class Worker:
    def __init__(
        self,
        settings: Settings,
        functions_file: FunctionsFile,
        *,
        only: list[str] | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        notifier: Notifier | None = None,
    ):
        self.settings = settings
        self.metrics = Metrics(functions_file.functions)
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.notifier = notifier or Notifier()
        self._health: web.AppRunner | None = None
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
        check_consumer_timeout(
            specs.values(), settings.broker_consumer_timeout_s, str(functions_file.path)
        )
        self.all_specs = dict(functions_file.functions)
        self.specs = specs
        self.config_dir = functions_file.path.parent.resolve()
        # An attempt that ran waits out a resource alarm for its follow-ups, rather than
        # time out and run again.
        self.broker = Broker(
            settings, name=f"asyncinvoke-worker-{os.getpid()}", wait_while_blocked=True
        )
        self.tracker = TaskTracker(
            settings.task_store,
            retry_s=settings.task_store_retry_s,
            result_max_bytes=settings.task_result_max_bytes,
        )
        self.functions: dict[str, Function] = {}
        # Each delivery being handled, with the queue it came from.
        self.in_flight: dict[asyncio.Task[Any], tuple[Message, str]] = {}
        self.redeliveries = Redeliveries()
        self.pipeline: Pipeline | None = None
        self.last_resort: LastResort | None = None
        self._consumers: list[Consumer | tuple[aio_pika.abc.AbstractQueue, str]] = []
        self._session: aiohttp.ClientSession | None = None
        self._background: list[asyncio.Task[None]] = []
        self.gate = Gate()
        self._watchdog = Watchdog()
        self._channels: list[tuple[aio_pika.abc.AbstractChannel, int]] = []
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
        destinations = Destinations(self.broker, self.names, self._session)
        self.pipeline = Pipeline(
            self.settings, self.names, self.broker, destinations, self.tracker, self.metrics
        )
        self.last_resort = LastResort(destinations)
        self.metrics.watch_broker(self.broker)
        for name, spec in self.specs.items():
            runner: Runner
            if spec.handler:
                runner = PythonRunner(spec, handlers[name], self._watchdog)
            else:
                runner = HttpRunner(spec, self._session)
            self.functions[name] = Function(spec, runner, asyncio.Semaphore(spec.concurrency))
        if any(spec.task_mode for spec in self.specs.values()):
            await self.tracker.store()  # a bad ASYNCINVOKE_TASK_STORE fails at start
            self._background.append(asyncio.create_task(self._purge_loop()))
        await self._consume_control()
        for name, function in self.functions.items():
            await self._consume(
                self.names.function_queue(name),
                prefetch_for(function.spec.concurrency),
                self._make_callback(function),
            )
            await self._consume(
                self.names.suspect_queue(name), 1, self._make_callback(function, suspect=True)
            )
        await self._consume(self.names.unrouted, SYSTEM_PREFETCH, self._on_unrouted)
        await self._consume(self.names.dead, SYSTEM_PREFETCH, self._on_dead)
        if self.metrics_port is not None:
            self._health = await serve_health(
                self.metrics, self.not_ready, self.metrics_host, self.metrics_port
            )
        gc.freeze()  # start-up's objects stay: spare the collector's full passes over them
        self.notifier.notify("READY=1", f"STATUS={self.status()}")
        self._background.append(asyncio.create_task(self.notifier.watchdog(self.status)))
        log.info(
            "worker_started",
            namespace=self.names.ns,
            functions=sorted(self.functions),
            pid=os.getpid(),
            metrics_port=self.metrics_port,
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        )

    def ready(self) -> bool:
        """Consuming, connected, and the task store up: what /readyz reports."""
        return not self.not_ready()

    def not_ready(self) -> list[str]:
        """Why the worker cannot do its work now; empty when it can."""
        reasons = []
        if not self._consumers:
            reasons.append("not consuming yet")
        if self.stopping:
            reasons.append("stopping")
        if not self.broker.is_connected:
            reasons.append("RabbitMQ: not connected")
        if self.tracker.outage is not None:
            reasons.append(f"task store: {self.tracker.outage}")
        return reasons

    def status(self) -> str:
        state = f"connected to {self.broker.node}" if self.broker.is_connected else "reconnecting"
        return f"{state}; {len(self.in_flight)} in flight; functions: {', '.join(self.functions)}"

    async def _consume(self, queue_name: str, prefetch: int, callback: Any) -> None:
        channel = await self.broker.channel(prefetch=prefetch)
        assert isinstance(channel, aio_pika.RobustChannel)
        self._channels.append((channel, prefetch))
        underlay = await channel.get_underlay_channel()
        try:
            await underlay.queue_declare(queue_name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise AsyncInvokeError(
                f"queue {queue_name!r} does not exist: run 'asyncinvoke topology declare'"
            ) from None
        consumer = Consumer(channel, queue_name, callback, self.broker)
        await consumer.start()
        self._consumers.append(consumer)

    async def _consume_control(self) -> None:
        """Each worker's own queue on the control exchange: task stop broadcasts."""
        channel = await self.broker.channel(prefetch=SYSTEM_PREFETCH)
        queue = await channel.declare_queue(
            exclusive=True, auto_delete=True, arguments={"x-queue-type": "classic"}
        )
        await queue.bind(self.names.control)
        tag = await queue.consume(self._on_control, no_ack=True)
        self._consumers.append((queue, tag))

    async def stop(self) -> None:
        """Stop consuming; in-flight attempts finish within the grace period; return the rest."""
        if self.stopping:
            return
        self.stopping = True
        self.notifier.notify("STOPPING=1", f"STATUS=stopping; {len(self.in_flight)} in flight")
        log.info("worker_stopping", in_flight=len(self.in_flight))
        for consumer in self._consumers:
            with contextlib.suppress(Exception):
                if isinstance(consumer, Consumer):
                    await consumer.cancel()
                else:
                    queue, tag = consumer
                    await queue.cancel(tag)
        for task in self._background:
            task.cancel()
        if self.in_flight:
            _, pending = await asyncio.wait(
                set(self.in_flight), timeout=self.settings.shutdown_grace_s
            )
            for task in pending:
                task.cancel()
            if pending:
                unsettled = [self.in_flight[task] for task in pending if task in self.in_flight]
                await asyncio.wait(pending, timeout=5)
                await self._return_fresh(unsettled)
        # The acks noted so far go out before the connection closes (that returns every
        # unacknowledged delivery to its queue).
        if self.pipeline is not None:
            with contextlib.suppress(Exception):
                await self._flush_acks()
        await self.broker.close()
        await self.tracker.close()
        if self._health is not None:
            await self._health.cleanup()
        if self._session is not None:
            await self._session.close()
        self._watchdog.close()
        for function in self.functions.values():
            function.runner.close()
        log.info("worker_stopped")

    async def _return_fresh(self, unsettled: list[tuple[Message, str]]) -> None:
        """Put deliveries cut short by shutdown back in their queue as new messages.

        A plain requeue would mark them redelivered, and a redelivery is treated as a
        suspect (its worker may have died of it): run alone, one at a time. These are
        known innocent, so they go back fresh: published (confirmed), then acknowledged.
        Any that cannot be are returned by closing the connection, as suspects.
        """
        assert self.pipeline is not None
        returned = 0
        for message, queue_name in unsettled:
            try:
                await self.pipeline.republish(message, queue_name)
                returned += 1
            except Exception as exc:
                log.warning("return_failed", message_id=message.message_id, error=str(exc))
        log.warning("returned_to_queue", count=len(unsettled), fresh=returned)

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

    async def _purge_loop(self) -> None:
        retention_ms = round(self.settings.task_retention_s * 1000)
        while True:
            try:
                store = await self.tracker.store()
                purged = await store.purge(now_ms() - retention_ms)
                if purged:
                    log.info("tasks_purged", count=purged)
            except Exception as exc:
                log.warning("task_purge_failed", error=str(exc))
            await asyncio.sleep(PURGE_EVERY_S)

    # -- deliveries --------------------------------------------------------------------

    def _make_callback(self, function: Function, *, suspect: bool = False) -> Any:
        """The consumer of a function queue, or (``suspect``) of its suspect queue."""
        pipeline = self.pipeline
        assert pipeline is not None
        in_flight = self.metrics.in_flight.labels(function.spec.name)
        gate = self.gate
        name = function.spec.name
        queue_name = self.names.suspect_queue(name) if suspect else self.names.function_queue(name)

        async def on_message(message: Message) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.in_flight[task] = (message, queue_name)
            in_flight.inc()
            settled = False
            try:
                known = None
                if message.redelivered:
                    known = await self.redeliveries.outcome(message, self._running())
                    if known:
                        # Handled and settled here; only its ack was lost with a connection.
                        pipeline.acks.ack(message)
                        settled = True
                        log.info("redelivery_already_settled", message_id=message.message_id)
                        return
                if suspect:
                    async with gate.exclusive():
                        # Acknowledgements of the attempts that just ended must reach the
                        # broker before a suspect runs: if it kills the process, they
                        # would otherwise be redelivered and run again.
                        await self._flush_acks()
                        await pipeline.handle(message, function, suspect=True)
                elif message.redelivered and known is None:
                    async with gate.shared():
                        await pipeline.move_to_suspects(message, function)
                else:
                    async with gate.shared():
                        await pipeline.handle(message, function)
                settled = True
            except asyncio.CancelledError:
                # Shutdown: leave it unacknowledged; closing the channel requeues it.
                raise
            except TaskStoreUnavailable as exc:
                settled = await self._store_unavailable(message, queue_name, exc)
            except Exception as exc:
                await self._settle_failed(message, exc)
            finally:
                self.redeliveries.ended(message, settled)
                self.in_flight.pop(task, None)
                in_flight.dec()

        return on_message

    def _running(self) -> Iterable[tuple[asyncio.Task[Any], Message]]:
        return ((task, message) for task, (message, _) in self.in_flight.items())

    async def _flush_acks(self) -> None:
        """Return once every ack sent so far was taken in by the broker.

        A round trip on each consuming channel: the broker handles a channel's frames
        in order, so its answer comes after the acks before it.
        """
        assert self.pipeline is not None
        await self.pipeline.acks.flush()
        for channel, prefetch in self._channels:
            try:
                underlay = await channel.get_underlay_channel()
            except aiormq.exceptions.ChannelInvalidStateError:
                continue  # being reopened: what it had in flight comes back anyway
            if underlay.is_closed or underlay.connection.is_closed:
                continue
            try:
                async with asyncio.timeout(self.settings.publish_timeout_s):
                    await underlay.basic_qos(prefetch_count=prefetch)
            except TimeoutError:
                log.warning("ack_flush_timeout", channel=underlay.number)

    async def _settle_failed(self, message: Message, exc: Exception) -> None:
        """What follows from a delivery could not be confirmed: return it, to try again."""
        log.error(
            "settle_failed",
            error=str(exc),
            error_type=type(exc).__name__,
            message_id=message.message_id,
        )
        await asyncio.sleep(SETTLE_RETRY_PAUSE_S)
        assert self.pipeline is not None
        # A channel that is gone returns the delivery by itself.
        with contextlib.suppress(aiormq.exceptions.AMQPError, RuntimeError):
            await self.pipeline.acks.nack(message)

    async def _store_unavailable(
        self, message: Message, queue_name: str, exc: TaskStoreUnavailable
    ) -> bool:
        """The task store stayed down for ASYNCINVOKE_TASK_STORE_RETRY. The delivery goes
        back to its queue as a new message: a redelivery would make it a suspect, and its
        worker did not die of it. Whether it was settled."""
        assert self.pipeline is not None
        log.warning("task_store_unavailable_returned", message_id=message.message_id,
                    queue=queue_name, error=str(exc))
        # Not straight back: with a short ASYNCINVOKE_TASK_STORE_RETRY that would spin.
        await asyncio.sleep(SETTLE_RETRY_PAUSE_S)
        try:
            await self.pipeline.republish(message, queue_name)
        except Exception as publish_exc:
            await self._settle_failed(message, publish_exc)
            return False
        return True

    async def _on_control(self, message: Message) -> None:
        try:
            command = contract.unpack(message.body)
        except Exception:
            log.warning("control_message_ignored", reason="not msgpack")
            return
        task_id = command.get("stop") if isinstance(command, dict) else None
        if isinstance(task_id, str) and self.pipeline is not None and self.pipeline.stop(task_id):
            log.info("task_stop_requested", invocation_id=task_id)

    async def _on_unrouted(self, message: Message) -> None:
        """An invocation no function queue took: an UnknownFunction record."""
        assert self.pipeline is not None
        try:
            try:
                envelope = self.pipeline.decode(message, now_ms())
            except InvalidMessage as exc:
                await self.pipeline.reject_invalid(message, exc, message.routing_key or "")
                return
            record = records.unknown_function(envelope, now_ms())
            await self.pipeline.destinations.to_failed(record)
            self.pipeline.acks.ack(message)
            self.metrics.count_failure_record(envelope.fn, contract.UNKNOWN_FUNCTION)
            log.warning("unknown_function", invocation_id=envelope.id, function=envelope.fn)
        except Exception as exc:
            await self._system_failed(message, contract.UNKNOWN_FUNCTION, exc)

    async def _on_dead(self, message: Message) -> None:
        """A delivery the broker dead-lettered after its delivery limit: a poison message."""
        assert self.pipeline is not None
        try:
            try:
                envelope = self.pipeline.decode(message, now_ms())
            except InvalidMessage as exc:
                await self.pipeline.reject_invalid(message, exc, "")
                return
            spec = self.all_specs.get(envelope.fn)
            # Once in its function queue, then delivery_limit times alone as a suspect.
            deliveries = spec.delivery_limit + 1 if spec else None
            record = records.delivery_limit(envelope, deliveries, now_ms())
            await self.pipeline.task_poisoned(envelope, spec, record)
            await self.pipeline.destinations.send(record, spec.on_failure if spec else None)
            self.pipeline.acks.ack(message)
            self.metrics.count_failure_record(envelope.fn, contract.DELIVERY_LIMIT_EXCEEDED)
            log.error(
                "attempt",
                invocation_id=envelope.id,
                function=envelope.fn,
                attempt=envelope.attempt,
                outcome=contract.DELIVERY_LIMIT_EXCEEDED,
            )
        except Exception as exc:
            await self._system_failed(message, contract.DELIVERY_LIMIT_EXCEEDED, exc)

    async def _system_failed(self, message: Message, condition: str, exc: Exception) -> None:
        """A system queue's record could not be written: try again, up to a point, then
        write the minimal record that stands in for it (last_resort.py)."""
        assert self.last_resort is not None and self.pipeline is not None
        # A store outage is waited out, not counted: the record is writable once it ends.
        if isinstance(exc, TaskStoreUnavailable) or not self.last_resort.failed(message):
            await self._settle_failed(message, exc)
            return
        try:
            await self.last_resort.write(message, condition, exc)
        except Exception as again:
            await self._settle_failed(message, again)
            return
        self.pipeline.acks.ack(message)
