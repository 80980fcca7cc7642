"""Prometheus metrics, and the small HTTP server that exposes them with health checks.

Each Worker (and gateway) owns a ``Metrics`` with its own registry, so several can
live in one process (``serve``, tests) without clashing.

Under ``--processes N`` each worker process writes its values to files in
prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the
supervisor), and the supervisor serves their sum (``supervisor.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

ATTEMPT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30)
# The label value of every function the functions file does not name. The name of an
# unknown function comes from whoever published the message, and each new label value
# would be a time series kept for the life of the process. No function name has brackets.
OTHER_FUNCTION = "(other)"


def multiprocess() -> bool:
    """Whether prometheus-client keeps values in files (PROMETHEUS_MULTIPROC_DIR was set
    when it was imported), to be summed by another process."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class SampledGauge(Gauge):
    """A gauge read from a function. In multiprocess mode the function is sampled into
    the gauge's file by ``sample()`` (prometheus-client's own ``set_function`` only
    answers in-process scrapes, and the supervisor reads files)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sample: Callable[[], float] | None = None

    def set_function(self, f: Callable[[], float]) -> None:
        if multiprocess():
            self._sample = f
        else:
            super().set_function(f)

    def sample(self) -> None:
        if self._sample is not None:
            self.set(self._sample())


class WatchedBroker(Protocol):
    @property
    def is_connected(self) -> bool: ...

    @property
    def node(self) -> str: ...


BROKER_CONNECTED = "asyncinvoke_broker_connected"


class _BrokerConnected(Collector):
    """``asyncinvoke_broker_connected{node=…}``: 1 while connected to that node, 0 while
    reconnecting (then ``node`` is the one being tried). The label changes with a
    failover, so the sample is made at scrape time instead of kept in a Gauge.

    In multiprocess mode the supervisor sums files, not collectors: ``sample()`` writes a
    gauge per node instead, 1 for the node this process is connected to and 0 for every
    node it used before, so the sum per node is the number of worker processes connected
    to it (and a process that is reconnecting adds nothing)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.broker: WatchedBroker | None = None
        self._gauge: Gauge | None = None
        self._written: set[str] = set()
        if multiprocess():
            self._gauge = Gauge(
                BROKER_CONNECTED,
                "Worker processes connected to RabbitMQ, by node (no password).",
                ["node"],
                registry=registry,
                multiprocess_mode="livesum",
            )
        else:
            registry.register(self)

    def sample(self) -> None:
        if self._gauge is None or self.broker is None:
            return
        node = self.broker.node
        for before in self._written - {node}:
            self._gauge.labels(before).set(0)
        self._gauge.labels(node).set(float(self.broker.is_connected))
        self._written.add(node)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            BROKER_CONNECTED,
            "1 while the connection to RabbitMQ is up; node: the node in use (no password).",
            labels=["node"],
        )
        if self.broker is not None:
            family.add_metric([self.broker.node], float(self.broker.is_connected))
        yield family


class Metrics:
    def __init__(self, functions: Iterable[str] = ()) -> None:
        """``functions``: the configured names, the only ones used as label values."""
        self.functions = frozenset(functions)
        self.registry = CollectorRegistry()
        self.invocations = Counter(
            "asyncinvoke_invocations",
            "Attempts and settlements by function and outcome.",
            ["function", "outcome"],
            registry=self.registry,
        )
        self.attempt_duration = Histogram(
            "asyncinvoke_attempt_duration_seconds",
            "How long one attempt ran.",
            ["function"],
            buckets=ATTEMPT_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "asyncinvoke_retries",
            "Retries scheduled into the delay ladder.",
            ["function"],
            registry=self.registry,
        )
        self.throttles = Counter(
            "asyncinvoke_throttles",
            "Attempts throttled (HTTP 429/503, no connection, Throttled) and sent again on "
            "the throttle budget; not retries, not failures.",
            ["function"],
            registry=self.registry,
        )
        self.failure_records = Counter(
            "asyncinvoke_failure_records",
            "Failure records sent, by condition.",
            ["function", "condition"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "asyncinvoke_in_flight",
            "Deliveries being handled now.",
            ["function"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.delay_lateness = Histogram(
            "asyncinvoke_delay_lateness_seconds",
            "How late a delayed invocation or retry started after its due time.",
            buckets=LATENESS_BUCKETS,
            registry=self.registry,
        )
        self._broker_connected = _BrokerConnected(self.registry)

        self.trigger_ticks = Counter(
            "asyncinvoke_trigger_ticks",
            "Timer ticks fired, or skipped as older than the catch-up window.",
            ["function", "trigger", "outcome"],
            registry=self.registry,
        )
        self.trigger_lateness = Histogram(
            "asyncinvoke_trigger_lateness_seconds",
            "How late a timer tick was confirmed by the broker after its scheduled time.",
            buckets=LATENESS_BUCKETS,
            registry=self.registry,
        )
        self.trigger_messages = Counter(
            "asyncinvoke_trigger_source_messages",
            "Source messages turned into invocations (and acked) by RabbitMQ triggers.",
            ["function", "trigger"],
            registry=self.registry,
        )
        self.trigger_batches = Counter(
            "asyncinvoke_trigger_source_batches",
            "Invocations made by RabbitMQ triggers, one per batch.",
            ["function", "trigger"],
            registry=self.registry,
        )
        self.trigger_healthy = Gauge(
            "asyncinvoke_trigger_healthy",
            "1 while a RabbitMQ trigger consumes its source queue, 0 while it cannot.",
            ["function", "trigger"],
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.trigger_leader = SampledGauge(
            "asyncinvoke_trigger_leader",
            "1 in the worker that schedules the timers now.",
            registry=self.registry,
            multiprocess_mode="livemax",
        )

    def watch_broker(self, broker: WatchedBroker) -> None:
        """Report ``broker``'s connection and node (metric and /readyz)."""
        self._broker_connected.broker = broker

    @property
    def broker_node(self) -> str | None:
        """The node the watched broker uses (password hidden), None if none is watched."""
        broker = self._broker_connected.broker
        return None if broker is None else broker.node

    def function_label(self, function: str) -> str:
        return function if function in self.functions else OTHER_FUNCTION

    def count_failure_record(self, function: str, condition: str) -> None:
        """A failure record was sent for ``function``, as its message named it."""
        self.failure_records.labels(self.function_label(function), condition).inc()

    def sample(self) -> None:
        """Write the values read from functions (multiprocess mode; else a no-op)."""
        self._broker_connected.sample()
        self.trigger_leader.sample()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Renders(Protocol):
    def render(self) -> bytes: ...

    @property
    def broker_node(self) -> str | None: ...


def health_routes(metrics: Renders, not_ready: Callable[[], list[str]]) -> list[web.RouteDef]:
    """/metrics, /healthz (the process answers) and /readyz (it can do its work; if not,
    ``not_ready`` says why, and the answer lists it under "reasons")."""

    async def metrics_view(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        reasons = not_ready()
        broker = metrics.broker_node
        node = {} if broker is None else {"broker": broker}
        if not reasons:
            return web.json_response({"status": "ready", **node})
        return web.json_response({"status": "not ready", "reasons": reasons, **node}, status=503)

    return [
        web.get("/metrics", metrics_view),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
    ]


async def serve_health(
    metrics: Renders, not_ready: Callable[[], list[str]], host: str, port: int
) -> web.AppRunner:
    app = web.Application()
    app.add_routes(health_routes(metrics, not_ready))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
