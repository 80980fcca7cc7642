"""Task mode with text a store cannot take as it is: PostgreSQL refuses NUL in text and
JSONB, and no UTF-8 encoder takes a lone surrogate. Such text in an error must not make
the task's write fail (which reran the handler until DeliveryLimitExceeded, the task left
Running): it is stored with U+FFFD in its place, and the task ends as it should.

Each test runs on both stores: SQLite (a file) and PostgreSQL (a database of its own).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import asyncpg
import msgpack
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from asyncinvoke import Client, contract, topology
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import Task
from tests.conftest import (
    Namespace,
    WorkerProcess,
    collect,
    records_of,
    running_worker,
    write_functions,
)
from tests.support import handlers

POSTGRES_DSN = os.environ.get(
    "ASYNCINVOKE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
REPLACED = "\ufffd"


@pytest.fixture(params=["sqlite", "postgresql"])
async def task_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A task store URL: a SQLite file, or a PostgreSQL database made for this test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/tasks.db"
        return
    database = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        yield POSTGRES_DSN.rsplit("/", 1)[0] + f"/{database}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def _until_status(
    client: Client, task_id: str, statuses: set[Status], timeout: float = 20
) -> Task:
    store = await client.tasks()
    task: Task | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                task = await store.get(task_id)
                if task is not None and task.status in statuses:
                    return task
                await asyncio.sleep(0.05)
    except TimeoutError:
        shown = None if task is None else (task.status.value, [e.detail for e in task.events])
        pytest.fail(f"task {task_id} did not reach {statuses} in {timeout} s: {shown}")


async def test_a_nul_in_an_http_functions_error_body_fails_the_task_once(
    namespace: Namespace, task_store: str, amqp: aio_pika.abc.AbstractConnection
) -> None:
    requests: list[bytes] = []

    async def broken(request: web.Request) -> web.Response:
        requests.append(await request.read())
        return web.Response(status=500, body=b"upstream said \x00 and died")

    app = web.Application()
    app.router.add_post("/fn", broken)
    async with TestServer(app, host="127.0.0.1") as server:
        functions_file = namespace.functions(f"""
            [functions.remote]
            url = "{server.make_url('/fn')}"
            task_mode = true
            max_retries = 0
            delivery_limit = 2
        """)
        async with running_worker(namespace, functions_file, task_store=task_store), \
                Client(settings=namespace.settings.with_overrides(task_store=task_store)) \
                as client:
            task_id = await client.invoke("remote", {"n": 1})
            task = await _until_status(client, task_id, {Status.FAILED})
            failures = records_of(await collect(amqp, namespace.names.failed, 1, timeout=20))
    assert len(requests) == 1, "the function ran again: the failed write was taken for poison"
    assert failures[0]["requestContext"]["condition"] == contract.RETRIES_EXHAUSTED
    assert task.error is not None and f"upstream said {REPLACED} and died" in task.error
    assert "\x00" not in task.events[-1].detail
    assert [event.status for event in task.events] == [
        Status.ENQUEUED, Status.RUNNING, Status.FAILED
    ]


async def test_a_lone_surrogate_in_an_exception_is_stored_and_the_retry_succeeds(
    namespace: Namespace, task_store: str
) -> None:
    handlers.CALLS["surrogate"].clear()
    functions_file = namespace.functions("""
        [functions.surrogate]
        handler = "tests.support.handlers:fail_with_lone_surrogate"
        task_mode = true
        max_retries = 2
        delivery_limit = 2
        backoff = { initial = 0.05, multiplier = 1.0, max = 0.05, jitter = 0.0 }
    """)
    async with running_worker(namespace, functions_file, task_store=task_store), \
            Client(settings=namespace.settings.with_overrides(task_store=task_store)) as client:
        task_id = await client.invoke("surrogate", None)
        task = await _until_status(client, task_id, {Status.SUCCEEDED})
    assert [call[1] for call in handlers.CALLS["surrogate"]] == [0, 1]
    retrying = next(event for event in task.events if event.status is Status.RETRYING)
    assert f"cannot read b'\\x80' as {REPLACED}" in retrying.detail
    assert task.error is None
    assert msgpack.unpackb(task.result) == "ok on attempt 1"


async def test_a_nul_in_an_unknown_envelope_key_makes_the_task_invalid_once(
    namespace: Namespace, task_store: str, amqp: aio_pika.abc.AbstractConnection
) -> None:
    functions_file = namespace.functions("""
        [functions.echo]
        handler = "tests.support.handlers:echo"
        task_mode = true
        delivery_limit = 2
    """)
    channel = await amqp.channel(publisher_confirms=True)
    envelope = {"v": 1, "id": "odd_key", "fn": "echo", "payload": None, "task": True,
                "by\x00te": 1}
    async with running_worker(namespace, functions_file, task_store=task_store), \
            Client(settings=namespace.settings.with_overrides(task_store=task_store)) as client:
        exchange = await channel.get_exchange(namespace.names.invoke)
        await exchange.publish(
            aio_pika.Message(msgpack.packb(envelope), delivery_mode=2), routing_key="echo"
        )
        task = await _until_status(client, "odd_key", {Status.INVALID})
        failures = records_of(await collect(amqp, namespace.names.failed, 1, timeout=20))
        # A rerun of the message (a second record) would follow within seconds.
        await asyncio.sleep(2)
        more = await topology.queue_depth(amqp, namespace.names.failed)
    assert failures[0]["requestContext"]["condition"] == contract.INVALID_MESSAGE
    assert more == 0
    assert task.error is not None and f"by{REPLACED}te" in task.error


async def test_a_lone_surrogate_in_an_exception_does_not_break_the_json_log_line(
    namespace: Namespace, tmp_path: Path
) -> None:
    # A worker process logs JSON lines, as in production; the attempt's line carries the
    # error text, and orjson refuses a lone surrogate as the stores do.
    store_url = f"sqlite:///{tmp_path}/tasks.db"
    config = write_functions(tmp_path, """
        [functions.surrogate]
        handler = "tests.support.handlers:fail_with_lone_surrogate"
        task_mode = true
        max_retries = 2
        delivery_limit = 2
        backoff = { initial = 0.05, multiplier = 1.0, max = 0.05, jitter = 0.0 }
    """)
    namespace.function_names.add("surrogate")
    worker = WorkerProcess(namespace, config, ASYNCINVOKE_TASK_STORE=store_url)
    await worker.start()
    try:
        async with Client(settings=namespace.settings.with_overrides(task_store=store_url)) \
                as client:
            task_id = await client.invoke("surrogate", None)
            task = await _until_status(client, task_id, {Status.SUCCEEDED})
    finally:
        await worker.terminate()
    assert task.attempts == 2
    assert [event.status for event in task.events] == [
        Status.ENQUEUED, Status.RUNNING, Status.RETRYING, Status.DEQUEUED, Status.RUNNING,
        Status.SUCCEEDED,
    ]
    assert not [line for line in worker.lines if '"settle_failed"' in line]
    retried = [line for line in worker.lines if '"outcome":"retry"' in line]
    # The log line escapes the surrogate (observability.json_line): its JSON text is \\udc80.
    assert len(retried) == 1 and "cannot read b'\\\\x80' as \\\\udc80" in retried[0], retried
