"""``asyncinvoke worker --processes 2``: a supervisor over two worker processes, for real.

One test walks the whole life, since every step needs the processes up (start-up is the
slow part): READY only once both children are ready, work spread over both, /metrics
summing both, a kill -9 restarted (and the dead child's counts kept in the sum), the
watchdog withheld while a child is stuck, SIGTERM passed on to both.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from asyncinvoke import Client, contract
from asyncinvoke.settings import redact_url
from tests.conftest import AMQP_URL, Namespace, WorkerProcess, collect, declare_queue

CHILD_WATCHDOG_USEC = 1_000_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Notifications:
    """The datagrams a fake systemd receives on NOTIFY_SOCKET."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[str] = []

    async def until(self, line: str, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not any(line in message for message in self.received):
                self.received.append((await loop.sock_recv(self.sock, 4096)).decode())

    def drain(self) -> None:
        """Read what is queued, so that ``gather`` sees only what comes next."""
        while True:
            try:
                self.received.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return

    async def gather(self, seconds: float) -> list[str]:
        """Everything received in the next ``seconds``."""
        loop = asyncio.get_running_loop()
        got: list[str] = []
        try:
            async with asyncio.timeout(seconds):
                while True:
                    got.append((await loop.sock_recv(self.sock, 4096)).decode())
        except TimeoutError:
            pass
        self.received += got
        return got


def _events(worker: WorkerProcess, event: str) -> list[dict[str, object]]:
    found = []
    for line in worker.lines:
        if f'"{event}"' in line:
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


async def _until_logged(worker: WorkerProcess, event: str, count: int, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while len(_events(worker, event)) < count:
            await asyncio.sleep(0.05)


async def _successes(session: aiohttp.ClientSession, port: int) -> float:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "asyncinvoke_invocations_total"
                and sample.labels.get("function") == "whose"
                and sample.labels.get("outcome") == "success"
            ):
                total += sample.value
    return total


async def _until_successes(session: aiohttp.ClientSession, port: int, expected: float) -> None:
    seen = -1.0
    try:
        async with asyncio.timeout(30):
            while (seen := await _successes(session, port)) != expected:
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"/metrics summed {seen} successes, expected {expected}") from None


async def _connected(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """asyncinvoke_broker_connected by node, as the supervisor sums it."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    return {
        sample.labels.get("node", ""): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "asyncinvoke_broker_connected"
    }


async def _readyz(session: aiohttp.ClientSession, port: int) -> int:
    async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
        return response.status


async def test_two_worker_processes_under_one_supervisor(
    namespace: Namespace, amqp, tmp_path: Path
) -> None:
    results = namespace.queue_name("results")
    await declare_queue(amqp, results)
    functions_file = namespace.functions(f"""
        [functions.whose]
        handler = "tests.support.handlers:whose"
        on_success = "queue:{results}"
        concurrency = 4
    """)
    systemd = Notifications(tmp_path / "notify.sock")
    port = _free_port()
    worker = WorkerProcess(
        namespace, functions_file.path, "--processes", "2", "--metrics-port", str(port),
        NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC=str(CHILD_WATCHDOG_USEC),
    )  # fmt: skip
    try:
        # Generous bounds throughout: three interpreters start on a loaded 2-core machine.
        await worker.start(timeout=90)  # returns when a child logged worker_started
        await systemd.until("READY=1", timeout=90)
        await _until_logged(worker, "supervisor_ready", 1, timeout=15)  # lines lag datagrams
        ready = _events(worker, "worker_process_ready")
        assert len({event["pid"] for event in ready}) == 2  # READY came after both
        assert worker.process is not None
        assert all(event["pid"] != worker.process.pid for event in ready)
        await systemd.until("WATCHDOG=1")

        async with aiohttp.ClientSession() as session, Client(
            settings=namespace.settings
        ) as client:
            await client.invoke_many([("whose", {"n": n}) for n in range(200)])
            got = await collect(amqp, results, 200, timeout=60)
            pids = {contract.unpack(m.body)["responsePayload"] for m in got}
            children = {int(str(event["pid"])) for event in ready}
            assert pids <= children
            await _until_successes(session, port, 200)
            assert await _readyz(session, port) == 200
            # Both worker processes connected to the one node, named without its password.
            node = redact_url(AMQP_URL)
            async with asyncio.timeout(10):
                while (connected := await _connected(session, port)) != {node: 2.0}:
                    await asyncio.sleep(0.2)
            assert "guest:guest" not in str(connected)

            # kill -9 one child: logged with its signal, restarted, its counts kept.
            victim = sorted(children)[0]
            os.kill(victim, signal.SIGKILL)
            await _until_logged(worker, "worker_process_died", 1, timeout=20)
            died = _events(worker, "worker_process_died")[0]
            assert died["pid"] == victim and died["exit"] == "killed by SIGKILL"
            assert await _readyz(session, port) == 503  # restarts after 0.5 s at the soonest
            await _until_logged(worker, "worker_process_ready", 3, timeout=90)
            assert await _readyz(session, port) == 200
            await client.invoke_many([("whose", {"n": n}) for n in range(100)])
            await collect(amqp, results, 100, timeout=60)
            await _until_successes(session, port, 300)

            # A child whose loop stands still: no WATCHDOG=1 to systemd until it moves.
            stuck = int(str(_events(worker, "worker_process_ready")[-1]["pid"]))
            os.kill(stuck, signal.SIGSTOP)
            try:
                await asyncio.sleep(CHILD_WATCHDOG_USEC / 1e6 + 0.5)
                systemd.drain()
                during = await systemd.gather(1.5)
                assert not any("WATCHDOG=1" in message for message in during), during
                assert await _readyz(session, port) == 503
            finally:
                os.kill(stuck, signal.SIGCONT)
            systemd.drain()
            systemd.received.clear()
            await systemd.until("WATCHDOG=1", timeout=30)  # fed again once it moves

        worker.process.terminate()
        await systemd.until("STOPPING=1")
        assert await worker.wait_exit(timeout=30) == 0
        for pid in {int(str(event["pid"])) for event in _events(worker, "worker_process_ready")}:
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
        assert len(_events(worker, "worker_stopped")) == 2  # both shut down gracefully
    finally:
        await worker.kill()
        systemd.sock.close()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True
