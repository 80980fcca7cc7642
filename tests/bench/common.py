"""What the benchmark parts share: throwaway namespaces, result rows, subprocess helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aio_pika
import aiormq

from asyncinvoke import functions, topology
from asyncinvoke.errors import AsyncInvokeError
from asyncinvoke.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
AMQP_URL = os.environ.get("ASYNCINVOKE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
FUNCTION = "noop"
QUORUM = {"x-queue-type": "quorum"}
T = TypeVar("T")


def say(message: str) -> None:
    """Progress on stderr, so stdout keeps only the table."""
    print(f"  · {message}", file=sys.stderr, flush=True)


# -- namespaces ------------------------------------------------------------------------


class Namespace:
    """A throwaway namespace for one run: declare, and delete everything it declared."""

    def __init__(self, label: str):
        self.ns = f"bench-{label}-{uuid.uuid4().hex[:8]}"
        self.names = topology.Names(self.ns)
        self.settings = Settings(amqp_url=AMQP_URL, namespace=self.ns)
        self.specs: list[functions.FunctionSpec] = []
        self.extra_queues: list[str] = []

    def queue_name(self, suffix: str) -> str:
        name = f"{self.ns}.{suffix}"
        self.extra_queues.append(name)
        return name

    async def declare(self, specs: Iterable[functions.FunctionSpec]) -> None:
        """What a worker declares at start, so producers can publish before it runs."""
        self.specs.extend(specs)
        connection = await aio_pika.connect(AMQP_URL)
        try:
            channel = await connection.channel()
            await topology.declare(channel, self.names, self.specs)
        finally:
            await connection.close()

    def env(self, **extra: str) -> dict[str, str]:
        python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        return {
            **os.environ,
            "ASYNCINVOKE_AMQP_URL": AMQP_URL,
            "ASYNCINVOKE_NAMESPACE": self.ns,
            "ASYNCINVOKE_LOG_FORMAT": "json",
            "PYTHONPATH": python_path,
            **extra,
        }

    async def cleanup(self) -> None:
        """Delete every queue and exchange of the namespace; never raises."""
        try:
            connection = await asyncio.wait_for(aio_pika.connect(AMQP_URL), 30)
        except Exception as exc:
            say(f"cleanup of {self.ns} failed: {exc!r}; delete its queues by hand")
            return
        try:
            specs = self.specs or [functions.FunctionSpec(FUNCTION)]
            async with asyncio.timeout(120):
                await topology.delete(connection, topology.functions_plan(self.names, specs))
                await topology.delete(connection, topology.core_plan(self.names))
                for queue in self.extra_queues:
                    async with connection.channel() as channel:
                        with contextlib.suppress(Exception):
                            await channel.queue_delete(queue)
        except Exception as exc:
            say(f"cleanup of {self.ns} incomplete: {exc!r}")
        finally:
            await connection.close()


# -- subprocesses ----------------------------------------------------------------------


async def stop_process(
    process: asyncio.subprocess.Process | None, timeout: float = 30.0
) -> int | None:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Never raises."""
    if process is None:
        return None
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 10)
    return process.returncode


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


# -- results ---------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: every run of ours and of bare aio-pika; the best is shown."""

    part: str
    measure: str
    unit: str
    ours: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    higher_is_better: bool = True
    target: float | None = None  # minimum of ours/bare (throughput rows)

    def best(self, values: list[float]) -> float | None:
        if not values:
            return None
        return max(values) if self.higher_is_better else min(values)

    @property
    def ratio(self) -> float | None:
        ours, bare = self.best(self.ours), self.best(self.bare)
        if ours is None or not bare:
            return None
        return ours / bare

    @property
    def meets_target(self) -> bool | None:
        ratio = self.ratio
        if self.target is None or ratio is None:
            return None
        return ratio >= self.target


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100) by the inclusive method."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


# -- bare aio-pika publishing (the producer baseline, and the e2e pre-load) --------------


async def bare_publish_many(
    channel: aio_pika.abc.AbstractChannel, queue: str, body: bytes, n: int, window: int = 1000
) -> None:
    """N persistent publishes with confirms to ``queue``, ``window`` in flight."""
    semaphore = asyncio.Semaphore(window)
    exchange = channel.default_exchange

    async def one() -> None:
        async with semaphore:
            await exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue,
                timeout=30,
            )

    await asyncio.gather(*(one() for _ in range(n)))


def envelope_size() -> int:
    """Bytes of the envelope Client.invoke sends for a no-op call (payload nil)."""
    from asyncinvoke import Client

    client = Client(settings=Settings(amqp_url=AMQP_URL, namespace="bench"))
    return len(client.envelope(FUNCTION, None)[1])


# -- a shared machine --------------------------------------------------------------------

ATTEMPTS = 3  # tries of one run before the benchmark gives up
LOADS: list[float] = []  # 1-minute load average at the start of every run


class Disturbed(Exception):
    """Something outside the benchmark spoiled a run (a connection drop, a redelivery)."""


# What a connection drop or a stuck broker raises; a bug would fail every try anyway.
SPOILERS = (
    ConnectionError,
    TimeoutError,
    RuntimeError,
    aiormq.exceptions.AMQPError,
    AsyncInvokeError,
)


def note_load() -> float:
    load = os.getloadavg()[0]
    LOADS.append(load)
    return load


async def retrying(what: str, run: Callable[[], Awaitable[T]]) -> T:
    """Run one measurement; on failure (others share this broker) try afresh, up to ATTEMPTS.

    Each try uses a fresh namespace, so a spoiled try leaves nothing behind.
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await run()
        except (Disturbed, *SPOILERS) as exc:
            first_line = (str(exc) or type(exc).__name__).splitlines()[0]
            if attempt == ATTEMPTS:
                raise
            say(f"{what}: try {attempt} spoiled ({first_line}); trying again")
            await asyncio.sleep(2)
    raise AssertionError("unreachable")
