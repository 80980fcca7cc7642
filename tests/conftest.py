"""Fixtures shared by the integration and reliability tests.

Every test gets its own namespace on the real RabbitMQ and removes what it
declared. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import structlog

from asyncinvoke import contract, functions, topology
from asyncinvoke.settings import Settings
from asyncinvoke.worker import Worker
from tests.support.ci_skips import (  # noqa: F401  (hooks: a skip fails the run under CI)
    pytest_collectreport,
    pytest_runtest_makereport,
    pytest_sessionfinish,
)
from tests.support.poison import POISON_EXIT_STATUS

ROOT = Path(__file__).resolve().parent.parent
# The suite is an application that configured structlog (at its defaults: console lines on
# stdout, which tests read from in-process workers), as the commands configure it. Left
# unconfigured, asyncinvoke would log to the standard library's logging instead, as a
# library should (tests/integration/test_library_logging.py, in subprocesses).
structlog.configure()
AMQP_URL = os.environ.get("ASYNCINVOKE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def write_functions(directory: Path, body: str) -> Path:
    path = directory / "functions.toml"
    path.write_text(textwrap.dedent(body))
    return path


class Namespace:
    """A throwaway namespace: its settings, names, and cleanup of what it declared."""

    def __init__(self, tmp_path: Path):
        self.ns = f"t{uuid.uuid4().hex[:10]}"
        self.names = topology.Names(self.ns)
        self.settings = Settings(amqp_url=AMQP_URL, namespace=self.ns, shutdown_grace_s=5.0)
        self.tmp_path = tmp_path
        self.extra_queues: list[str] = []
        self.function_names: set[str] = set()

    def queue_name(self, suffix: str) -> str:
        name = f"{self.ns}.{suffix}"
        self.extra_queues.append(name)
        return name

    def functions(self, body: str) -> functions.FunctionsFile:
        path = write_functions(self.tmp_path, body)
        loaded = functions.load(path)
        self.function_names.update(loaded.functions)
        return loaded

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "ASYNCINVOKE_AMQP_URL": AMQP_URL,
            "ASYNCINVOKE_NAMESPACE": self.ns,
            "ASYNCINVOKE_LOG_FORMAT": "json",
            "PYTHONPATH": str(ROOT),
            **extra,
        }
        return env

    async def cleanup(self, url: str = AMQP_URL) -> None:
        connection = await aio_pika.connect(url)
        try:
            specs = [functions.FunctionSpec(name) for name in self.function_names]
            await topology.delete(connection, topology.functions_plan(self.names, specs))
            await topology.delete(connection, topology.core_plan(self.names))
            for queue in self.extra_queues:
                async with connection.channel() as channel:
                    with contextlib.suppress(Exception):
                        await channel.queue_delete(queue)
        finally:
            await connection.close()


@pytest.fixture(autouse=True)
def _logging_as_the_suite_found_it(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A CLI command run in-process (click's CliRunner) configures structlog for the whole
    process: its level (the dlq tool's is ERROR), its stream (the runner's, gone after
    the command), the hot path's JSON writer and cached loggers that keep them. Every
    later test that reads a log line would then find none. Here such a configuration
    caches nothing, and the configuration before the test comes back after it."""
    from asyncinvoke import observability

    saved = structlog.get_config()
    monkeypatch.setattr(observability, "_json_writer", observability._json_writer)
    for name in ("asyncinvoke.cli._common", "asyncinvoke.cli.dlq"):
        module = importlib.import_module(name)
        configure = module.configure_logging

        def uncached(*args: Any, _configure: Any = configure, **kwargs: Any) -> None:
            _configure(*args, **kwargs)
            structlog.configure(cache_logger_on_first_use=False)

        monkeypatch.setattr(module, "configure_logging", uncached)
    yield
    structlog.configure(**saved)


@pytest.fixture
async def namespace(tmp_path: Path) -> AsyncIterator[Namespace]:
    space = Namespace(tmp_path)
    yield space
    await space.cleanup()


@pytest.fixture
async def amqp() -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await aio_pika.connect(AMQP_URL)
    yield connection
    await connection.close()


@contextlib.asynccontextmanager
async def running_worker(
    namespace: Namespace, functions_file: functions.FunctionsFile, **settings: Any
) -> AsyncIterator[Worker]:
    """A worker in this process and loop, stopped (gracefully) on exit."""
    config = namespace.settings.with_overrides(**settings)
    worker = Worker(config, functions_file)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


async def collect(
    connection: aio_pika.abc.AbstractConnection,
    queue_name: str,
    count: int,
    timeout: float,
    *,
    declare: bool = False,
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Consume and ack ``count`` messages from ``queue_name``, or fail after ``timeout`` s."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=500)
    if declare:
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
    else:
        queue = await channel.get_queue(queue_name, ensure=False)
    got: list[aio_pika.abc.AbstractIncomingMessage] = []
    done = asyncio.Event()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        got.append(message)
        if len(got) >= count:
            done.set()

    tag = await queue.consume(on_message)
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except TimeoutError:
        pytest.fail(f"{queue_name}: got {len(got)} of {count} messages within {timeout} s")
    finally:
        await queue.cancel(tag)
        await channel.close()
    return got


async def declare_queue(connection: aio_pika.abc.AbstractConnection, queue_name: str) -> None:
    """Declare a durable quorum queue (a destination the test reads from)."""
    async with connection.channel() as channel:
        await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})


def records_of(messages: list[aio_pika.abc.AbstractIncomingMessage]) -> list[dict[str, Any]]:
    return [contract.unpack(message.body) for message in messages]


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a cheap in-process condition until true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


class WorkerProcess:
    """``asyncinvoke worker`` as a subprocess, for kills and restarts."""

    def __init__(self, namespace: Namespace, config: Path, *args: str, **env: str):
        self.namespace = namespace
        self.config = config
        self.args = args
        self.env = namespace.env(**env)
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    async def start(self, timeout: float = 30.0) -> WorkerProcess:
        self._started = asyncio.Event()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "asyncinvoke", "worker", "--config", str(self.config),
            *self.args,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(ROOT),
        )
        self._reader = asyncio.create_task(self._read(self.process))
        waiter = asyncio.create_task(self._started.wait())
        exited = asyncio.create_task(self.process.wait())
        await asyncio.wait({waiter, exited}, timeout=timeout, return_when="FIRST_COMPLETED")
        waiter.cancel()
        exited.cancel()
        if not self._started.is_set():
            await self.kill()
            tail = "\n".join(self.lines[-20:])
            pytest.fail(f"worker did not start within {timeout} s:\n{tail}")
        return self

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if '"worker_started"' in line:
                self._started.set()

    async def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), timeout)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        return code

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader

    async def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.terminate()
        return await self.wait_exit(timeout)


class PoisonedWorker(WorkerProcess):
    """A worker the poison may kill before it reports that it started.

    The worker logs ``worker_started`` after it began consuming, and the poison may be
    its first delivery: a restarted worker can die before it says it is up. That death
    counts like any other (the exit status tells it from any other failure); the test
    notices the exit and starts it again.
    """

    async def start(self, timeout: float = 30.0) -> PoisonedWorker:
        try:
            await super().start(timeout)
        except pytest.fail.Exception:
            assert self.process is not None
            if self.process.returncode != POISON_EXIT_STATUS:
                raise
        return self
