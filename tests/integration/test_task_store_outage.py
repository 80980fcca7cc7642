"""A task store that is down for a while (here: a SQLite file another process keeps
locked; PostgreSQL restarting is tests/chaos/test_postgres_restart.py) is an outage, not
the invocation's fault: calls wait it out (tasks/retrying.py), /readyz says why the worker
is not ready meanwhile, and a delivery that outlasts ASYNCINVOKE_TASK_STORE_RETRY goes
back to its queue as a new message. Nothing becomes a failure record.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import msgpack
import pytest

from asyncinvoke import Client, topology
from asyncinvoke.errors import TaskStoreUnavailable
from asyncinvoke.gateway import Gateway
from asyncinvoke.gateway.fcapi import API_PREFIX
from asyncinvoke.tasks import sqlite as sqlite_store
from asyncinvoke.tasks.postgres import PostgresTaskStore
from asyncinvoke.tasks.retrying import RetryingTaskStore
from asyncinvoke.tasks.sqlite import SqliteTaskStore
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import Claim, ClaimResult, Task
from asyncinvoke.worker import Worker
from tests.conftest import AMQP_URL, Namespace
from tests.support import handlers

NOW = 1_700_000_000_000
# SQLite waits this long for a lock before it calls the file busy (30 s in production).
SHORT_BUSY_TIMEOUT_MS = 200


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", SHORT_BUSY_TIMEOUT_MS)


class FileLock:
    """Another process's write transaction on the SQLite file, held until released."""

    def __init__(self, path: str):
        self.conn = sqlite3.connect(path, isolation_level=None)

    def __enter__(self) -> FileLock:
        self.conn.execute("BEGIN EXCLUSIVE")
        return self

    def release(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def __exit__(self, *_: object) -> None:
        self.release()
        self.conn.close()


@pytest.fixture
def free_port() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield port


async def test_a_locked_sqlite_file_is_unavailable_not_a_broken_write(
    tmp_path: Path, short_busy_timeout: None
) -> None:
    path = str(tmp_path / "tasks.db")
    store = SqliteTaskStore(path)
    await store.open()
    try:
        with FileLock(path), pytest.raises(TaskStoreUnavailable, match="database is locked") \
                as raised:
            await store.create("t1", "fn", None, NOW)
    finally:
        await store.close()
    assert raised.value.store == path


async def test_postgres_refusing_connections_is_unavailable_and_the_password_is_not_shown(
    free_port: int,
) -> None:
    store = PostgresTaskStore(f"postgresql://app:s3cret@127.0.0.1:{free_port}/tasks")
    with pytest.raises(TaskStoreUnavailable) as raised:
        await store.open()
    assert "s3cret" not in str(raised.value)
    assert f"127.0.0.1:{free_port}" in str(raised.value)


async def test_a_call_waits_out_the_outage_and_says_why_meanwhile(
    tmp_path: Path, short_busy_timeout: None
) -> None:
    path = str(tmp_path / "tasks.db")
    store = RetryingTaskStore(SqliteTaskStore(path), retry_s=30)
    await store.open()
    try:
        await store.create("t1", "fn", None, NOW)
        with FileLock(path) as lock:
            claim = asyncio.create_task(store.claim("t1", 0, NOW + 1, 60_000))
            async with asyncio.timeout(10):
                while store.outage is None:
                    await asyncio.sleep(0.02)
            assert "database is locked" in store.outage
            assert not claim.done()
            lock.release()
            claimed = await asyncio.wait_for(claim, 10)
        assert claimed.task is not None and claimed.task.status is Status.RUNNING
        assert store.outage is None
    finally:
        await store.close()


async def test_a_call_gives_up_after_retry_s_and_a_probe_notices_the_store_is_back(
    tmp_path: Path, short_busy_timeout: None
) -> None:
    path = str(tmp_path / "tasks.db")
    store = RetryingTaskStore(SqliteTaskStore(path), retry_s=0.5)
    await store.open()
    try:
        with FileLock(path):
            started = time.monotonic()
            with pytest.raises(TaskStoreUnavailable):
                await store.create("t1", "fn", None, NOW)
            assert time.monotonic() - started >= 0.5
            assert store.outage is not None
        async with asyncio.timeout(10):  # nobody calls: only the probe can see it
            while store.outage is not None:
                await asyncio.sleep(0.05)
        assert await store.get("t1") is None
    finally:
        await store.close()


async def _readyz(port: int) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}/readyz") as response:
        return response.status, await response.json()


async def test_a_worker_waits_out_a_store_outage_and_is_not_ready_meanwhile(
    namespace: Namespace, tmp_path: Path, short_busy_timeout: None, free_port: int
) -> None:
    path = str(tmp_path / "tasks.db")
    handlers.CALLS["echo"].clear()
    functions_file = namespace.functions("""
        [functions.echo]
        handler = "tests.support.handlers:echo"
        task_mode = true
        delivery_limit = 1
    """)
    settings = namespace.settings.with_overrides(
        task_store=f"sqlite:///{path}", task_store_retry_s=1.0
    )
    worker = Worker(settings, functions_file, metrics_port=free_port)
    await worker.start()
    try:
        async with Client(settings=settings) as client:
            assert (await _readyz(free_port))[0] == 200
            with FileLock(path) as lock:
                # Longer than ASYNCINVOKE_TASK_STORE_RETRY: the delivery goes back to its
                # queue (fresh) at least once before the store is back.
                task_id = "through_outage"
                await _publish(namespace, {"v": 1, "id": task_id, "fn": "echo", "payload": "x",
                                           "task": True})
                async with asyncio.timeout(15):
                    while (answer := await _readyz(free_port))[0] == 200:
                        await asyncio.sleep(0.05)
                status, body = answer
                assert status == 503
                assert any("task store" in str(reason) and "locked" in str(reason)
                           for reason in body["reasons"])
                await asyncio.sleep(2.5)
                lock.release()
            store = await client.tasks()
            async with asyncio.timeout(20):
                while (task := await store.get(task_id)) is None or \
                        task.status is not Status.SUCCEEDED:
                    await asyncio.sleep(0.05)
            async with asyncio.timeout(10):
                while (await _readyz(free_port))[0] != 200:
                    await asyncio.sleep(0.05)
    finally:
        await worker.stop()
    assert [call[0] for call in handlers.CALLS["echo"]] == [task_id]
    assert await _depth(namespace, namespace.names.failed) == 0
    assert await _depth(namespace, namespace.names.dead) == 0


async def _publish(namespace: Namespace, envelope: dict[str, object]) -> None:
    """As a plain AMQP producer: the task is first written by the worker."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(namespace.names.invoke)
        await exchange.publish(
            aio_pika.Message(msgpack.packb(envelope), delivery_mode=2),
            routing_key=str(envelope["fn"]),
        )
    finally:
        await connection.close()


async def _depth(namespace: Namespace, queue: str) -> int | None:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        return await topology.queue_depth(connection, queue)
    finally:
        await connection.close()


async def test_the_gateway_answers_503_and_is_not_ready_while_the_store_is_down(
    namespace: Namespace, tmp_path: Path, short_busy_timeout: None
) -> None:
    path = str(tmp_path / "tasks.db")
    functions_file = namespace.functions("""
        [functions.echo]
        handler = "tests.support.handlers:echo"
        task_mode = true
    """)
    settings = namespace.settings.with_overrides(
        task_store=f"sqlite:///{path}", task_store_retry_s=0.5
    )
    gateway = Gateway(settings, functions_file, {})
    await gateway.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(gateway.url) as http:
            with FileLock(path) as lock:
                async with http.get(f"{API_PREFIX}/echo/async-tasks/some_task") as refused:
                    status, body = refused.status, await refused.json()
                async with http.get("/readyz") as readyz:
                    ready_status, ready = readyz.status, await readyz.json()
                lock.release()
            async with asyncio.timeout(10):  # the probe sees the store back
                while gateway.not_ready():
                    await asyncio.sleep(0.05)
            async with http.get(f"{API_PREFIX}/echo/async-tasks/some_task") as after:
                after_status = after.status
    finally:
        await gateway.stop()
    assert status == 503
    assert body["Code"] == "ServiceUnavailable"
    assert "task store" in body["Message"] and "locked" in body["Message"]
    assert ready_status == 503
    assert any(reason.startswith("task store") for reason in ready["reasons"])
    assert after_status == 404


class LosesTheFirstAnswer(SqliteTaskStore):
    """Each kind of write commits, then loses its first answer, as when the connection
    is cut between the server's COMMIT and its reply."""

    lost: set[str]

    def _lose_once(self, write: str) -> None:
        if write not in self.lost:
            self.lost.add(write)
            raise TaskStoreUnavailable(self.path, "connection lost after COMMIT")

    async def create(
        self, task_id: str, function: str, payload: bytes | None, now_ms: int, detail: str = ""
    ) -> Task:
        created = await super().create(task_id, function, payload, now_ms, detail)
        self._lose_once("create")
        return created

    async def claim(self, task_id: str, attempt: int, now_ms: int, lease_ms: int) -> ClaimResult:
        claimed = await super().claim(task_id, attempt, now_ms, lease_ms)
        self._lose_once("claim")
        return claimed

    async def transition(self, *args: Any, **kwargs: Any) -> Task | None:
        moved = await super().transition(*args, **kwargs)
        self._lose_once("transition")
        return moved

    async def request_stop(self, task_id: str, now_ms: int) -> Task:
        stopped = await super().request_stop(task_id, now_ms)
        self._lose_once("request_stop")
        return stopped


async def test_a_write_that_committed_and_lost_its_answer_is_recognised_as_ours(
    tmp_path: Path,
) -> None:
    raw = LosesTheFirstAnswer(str(tmp_path / "tasks.db"))
    raw.lost = set()
    store = RetryingTaskStore(raw, retry_s=10)
    await store.open()
    try:
        # Tried again, each would find its own work done: TaskExists, BUSY (a live lease),
        # None (not allowed from Succeeded), TaskFinished.
        created = await store.create("t1", "fn", b"\x90", NOW, "accepted")
        claimed = await store.claim("t1", 0, NOW + 1, 60_000)
        succeeded = await store.transition("t1", Status.SUCCEEDED, NOW + 2, "attempt 0 ok")
        await store.create("t2", "fn", None, NOW)
        stopped = await store.request_stop("t2", NOW + 3)
    finally:
        await store.close()
    assert raw.lost == {"create", "claim", "transition", "request_stop"}
    assert created.status is Status.ENQUEUED
    assert claimed.claim is Claim.CLAIMED
    assert succeeded is not None and succeeded.status is Status.SUCCEEDED
    assert stopped.status is Status.STOPPED


async def test_a_claim_written_but_unanswered_before_the_outage_is_released_once_it_ends(
    tmp_path: Path,
) -> None:
    """The claim reached the store, its answer was lost, and the store stayed down past
    ASYNCINVOKE_TASK_STORE_RETRY: the delivery goes back to its queue, and the claim,
    which nobody would otherwise end, is released (Retrying) once the store is back, so
    the copy does not find its task orphaned and run alone as a suspect."""
    from asyncinvoke.contract import Envelope
    from asyncinvoke.functions import FunctionSpec
    from asyncinvoke.tasks.tracker import TaskTracker

    tracker = TaskTracker(f"sqlite:///{tmp_path / 'tasks.db'}", retry_s=0.3)
    retrying = _retrying(await tracker.store())
    inner = retrying.store
    real_claim = inner.claim
    down = True
    calls = 0

    async def claim_then_go_down(*args: Any) -> ClaimResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            await real_claim(*args)  # written; the answer is lost with the store
        if down:
            raise TaskStoreUnavailable("sqlite", "the test took it down")
        return await real_claim(*args)

    inner.claim = claim_then_go_down  # type: ignore[method-assign]
    envelope = Envelope(id="unanswered", fn="f", payload=None, created_at=int(time.time() * 1000))
    spec = FunctionSpec("f", handler="m:f", task_mode=True, timeout_s=20.0)
    try:
        with pytest.raises(TaskStoreUnavailable):
            await tracker.claim(envelope, spec, int(time.time() * 1000), alone=False)
        held = await inner.get("unanswered")
        assert held is not None and held.status is Status.RUNNING  # the lost claim holds it
        down = False
        deadline = time.monotonic() + 10
        task = held
        while task.status is Status.RUNNING and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            found = await inner.get("unanswered")
            assert found is not None
            task = found
        assert task.status is Status.RETRYING, task
        assert "was not started" in task.events[-1].detail
    finally:
        await tracker.close()


async def test_a_claim_that_never_reached_the_store_releases_nothing(tmp_path: Path) -> None:
    """The same outage, but the claim was not written: once the store is back, the task
    is left as it was (Enqueued), not moved by a release meant for a claim that isn't."""
    from asyncinvoke.contract import Envelope
    from asyncinvoke.functions import FunctionSpec
    from asyncinvoke.tasks.tracker import TaskTracker

    tracker = TaskTracker(f"sqlite:///{tmp_path / 'tasks.db'}", retry_s=0.3)
    retrying = _retrying(await tracker.store())
    inner = retrying.store

    async def down_claim(*args: Any) -> ClaimResult:
        raise TaskStoreUnavailable("sqlite", "the test took it down")

    inner.claim = down_claim  # type: ignore[method-assign]
    envelope = Envelope(id="unwritten", fn="f", payload=None, created_at=int(time.time() * 1000))
    spec = FunctionSpec("f", handler="m:f", task_mode=True, timeout_s=20.0)
    try:
        with pytest.raises(TaskStoreUnavailable):
            await tracker.claim(envelope, spec, int(time.time() * 1000), alone=False)
        # Nothing happening can only be waited for: three turns of the release's retry.
        await asyncio.sleep(1.5)
        task = await inner.get("unwritten")
        assert task is not None and task.status is Status.ENQUEUED, task
    finally:
        await tracker.close()


def _retrying(store: Any) -> RetryingTaskStore:
    """The tracker's retrying store, under the tracing wrapper (tasks/traced) if any."""
    for _ in range(3):
        if isinstance(store, RetryingTaskStore):
            return store
        store = store.store
    raise AssertionError(f"no RetryingTaskStore in {store!r}")
