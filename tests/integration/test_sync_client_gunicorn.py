"""A real synchronous web app: gunicorn, 2 workers forked after ``--preload``, sharing one
module-level SyncClient that the master already connected (tests/support/wsgi_app.py).
8 threads of requests: every invocation runs, and no process shares a connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from asyncinvoke import contract
from tests.conftest import AMQP_URL, ROOT, Namespace, collect, declare_queue, running_worker
from tests.support.infrastructure import require_tool
from tests.support.sockets import broker_peer_ports, holders_of_connections

THREADS = 8
REQUESTS_PER_THREAD = 40
BROKER_PORT = urlsplit(AMQP_URL).port or 5672


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return dict(orjson.loads(response.read()))


class Gunicorn:
    def __init__(self, namespace: Namespace, port: int):
        self.namespace = namespace
        self.port = port
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.booted: list[int] = []
        self._two_booted = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gunicorn", "--preload", "--workers", "2",
            "--worker-class", "gthread", "--threads", "4", "--bind", f"127.0.0.1:{self.port}",
            "--graceful-timeout", "5", "tests.support.wsgi_app:application",
            env=self.namespace.env(WSGI_APP_CONNECT_BEFORE_FORK="1"),
            cwd=str(ROOT),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        try:
            async with asyncio.timeout(timeout):
                await self._two_booted.wait()
                while not await asyncio.to_thread(self._answers):
                    await asyncio.sleep(0.1)
        except TimeoutError:
            pytest.fail("gunicorn did not start:\n" + "\n".join(self.lines[-20:]))

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if "Booting worker with pid:" in line:
                self.booted.append(int(line.rsplit(":", 1)[1]))
                if len(self.booted) >= 2:
                    self._two_booted.set()

    def _answers(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    async def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        return self.process.returncode


@pytest.mark.timeout(90)
async def test_gunicorn_workers_share_one_sync_client_per_process_and_every_invocation_runs(
    namespace: Namespace, amqp: Any
) -> None:
    require_tool("rabbitmqctl")
    results = namespace.queue_name("results")
    await declare_queue(amqp, results)
    functions_file = namespace.functions(f"""
        [functions.work]
        handler = "tests.support.handlers:echo"
        on_success = "queue:{results}"
    """)
    server = Gunicorn(namespace, _free_port())
    async with running_worker(namespace, functions_file):
        await server.start()
        try:
            base = f"http://127.0.0.1:{server.port}"
            urls = [f"{base}/{thread}-{n}" for thread in range(THREADS)
                    for n in range(REQUESTS_PER_THREAD)]
            with ThreadPoolExecutor(THREADS) as pool:
                answers = await asyncio.to_thread(lambda: list(pool.map(_get, urls)))
            assert server.process is not None
            master = server.process.pid
            workers = {answer["pid"] for answer in answers}
            assert {answer["master"] for answer in answers} == {master}
            assert workers == set(server.booted), "both workers should have served requests"

            # Every connection of the three processes to the broker, and who holds it.
            pids = [master, *workers]
            held = await asyncio.to_thread(holders_of_connections, pids, BROKER_PORT)
            listed = await asyncio.to_thread(broker_peer_ports)
            assert set(held) <= listed, "a socket the broker does not list as a connection"
            assert all(len(holders) == 1 for holders in held.values()), (
                f"a connection held by more than one process (fork): {held}"
            )
            per_process = {pid: sum(pid in h for h in held.values()) for pid in pids}
            # The master connected before the fork and keeps its connection; each worker
            # opened exactly one of its own for all its threads.
            assert per_process == {pid: 1 for pid in pids}, per_process

            records = await collect(amqp, results, len(answers), timeout=30)
            ran = {contract.unpack(m.body)["requestContext"]["requestId"] for m in records}
            assert ran == {answer["id"] for answer in answers}
        finally:
            code = await server.stop()
    assert code == 0, "gunicorn did not exit cleanly:\n" + "\n".join(server.lines[-20:])
