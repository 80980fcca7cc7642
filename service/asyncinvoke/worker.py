"""The worker: wiring only. It builds the parts (broker, task mode, destinations,
pipeline, system queues), starts a consumer on each queue, serves health, and
supervises shutdown. It never touches a delivery: ``pipeline`` handles and settles
each one, ``consumer`` does the AMQP side of consuming.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from typing import Any

import aiohttp
from aiohttp import web

from asyncinvoke import contract, topology
from asyncinvoke.acks import Acks, lingering_acks
from asyncinvoke.broker import Broker
from asyncinvoke.consumer import Consumers
from asyncinvoke.destinations import Destinations
from asyncinvoke.docstore import DocumentStore
from asyncinvoke.errors import AsyncInvokeError
from asyncinvoke.functions import FunctionsFile, FunctionSpec, check_consumer_timeout, load_handler
from asyncinvoke.journal import Journal
from asyncinvoke.last_resort import LastResort
from asyncinvoke.liveconfig.applier import Applier
from asyncinvoke.liveconfig.live import LiveConfig
from asyncinvoke.metrics import Metrics, serve_health
from asyncinvoke.observability import get_logger
from asyncinvoke.pipeline import Function, Pipeline
from asyncinvoke.runners import HttpRunner, PythonRunner, Runner, Watchdog
from asyncinvoke.settings import Settings
from asyncinvoke.slots import Slots
from asyncinvoke.system_queues import SystemQueues
from asyncinvoke.systemd import Notifier, Supervision
from asyncinvoke.tasks.mode import TaskMode, purge_forever
from asyncinvoke.tasks.tracker import TaskTracker
from asyncinvoke.triggers.runtime import Triggers
from asyncinvoke.vouching import Vouching

SYSTEM_PREFETCH = 32


def prefetch_for(concurrency: int, ack_linger: bool = False) -> int:
    """Deliveries a function's consumer may hold: its runner's slots (the attempts that
    run, or wait in the process executor's pipeline: Function.slots caps them) and as
    many again for deliveries waiting out the last fraction of a second of a delay,
    which must not hold back those due now; and, where acks linger to share a frame,
    room for the deliveries whose acks wait (``acks.lingering_acks``)."""
    return 2 * concurrency + (lingering_acks(concurrency) if ack_linger else 0)


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
        self.supervision = Supervision(self.notifier, self.status)
        self.names = topology.Names(settings.namespace)
        self.functions_file = functions_file
        self.all_specs = dict(functions_file.functions)
        self.specs = _selected(functions_file, only)
        check_consumer_timeout(
            self.specs.values(), settings.broker_consumer_timeout_s, str(functions_file.path)
        )
        self.config_dir = functions_file.path.parent.resolve()
        # An attempt that ran waits out a resource alarm for its follow-ups, rather than
        # time out and run again.
        self.broker = Broker(
            settings,
            name=f"asyncinvoke-worker-{os.getpid()}",
            wait_while_blocked=True,
            fast_consume=settings.fast_consume,
        )
        self.tracker = TaskTracker(
            settings.task_store,
            retry_s=settings.task_store_retry_s,
            result_max_bytes=settings.task_result_max_bytes,
        )
        self.tasks = TaskMode(self.tracker)
        self.acks = Acks()
        self.consumers = Consumers(
            self.broker, self.acks, barrier_timeout_s=settings.publish_timeout_s
        )
        self.functions: dict[str, Function] = {}
        self.pipeline: Pipeline | None = None
        # The namespace's live configuration and triggers, read whole at start.
        self.store = DocumentStore(self.broker, self.names)
        self.live: LiveConfig | None = None
        self.applier: Applier | None = None
        self.triggers = Triggers(
            self.broker,
            self.names,
            settings,
            self.metrics,
            self.all_specs,
            [trigger for spec in self.all_specs.values() for trigger in spec.triggers],
            self.store,
        )
        self._health: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._background: list[asyncio.Task[None]] = []
        self._watchdog = Watchdog()
        self.stopping = False

    @property
    def in_flight(self) -> dict[asyncio.Task[Any], Any]:
        """The deliveries being handled now."""
        return self.pipeline.in_flight if self.pipeline is not None else {}

    # -- start and stop ----------------------------------------------------------------

    async def start(self) -> None:
        handlers = {
            name: load_handler(spec, self.config_dir)
            for name, spec in self.specs.items()
            if spec.handler
        }
        await self.broker.connect()
        await topology.declare(self.broker.publisher, self.names, self.specs.values())
        await self.store.start()
        live = self.live = LiveConfig(self.store, self.functions_file)
        self._session = aiohttp.ClientSession()
        destinations = Destinations(self.broker, self.names, self._session)
        pipeline = self.pipeline = Pipeline(
            self.settings,
            self.names,
            self.broker,
            destinations,
            self.tasks,
            Journal(self.metrics),
            self.acks,
            self.consumers.barrier,
        )
        system = SystemQueues(pipeline, LastResort(destinations), self.all_specs)
        self.metrics.watch_broker(self.broker)
        for name, spec in self.specs.items():
            runner: Runner
            if spec.handler:
                runner = PythonRunner(spec, handlers[name], self._watchdog)
            else:
                runner = HttpRunner(spec, self._session)
            config = live.effective(name)
            self.functions[name] = Function(
                config.spec,
                runner,
                Slots(self._slot_limit(name, runner, config.spec.concurrency)),
                config.version,
                config.paused,
            )
        if any(function.spec.task_mode for function in self.functions.values()):
            await self.tracker.store()  # a bad ASYNCINVOKE_TASK_STORE fails at start
            self._background.append(
                asyncio.create_task(purge_forever(self.tracker, self.settings.task_retention_s))
            )
        vouching = Vouching(pipeline.redeliveries, self.broker, self.names.control)
        self._background.append(asyncio.create_task(vouching.tell_forever()))

        async def on_control(message: Any) -> None:
            """One broadcast on the control exchange, read once: a task to stop (task
            mode), or another worker's vouchers (vouching.py)."""
            try:
                command = contract.unpack(message.body)
            except Exception:
                log.warning("control_message_ignored", reason="not msgpack")
                return
            if not isinstance(command, dict):
                log.warning("control_message_ignored", reason="not a map")
                return
            if "stop" in command:
                self.tasks.stop_requested(command["stop"])
            if "vouch" in command:
                vouching.take(command)

        await self.consumers.control(self.names.control, on_control, SYSTEM_PREFETCH)
        for name, function in self.functions.items():
            queue = self.names.function_queue(name)
            await self.consumers.consume(
                queue,
                prefetch_for(function.slots.limit, function.runner.ack_linger),
                pipeline.consumer(function, queue),
                paused=function.paused,
            )
            suspects = self.names.suspect_queue(name)
            await self.consumers.consume(
                suspects,
                1,
                pipeline.consumer(function, suspects, suspect=True),
                paused=function.paused,
            )
        applier = self.applier = Applier(
            self.functions,
            self.consumers,
            self.names,
            lambda name, concurrency: prefetch_for(
                self._slot_limit(name, self.functions[name].runner, concurrency),
                self.functions[name].runner.ack_linger,
            ),
            lambda name, concurrency: self._slot_limit(
                name, self.functions[name].runner, concurrency
            ),
            lambda: self.store.version,
        )
        live.listen(applier.on_change)
        for name in self.functions:  # what changed while the consumers started
            applier.on_change(name, live.effective(name))
        await self.consumers.consume(self.names.unrouted, SYSTEM_PREFETCH, system.on_unrouted)
        await self.consumers.consume(self.names.dead, SYSTEM_PREFETCH, system.on_dead)
        await self.triggers.start()
        if self.metrics_port is not None:
            self._health = await serve_health(
                self.metrics, self.not_ready, self.metrics_host, self.metrics_port
            )
        gc.freeze()  # start-up's objects stay: spare the collector's full passes over them
        self.supervision.ready(self.status())
        log.info(
            "worker_started",
            namespace=self.names.ns,
            functions=sorted(self.functions),
            pid=os.getpid(),
            metrics_port=self.metrics_port,
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        )

    def _slot_limit(self, name: str, runner: Runner, concurrency: int) -> int:
        """A function's slots for a (live) concurrency: its runner's slots scaled by it
        (the process executor holds a second attempt per process in its pipeline; its pool
        keeps the size it started with)."""
        return max(1, runner.slots * concurrency // self.specs[name].concurrency)

    def ready(self) -> bool:
        """Consuming, connected, and the task store up: what /readyz reports."""
        return not self.not_ready()

    def not_ready(self) -> list[str]:
        """Why the worker cannot do its work now; empty when it can."""
        reasons = []
        if not self.consumers:
            reasons.append("not consuming yet")
        if self.stopping:
            reasons.append("stopping")
        if not self.broker.is_connected:
            reasons.append("RabbitMQ: not connected")
        if self.tracker.outage is not None:
            reasons.append(f"task store: {self.tracker.outage}")
        reasons.extend(self.consumers.problems())
        if self.store.problem is not None:
            reasons.append(f"live configuration: {self.store.problem}")
        reasons.extend(self.triggers.not_ready())
        return reasons

    def status(self) -> str:
        state = f"connected to {self.broker.node}" if self.broker.is_connected else "reconnecting"
        return f"{state}; {len(self.in_flight)} in flight; functions: {', '.join(self.functions)}"

    async def stop(self) -> None:
        """Stop consuming; in-flight attempts finish within the grace period; return the rest."""
        if self.stopping:
            return
        self.stopping = True
        self.supervision.stopping(f"stopping; {len(self.in_flight)} in flight")
        log.info("worker_stopping", in_flight=len(self.in_flight))
        if self.live is not None:
            self.live.close()
        if self.applier is not None:
            await self.applier.close()  # before the cancel: no consumer started again
        await self.consumers.cancel()
        await self.triggers.stop()
        await self.store.close()
        for task in self._background:
            task.cancel()
        if self.pipeline is not None:
            await self.pipeline.return_unfinished(self.settings.shutdown_grace_s)
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


def _selected(functions_file: FunctionsFile, only: list[str] | None) -> dict[str, FunctionSpec]:
    """The functions this worker runs: ``only`` those (``--function``), or all."""
    specs = dict(functions_file.functions)
    if not only:
        return specs
    missing = sorted(set(only) - set(specs))
    if missing:
        raise AsyncInvokeError(
            f"--function {', '.join(missing)}: not in {functions_file.path}; "
            f"known: {', '.join(sorted(specs))}"
        )
    return {name: specs[name] for name in only}
