"""``asyncinvoke worker --processes N``: N worker processes under one supervisor.

The supervisor runs no invocations. It starts N children (``asyncinvoke worker
--processes 1``), each with its own connection, and:

- restarts a child that dies, after a backoff, and logs how it died;
- passes SIGTERM on and waits for every child's graceful shutdown;
- speaks to systemd for all of them (so ``NotifyAccess=main`` stays enough): each
  child's sd_notify goes to a socket of the supervisor's, which says READY once every
  child said READY, and WATCHDOG only while every child's own heartbeats are on time;
- serves /metrics summed over the children: they write prometheus-client's
  multiprocess files into a directory of the supervisor's. A dead child's counters stay
  in the sum (its files remain), so totals never go backwards; its live gauges go.

A child notices the supervisor's death (the read end of a pipe, passed down, reaches
end of file) and shuts down gracefully: no orphan consumes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess

from asyncinvoke.errors import AsyncInvokeError
from asyncinvoke.metrics import Metrics, serve_health
from asyncinvoke.observability import describe_exit, get_logger
from asyncinvoke.settings import Settings
from asyncinvoke.systemd import Notifier
from asyncinvoke.worker import Worker

PARENT_FD_ENV = "ASYNCINVOKE_SUPERVISOR_FD"
# A child's heartbeat period when systemd sets no watchdog: the supervisor still wants
# to know its children's loops turn (/readyz says so).
DEFAULT_CHILD_WATCHDOG_S = 10.0
RESTART_INITIAL_S = 0.5
RESTART_MAX_S = 30.0
# A child that ran this long before it died starts its backoff afresh.
STABLE_S = 60.0
# After SIGTERM a child has the grace period, then up to 5 s to return what is left to
# its queue; past this margin on top it is killed.
KILL_MARGIN_S = 15.0
SAMPLE_EVERY_S = 1.0
_UCRED = struct.Struct("3i")  # pid, uid, gid of SCM_CREDENTIALS

log = get_logger(component="supervisor")


def restart_delay(quick_deaths: int) -> float:
    """Backoff before the restart of a child that died ``quick_deaths`` times in a row
    soon after its start (1 the first time): 0.5 s, 1 s, 2 s ... up to 30 s."""
    return float(min(RESTART_MAX_S, RESTART_INITIAL_S * 2 ** max(0, quick_deaths - 1)))


@dataclass
class Child:
    """One worker process slot: what the supervisor heard from its current process."""

    index: int
    process: asyncio.subprocess.Process | None = None
    socket: socket.socket | None = None
    started_at: float = 0.0  # time.monotonic()
    ready: bool = False
    last_beat: float | None = None
    quick_deaths: int = 0
    deaths: list[str] = field(default_factory=list)

    def not_ready(self, now: float, watchdog_s: float) -> str | None:
        """Why this child cannot work now, or None."""
        if self.process is None or self.process.returncode is not None:
            return "restarting"
        if not self.ready:
            return "starting"
        if self.last_beat is None or now - self.last_beat > watchdog_s:
            return "heartbeat overdue (its event loop is stuck?)"
        return None

    def heard(self, datagram: bytes, now: float) -> None:
        for line in datagram.decode(errors="replace").splitlines():
            if line == "READY=1":
                self.ready = True
                self.last_beat = now
            elif line == "WATCHDOG=1":
                self.last_beat = now
            elif line == "STOPPING=1":
                self.ready = False


class SummedMetrics:
    """/metrics of the supervisor: every child's values summed, and its own."""

    def __init__(self, directory: str, processes: int):
        self.registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            self.registry, path=directory
        )
        # The supervisor's own metrics are ordinary (in-process) ones.
        self.own = CollectorRegistry()
        self.restarts = Counter(
            "asyncinvoke_worker_restarts",
            "Worker processes the supervisor restarted after they died.",
            registry=self.own,
        )
        self.ready = Gauge(
            "asyncinvoke_worker_processes_ready",
            "Worker processes ready now.",
            registry=self.own,
        )
        self.configured = Gauge(
            "asyncinvoke_worker_processes",
            "Worker processes the supervisor keeps running.",
            registry=self.own,
        )
        self.configured.set(processes)

    def render(self) -> bytes:
        return generate_latest(self.registry) + generate_latest(self.own)

    @property
    def broker_node(self) -> str | None:
        """None: each worker process has a node of its own (the metric counts them)."""
        return None


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        *,
        config_path: str,
        only: list[str] | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        notifier: Notifier | None = None,
    ):
        self.settings = settings
        self.config_path = config_path
        self.only = only or []
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.notifier = notifier or Notifier()
        self.child_watchdog_s = self.notifier.watchdog_s or DEFAULT_CHILD_WATCHDOG_S
        self.children = [Child(index) for index in range(settings.processes)]
        self.stopping = False
        self.announced = False  # every child was ready once: READY went to systemd
        self.failure: str | None = None
        self._stop = asyncio.Event()
        self._directory = ""
        self._parent_read = -1
        self._parent_write = -1
        self._metrics: SummedMetrics | None = None

    # -- the children ----------------------------------------------------------------

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "asyncinvoke", "worker", "--processes", "1",
                   "--config", self.config_path,
                   "--shutdown-grace", repr(self.settings.shutdown_grace_s)]  # fmt: skip
        for name in self.only:
            command += ["--function", name]
        return command

    def child_env(self, address: str) -> dict[str, str]:
        env = {
            **os.environ,
            "NOTIFY_SOCKET": address,
            "WATCHDOG_USEC": str(round(self.child_watchdog_s * 1_000_000)),
            "PROMETHEUS_MULTIPROC_DIR": self._directory,
            PARENT_FD_ENV: str(self._parent_read),
            "ASYNCINVOKE_PROCESSES": "1",
        }
        env.pop("WATCHDOG_PID", None)  # the child's heartbeats are for us, whoever it is
        return env

    async def _spawn(self, child: Child) -> None:
        loop = asyncio.get_running_loop()
        name = f"asyncinvoke-{os.getpid()}-{child.index}-{secrets.token_hex(6)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + name)  # abstract: nothing on disk to clean up, or to make writable
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setblocking(False)
        child.socket = sock
        child.ready = False
        child.last_beat = None
        child.started_at = time.monotonic()
        child.process = None
        child.process = await asyncio.create_subprocess_exec(
            *self.command(),
            env=self.child_env("@" + name),
            stdin=asyncio.subprocess.DEVNULL,
            pass_fds=(self._parent_read,),
        )
        loop.add_reader(sock.fileno(), self._on_notify, child)
        log.info("worker_process_started", process=child.index, pid=child.process.pid)

    def _on_notify(self, child: Child) -> None:
        """Datagrams on a child's socket; only its own process is believed."""
        sock, process = child.socket, child.process
        if sock is None or process is None:
            return
        while True:
            try:
                data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                return
            sender = next(
                (
                    _UCRED.unpack(cmsg_data[: _UCRED.size])[0]
                    for level, kind, cmsg_data in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
                ),
                None,
            )
            if sender == process.pid:
                was_ready = child.ready
                child.heard(data, time.monotonic())
                if child.ready and not was_ready:
                    log.info("worker_process_ready", process=child.index, pid=process.pid)
                    self._announce_if_all_ready()

    def _forget(self, child: Child) -> None:
        """The child's process ended: stop listening, drop its live gauges."""
        if child.socket is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(child.socket.fileno())
            child.socket.close()
            child.socket = None
        child.ready = False
        if child.process is not None:
            prometheus_multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                child.process.pid, self._directory
            )

    async def _keep(self, child: Child) -> None:
        """Run the child's slot: start a process, and another after each death."""
        while not self.stopping:
            try:
                await self._spawn(child)
                assert child.process is not None
                how = describe_exit(await child.process.wait())
            except OSError as exc:  # no process at all: out of memory or processes
                how = f"could not be started ({exc})"
            self._forget(child)
            if self.stopping:
                return
            pid = child.process.pid if child.process else None
            uptime_s = time.monotonic() - child.started_at
            child.deaths.append(how)
            if not self.announced:
                # Not all up yet even once: a bad file, a handler that cannot be imported,
                # no broker. Restarting would only loop; say why and end (systemd retries).
                self.failure = (
                    f"worker process {child.index} {how} before it was ready "
                    "(its log lines above say why)"
                )
                log.error("worker_process_failed_to_start", process=child.index,
                          pid=pid, exit=how)  # fmt: skip
                self._stop.set()
                return
            child.quick_deaths = 1 if uptime_s >= STABLE_S else child.quick_deaths + 1
            delay = restart_delay(child.quick_deaths)
            log.error("worker_process_died", process=child.index, pid=pid,
                      exit=how, uptime_s=round(uptime_s, 1), restart_in_s=delay)  # fmt: skip
            if self._metrics is not None:
                self._metrics.restarts.inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    # -- readiness, systemd ----------------------------------------------------------

    def not_ready(self) -> list[str]:
        now = time.monotonic()
        reasons = ["stopping"] if self.stopping else []
        for child in self.children:
            why = child.not_ready(now, self.child_watchdog_s)
            if why is not None:
                pid = child.process.pid if child.process else "-"
                reasons.append(f"worker process {child.index} (pid {pid}): {why}")
        return reasons

    def ready_count(self) -> int:
        now = time.monotonic()
        return sum(c.not_ready(now, self.child_watchdog_s) is None for c in self.children)

    def status(self) -> str:
        restarts = sum(len(child.deaths) for child in self.children)
        return (
            f"{self.ready_count()} of {len(self.children)} worker processes ready; "
            f"{restarts} restarted"
        )

    def _announce_if_all_ready(self) -> None:
        if self.announced or self.stopping or self.not_ready():
            return
        self.announced = True
        self.notifier.notify("READY=1", f"STATUS={self.status()}")
        log.info("supervisor_ready", processes=len(self.children),
                 pids=[c.process.pid for c in self.children if c.process])  # fmt: skip

    async def _feed_watchdog(self) -> None:
        """WATCHDOG=1 to systemd only while every child is ready and its heartbeats on
        time: one stuck or dead child, for longer than WatchdogSec, restarts the unit."""
        if self.notifier.watchdog_s is None:
            return
        while True:
            if self.announced and not self.not_ready():
                self.notifier.notify("WATCHDOG=1", f"STATUS={self.status()}")
            else:
                self.notifier.notify(f"STATUS={self.status()}")
            await asyncio.sleep(self.notifier.watchdog_s / 2)

    # -- run --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Start the children, serve until SIGTERM/SIGINT (or ``stop``), stop them all;
        the exit status (1 when a child could not start or did not stop cleanly)."""
        loop = asyncio.get_running_loop()
        if stop is not None:
            self._stop = stop
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        self._directory = tempfile.mkdtemp(prefix="asyncinvoke-metrics-")
        self._parent_read, self._parent_write = os.pipe()
        self._metrics = SummedMetrics(self._directory, len(self.children))
        self._metrics.ready.set_function(self.ready_count)
        keepers = [asyncio.create_task(self._keep(child)) for child in self.children]
        background = [asyncio.create_task(self._feed_watchdog())]
        health = None
        try:
            if self.metrics_port is not None:
                health = await serve_health(
                    self._metrics, self.not_ready, self.metrics_host, self.metrics_port
                )
            await self._stop.wait()
        finally:
            for task in background:
                task.cancel()
            clean = await self._shutdown(keepers)
            if health is not None:
                await health.cleanup()
            os.close(self._parent_write)
            os.close(self._parent_read)
            shutil.rmtree(self._directory, ignore_errors=True)
        if self.failure is not None:
            raise AsyncInvokeError(self.failure)
        return 0 if clean else 1

    async def _shutdown(self, keepers: list[asyncio.Task[None]]) -> bool:
        """SIGTERM to every child, then wait for each to finish its graceful shutdown;
        whether all ended with status 0."""
        self.stopping = True
        self._stop.set()
        self.notifier.notify("STOPPING=1", f"STATUS=stopping {len(self.children)} processes")
        log.info("supervisor_stopping", processes=len(self.children))
        running = [
            child.process for child in self.children
            if child.process is not None and child.process.returncode is None
        ]  # fmt: skip
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(process.wait()) for process in running]
        clean = True
        if waits:
            _, late = await asyncio.wait(waits, timeout=self.settings.shutdown_grace_s
                                         + KILL_MARGIN_S)  # fmt: skip
            for process in running:
                if process.returncode is None:
                    log.error("worker_process_killed", pid=process.pid,
                              reason="did not stop within the grace period")  # fmt: skip
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            if late:
                await asyncio.wait(late, timeout=10)
            clean = all(process.returncode == 0 for process in running)
        await asyncio.wait(keepers, timeout=10)
        for task in keepers:
            task.cancel()
        for child in self.children:
            self._forget(child)
        log.info("supervisor_stopped", clean=clean)
        return clean


# -- the child's side ------------------------------------------------------------------


def parent_fd() -> int | None:
    """The pipe from a supervisor, when this worker process runs under one."""
    raw = os.environ.pop(PARENT_FD_ENV, None)
    return int(raw) if raw and raw.isdigit() else None


async def run_supervised(worker: Worker, fd: int) -> None:
    """Run a worker under a supervisor: stop gracefully when the supervisor is gone (the
    pipe reaches end of file), and keep sampled gauges written for it to sum."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def supervisor_gone() -> None:
        loop.remove_reader(fd)
        log.error("supervisor_gone", pid=os.getpid(), action="stopping")
        stop.set()

    loop.add_reader(fd, supervisor_gone)
    sampler = asyncio.create_task(_sample(worker.metrics))
    try:
        await worker.run(stop)
    finally:
        sampler.cancel()
        with contextlib.suppress(Exception):
            loop.remove_reader(fd)
        os.close(fd)


async def _sample(metrics: Metrics) -> None:
    while True:
        metrics.sample()
        await asyncio.sleep(SAMPLE_EVERY_S)
