"""A worker container stopped (`podman stop`: SIGTERM), killed (`podman kill`: SIGKILL)
and cut off from its broker loses nothing and says so in its health check."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import pytest

from asyncinvoke import Client
from tests.conftest import AMQP_URL
from tests.container.conftest import Container, Deployment, Results, free_port, write_functions

# The first test builds the image (and, on a fresh machine, the base: a few minutes).
pytestmark = pytest.mark.timeout(600)

SHUTDOWN_GRACE_S = 4
STOP_TIMEOUT_S = 30  # podman stop's timeout: well above the grace


def _functions(results: str, concurrency: int) -> str:
    return f"""
        [functions.work]
        handler = "container_handlers:work"
        concurrency = {concurrency}
        on_success = "queue:{results}"
    """


async def _in_flight(container: Container) -> int:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{container.port}/metrics"
    ) as answer:
        text = await answer.text()
    found = re.search(r'^asyncinvoke_in_flight\{function="work"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


async def _until_in_flight(container: Container, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (now := await _in_flight(container)) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{now} attempts in flight after {timeout} s, not {count}")
        await asyncio.sleep(0.1)


async def test_podman_stop_finishes_or_returns_50_attempts_in_flight(
    deployment: Deployment, amqp_connection
) -> None:
    results = deployment.namespace.queue_name("results")
    write_functions(deployment, _functions(results, 50))
    first = deployment.run("worker", ASYNCINVOKE_SHUTDOWN_GRACE=str(SHUTDOWN_GRACE_S))
    await first.ready()
    async with Results(amqp_connection, results) as seen, Client(
        url=deployment.namespace.settings.amqp_url, namespace=deployment.namespace.ns
    ) as client:
        # Half end within the grace period, half would run for a minute.
        short = await client.invoke_many([("work", {"seconds": 1, "n": n}) for n in range(25)])
        long = await client.invoke_many([("work", {"seconds": 60, "n": n}) for n in range(25)])
        await _until_in_flight(first, 50)
        started = time.monotonic()
        await asyncio.to_thread(first.stop, STOP_TIMEOUT_S)
        took = time.monotonic() - started
        assert await first.wait_exit(10) == 0, first.logs()[-3000:]  # not 137: no SIGKILL
        assert took < STOP_TIMEOUT_S - 5, f"the stop took {took:.1f} s"
        assert '"returned_to_queue"' in first.logs()
        # The attempts that fit in the grace finished (their records were confirmed before
        # the worker exited); the others did not run to their end.
        await seen.until(set(short), timeout=10)
        assert not set(long) & set(seen.runs)

        # Another worker, with a fast pace, runs what the first one returned.
        second = deployment.run("worker", HANDLER_PACE="0")
        await seen.until(set(short) | set(long), timeout=60)
    assert {seen.worker_of[i] for i in short} == {first.name}
    assert {seen.worker_of[i] for i in long} == {second.name}
    assert set(seen.runs.values()) == {1}, "a graceful stop ran an attempt twice"


async def test_podman_kill_mid_stream_loses_no_invocation(
    deployment: Deployment, amqp_connection
) -> None:
    results = deployment.namespace.queue_name("results")
    write_functions(deployment, _functions(results, 20))
    first = deployment.run("worker")
    await first.ready()
    async with Results(amqp_connection, results) as seen, Client(
        url=deployment.namespace.settings.amqp_url, namespace=deployment.namespace.ns
    ) as client:
        ids = await client.invoke_many([("work", {"seconds": 0.3, "n": n}) for n in range(200)])
        await seen.until_count(30, timeout=30)
        await asyncio.to_thread(first.kill)
        assert await first.wait_exit(10) == 137  # SIGKILL
        done_before_kill = len(seen.runs)
        assert done_before_kill < len(ids), "the kill came too late to prove anything"
        second = deployment.run("worker", HANDLER_PACE="0")
        await seen.until(set(ids), timeout=90)
    assert set(seen.runs) == set(ids)
    assert second.name in set(seen.worker_of.values())


class Proxy:
    """A TCP relay to the tests' RabbitMQ: closing it makes the broker unreachable for
    whoever connected through it, without touching the broker everyone else uses."""

    def __init__(self) -> None:
        self.port = free_port()
        self.target_port = urlsplit(AMQP_URL).port or 5672
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self) -> None:
        """Listen (once: a closed relay stays closed)."""
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@contextlib.asynccontextmanager
async def _proxy() -> AsyncIterator[Proxy]:
    proxy = Proxy()
    await proxy.open()
    try:
        yield proxy
    finally:
        with contextlib.suppress(Exception):
            await proxy.close()


async def _until_health(container: Container, status: str, timeout: float) -> str:
    """Run the health check until the container's health is ``status``; its last output."""
    deadline = time.monotonic() + timeout
    while True:
        await asyncio.to_thread(container.healthcheck)
        if container.health() == status:
            return container.state("Health.Log")
        if time.monotonic() > deadline:
            pytest.fail(f"{container.name} not {status} after {timeout} s: {container.health()}")
        await asyncio.sleep(0.5)


async def test_the_health_check_is_healthy_once_ready_and_unhealthy_without_the_broker(
    deployment: Deployment,
) -> None:
    write_functions(deployment, _functions(deployment.namespace.queue_name("results"), 4))
    async with _proxy() as proxy:
        worker = deployment.run(
            "worker", amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        )
        await worker.ready()
        await _until_health(worker, "healthy", timeout=30)

        # The broker is now unreachable for this worker. Failures count once the image's
        # start period (10 s from the start) is over.
        await proxy.close()
        log = await _until_health(worker, "unhealthy", timeout=60)
        assert "RabbitMQ: not connected" in log
