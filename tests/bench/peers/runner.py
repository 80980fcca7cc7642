"""Start, feed, measure and stop one worker process of each system, the same way for all.

A run (``OursRun`` or ``PeerRun``) owns one queue set (a fresh asyncinvoke namespace, or a
fresh queue name for a peer), one worker started in its own process group, and one result
file written by ``probe.hit`` inside the worker. ``close()`` kills the worker's whole
process group (Dramatiq and taskiq fork children) and deletes every queue and exchange the
run declared; call it on every exit path (``async with``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiormq

from asyncinvoke import Client, functions
from tests.bench.common import AMQP_URL, QUORUM, ROOT, Namespace, say, tail

BIN = Path(sys.executable).parent
NOOP = "noop"


class WorkerDied(RuntimeError):
    pass


def cancel_on_sigterm() -> None:
    """SIGTERM cancels the running benchmark like Ctrl-C, so its cleanup runs."""
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


# -- processes -------------------------------------------------------------------------------


async def spawn(
    command: list[str], env: dict[str, str], log_path: Path
) -> asyncio.subprocess.Process:
    """Start ``command`` as the leader of a new process group, output to ``log_path``."""
    with log_path.open("ab") as log_file:
        return await asyncio.create_subprocess_exec(
            *command,
            env=env,
            cwd=str(ROOT),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )


def _signal_group(process: asyncio.subprocess.Process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


async def stop_group(process: asyncio.subprocess.Process | None, timeout: float = 15.0) -> None:
    """SIGTERM to the process group, wait up to ``timeout`` s, then SIGKILL it. Never raises
    but CancelledError, and only after the group is gone (an interrupted benchmark still
    kills its workers)."""
    if process is None:
        return
    cancelled = False
    if process.returncode is None:
        _signal_group(process, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            say(f"pid {process.pid} did not stop within {timeout:g} s: SIGKILL")
        except asyncio.CancelledError:
            cancelled = True
    # Children left behind by the leader (or the leader itself) go now.
    _signal_group(process, signal.SIGKILL)
    try:
        await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:
        pass
    except asyncio.CancelledError:
        cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def tree_pids(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo += _children(current)
    return pids


def rss_kb(pid: int) -> int:
    """VmRSS of one process from /proc/PID/status, in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB (10^6 bytes)."""
    return sum(rss_kb(p) for p in tree_pids(pid)) * 1024 / 1e6


# -- broker helpers ------------------------------------------------------------------------


async def queue_ready(name: str) -> int | None:
    """Messages ready (not delivered) in a queue, or None when it does not exist."""
    counts = await queues_ready([name])
    return counts[0]


async def queues_ready(names: list[str]) -> list[int | None]:
    """``queue_ready`` of several queues over one connection."""
    connection = await asyncio.wait_for(aio_pika.connect(AMQP_URL), 30)
    counts: list[int | None] = []
    try:
        for name in names:
            async with connection.channel() as channel:
                try:
                    queue = await channel.declare_queue(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    counts.append(None)
                    continue
                counts.append(queue.declaration_result.message_count)
    finally:
        await connection.close()
    return counts


async def delete_names(queues: list[str], exchanges: list[str]) -> None:
    """Delete queues and exchanges by name; missing ones are fine; never raises."""
    try:
        connection = await asyncio.wait_for(aio_pika.connect(AMQP_URL), 30)
    except Exception as exc:
        say(f"cleanup failed ({exc!r}); delete by hand: {', '.join(queues + exchanges)}")
        return
    try:
        async with asyncio.timeout(120):
            for queue in queues:
                async with connection.channel() as channel:
                    with contextlib.suppress(aiormq.exceptions.AMQPError):
                        await channel.queue_delete(queue)
            for exchange in exchanges:
                async with connection.channel() as channel:
                    with contextlib.suppress(aiormq.exceptions.AMQPError):
                        await channel.exchange_delete(exchange)
    except Exception as exc:
        say(f"cleanup incomplete ({exc!r}): {', '.join(queues + exchanges)}")
    finally:
        await connection.close()


# -- systems -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """One peer library: how to start its worker and what it declares."""

    key: str
    name: str
    distribution: str
    module: str

    def available(self) -> str | None:
        """None when it can run here, else why not."""
        if importlib.util.find_spec(self.distribution) is None:
            return f"{self.distribution} is not installed (.venv/bin/pip install -e '.[peers]')"
        return None

    @property
    def version(self) -> str:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(self.distribution)
        return "?"

    def worker_command(self, queue: str, settings: dict[str, Any]) -> list[str]:
        processes = int(settings.get("processes", 1))
        if self.key == "celery":
            pool = ["--pool=solo", "--concurrency=1"] if processes == 1 else [
                "--pool=prefork", f"--concurrency={processes}"]  # fmt: skip
            return [
                str(BIN / "celery"), "-A", self.module, "worker", *pool, "-Q", queue,
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel=WARNING",
            ]  # fmt: skip
        if self.key == "dramatiq":
            return [
                str(BIN / "dramatiq"), self.module,
                "--processes", str(processes), "--threads", str(settings["threads"]),
                "--worker-shutdown-timeout", "5000",
            ]  # fmt: skip
        if self.key == "taskiq":
            return [
                str(BIN / "taskiq"), "worker", f"{self.module}:broker",
                "--workers", "1", "--ack-type", "when_executed",
                "--max-async-tasks", str(settings["max_async_tasks"]),
                "--shutdown-timeout", "5", "--wait-tasks-timeout", "5",
            ]  # fmt: skip
        raise ValueError(self.key)

    def declared(self, queue: str) -> tuple[list[str], list[str]]:
        """The queues and exchanges a run with this queue name leaves in the broker."""
        if self.key == "celery":
            return [queue], [queue]
        if self.key == "dramatiq":
            return [queue, f"{queue}.DQ", f"{queue}.XQ"], []
        if self.key == "taskiq":
            return [queue, f"{queue}.dead_letter"], [queue]
        raise ValueError(self.key)

    def delay_queue(self, queue: str) -> str:
        """Where delayed tasks wait before the worker fetches them."""
        return f"{queue}.DQ" if self.key == "dramatiq" else queue


CELERY = Peer("celery", "Celery", "celery", "tests.bench.peers.celery_app")
DRAMATIQ = Peer("dramatiq", "Dramatiq", "dramatiq", "tests.bench.peers.dramatiq_app")
TASKIQ = Peer("taskiq", "taskiq-aio-pika", "taskiq_aio_pika", "tests.bench.peers.taskiq_app")
PEERS = (DRAMATIQ, CELERY, TASKIQ)


# -- runs ----------------------------------------------------------------------------------


@dataclass
class Result:
    """What probe.hit wrote when the N-th task started."""

    count: int
    first_ns: int
    last_ns: int
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return (self.count - 1) / ((self.last_ns - self.first_ns) / 1e9)

    @property
    def seconds(self) -> float:
        return (self.last_ns - self.first_ns) / 1e9


class Run:
    """What both kinds of run share: the worker process, its log and the probe's files."""

    label: str
    worker: asyncio.subprocess.Process | None = None

    def __init__(self, workdir: Path, tag: str, n: int):
        self.workdir = workdir
        self.tag = tag
        self.n = n
        self.out = workdir / f"{tag}.result.json"
        self.log = workdir / f"{tag}.log"

    def probe_env(self) -> dict[str, str]:
        python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        return {
            "BENCH_N": str(self.n),
            "BENCH_OUT": str(self.out),
            "BENCH_AMQP_URL": AMQP_URL,
            "PYTHONPATH": python_path,
        }

    def check_alive(self) -> None:
        if self.worker is not None and self.worker.returncode is not None:
            raise WorkerDied(
                f"{self.label}: worker exited with {self.worker.returncode}:\n{tail(self.log)}"
            )

    async def wait_for(self, path: Path, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.label}: no {what} within {timeout:g} s ({await self.progress()}); "
                    f"worker log:\n{tail(self.log)}"
                )
            await asyncio.sleep(0.1)

    async def progress(self) -> str:
        """What the probe last reported, for error messages."""
        try:
            ran = json.loads(Path(f"{self.out}.progress").read_text())["count"]
        except (OSError, ValueError, KeyError):
            ran = 0
        return f"at least {ran} of {self.n} ran"

    async def wait_warm(self, timeout: float = 90.0) -> None:
        await self.wait_for(Path(f"{self.out}.warm"), timeout, "warm-up task run")

    async def wait_result(self, timeout: float) -> Result:
        await self.wait_for(self.out, timeout, f"{self.n} tasks run")
        return Result(**json.loads(self.out.read_text()))

    def rss_mb(self) -> float:
        assert self.worker is not None
        return tree_rss_mb(self.worker.pid)

    async def stop_worker(self) -> None:
        worker, self.worker = self.worker, None
        await stop_group(worker)

    async def __aenter__(self) -> Run:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        raise NotImplementedError


class PeerRun(Run):
    def __init__(self, peer: Peer, workdir: Path, n: int, settings: dict[str, Any]):
        self.peer = peer
        self.queue = f"bench_{peer.key}_{uuid.uuid4().hex[:8]}"
        super().__init__(workdir, self.queue, n)
        self.settings = settings
        self.label = peer.name

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.probe_env(),
            "BENCH_QUEUE": self.queue,
            "BENCH_PREFETCH": str(self.settings.get("prefetch", 200)),
            **self.settings.get("env", {}),
        }

    async def publish(
        self, n: int, *, rate: float = 0, delay_s: float = 0, warm: bool = False
    ) -> float:
        """Hand over ``n`` tasks with the peer's own API, in a process of its own; seconds."""
        command = [sys.executable, "-m", self.peer.module, "publish", "--n", str(n)]
        if rate:
            command += ["--rate", str(rate)]
        if delay_s:
            command += ["--delay-s", str(delay_s)]
        if warm:
            command.append("--warm")
        timeout = 60 + (n / rate if rate else n / 500)
        process = await asyncio.create_subprocess_exec(
            *command,
            env=self.env(),
            cwd=str(ROOT),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.label}: publishing {n} took over {timeout:g} s") from None
        finally:
            await stop_group(process, timeout=5)
        if process.returncode != 0:
            raise RuntimeError(f"{self.label}: publisher failed: {err.decode()[-2000:]}")
        return float(json.loads(out.decode().strip().splitlines()[-1])["seconds"])

    async def wait_depth(self, queue: str, expected: int, timeout: float = 30.0) -> int:
        """Wait until ``queue`` holds ``expected`` ready messages (publishes without confirms
        may still be on their way); the last count seen."""
        deadline = time.monotonic() + timeout
        while True:
            depth = await queue_ready(queue) or 0
            if depth >= expected or time.monotonic() > deadline:
                return depth
            await asyncio.sleep(0.5)

    async def progress(self) -> str:
        ready = await queue_ready(self.queue)
        return f"{await super().progress()}, {ready} still ready in {self.queue}"

    async def start_worker(self) -> None:
        command = self.peer.worker_command(self.queue, self.settings)
        self.worker = await spawn(command, self.env(), self.log)

    async def close(self) -> None:
        try:
            await self.stop_worker()
        finally:
            queues, exchanges = self.peer.declared(self.queue)
            await delete_names(queues, exchanges)


def ours_toml(handler: str, *, concurrency: int | None, extra: str = "") -> str:
    lines = [f"[functions.{NOOP}]", f'handler = "{handler}"', "timeout = 60"]
    if concurrency is not None:
        lines.append(f"concurrency = {concurrency}")
    return "\n".join(lines) + "\n" + extra


class OursRun(Run):
    """asyncinvoke: a fresh namespace, ``python -m asyncinvoke worker`` with a functions file."""

    def __init__(
        self,
        workdir: Path,
        n: int,
        *,
        label: str = "asyncinvoke",
        handler: str = "tests.bench.peers.ours:noop",
        concurrency: int | None = 200,
        toml_extra: str = "",
        env: dict[str, str] | None = None,
        results: bool = False,
    ):
        self.space = Namespace("-".join(label.split()))
        super().__init__(workdir, self.space.ns, n)
        self.label = label
        # With ``results``, success records go to the durable quorum queue {ns}.results.
        self.results = self.space.queue_name("results") if results else None
        if self.results:
            toml_extra += f'on_success = "queue:{self.results}"\n'
        self.config = workdir / f"{self.space.ns}.toml"
        self.config.write_text(ours_toml(handler, concurrency=concurrency, extra=toml_extra))
        self.extra_env = env or {}
        self.client: Client | None = None

    async def declare(self) -> None:
        """What the worker declares at start, so that producers can publish before it runs."""
        await self.space.declare(functions.load(self.config).functions.values())
        if self.results:
            connection = await asyncio.wait_for(aio_pika.connect(AMQP_URL), 30)
            try:
                channel = await connection.channel()
                await channel.declare_queue(self.results, durable=True, arguments=QUORUM)
            finally:
                await connection.close()

    async def connect(self) -> Client:
        if self.client is None:
            client = Client(settings=self.space.settings)
            await asyncio.wait_for(client.connect(), 30)
            self.client = client
        return self.client

    async def publish(
        self, n: int, *, rate: float = 0, delay_s: float = 0, warm: bool = False
    ) -> float:
        client = await self.connect()
        started = time.perf_counter()
        timeout = 60 + (n / rate if rate else n / 500)
        async with asyncio.timeout(timeout):
            if warm:
                await client.invoke(NOOP, -1)
            elif rate:
                await paced_invokes(client, n, rate)
            else:
                await client.invoke_many([(NOOP, 0)] * n, delay=delay_s)
        return time.perf_counter() - started

    async def start_worker(self) -> None:
        env = self.space.env(**self.probe_env(), **self.extra_env)
        command = [sys.executable, "-m", "asyncinvoke", "worker", "--config", str(self.config)]
        self.worker = await spawn(command, env, self.log)

    async def close(self) -> None:
        try:
            await self.stop_worker()
        finally:
            if self.client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.client.close(), 10)
                self.client = None
            await self.space.cleanup()


async def paced_invokes(client: Client, n: int, rate: float) -> None:
    """``n`` invokes at ``rate`` per second, each carrying its send time; confirms overlap."""
    started = time.perf_counter()
    sent: list[asyncio.Task[str]] = []
    for index in range(n):
        wait = started + index / rate - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        sent.append(asyncio.create_task(client.invoke(NOOP, time.time_ns())))
    await asyncio.gather(*sent)
