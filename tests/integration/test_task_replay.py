"""A task-mode invocation replayed from the failure queue is a new attempt of the same task,
on both stores; a plain duplicate of it, or any copy of a task that succeeded, never runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import msgpack
import pytest

from asyncinvoke import Client, dlq
from asyncinvoke.dlq.records import Selector
from asyncinvoke.settings import Settings
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import Task
from tests.conftest import Namespace, running_worker
from tests.support import handlers
from tests.support.task_stores import KINDS, task_store_url

FUNCTIONS = """
    [functions.picky]
    handler = "tests.support.handlers:refuse_first"
    task_mode = true

    [functions.echo]
    handler = "tests.support.handlers:echo"
    task_mode = true
"""


@pytest.fixture(params=KINDS)
async def task_settings(
    request: pytest.FixtureRequest, namespace: Namespace, tmp_path: Path
) -> AsyncIterator[Settings]:
    async with task_store_url(request.param, tmp_path) as url:
        yield namespace.settings.with_overrides(task_store=url)


async def _until_status(client: Client, task_id: str, status: Status, timeout: float = 20) -> Task:
    store = await client.tasks()
    async with asyncio.timeout(timeout):
        while True:
            task = await store.get(task_id)
            if task is not None and task.status is status:
                return task
            await asyncio.sleep(0.02)


async def _settled_behind(client: Client) -> None:
    """Return once an invocation sent now has run: what was sent before it was taken."""
    marker = await client.invoke("echo", "marker", task=True)
    await _until_status(client, marker, Status.SUCCEEDED)


def _runs(task_id: str) -> int:
    return [call[0] for call in handlers.CALLS["picky"]].count(task_id)


async def test_a_replayed_task_runs_again_and_its_events_show_the_replay(
    namespace: Namespace, task_settings: Settings, amqp: aio_pika.abc.AbstractConnection
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    handlers.CALLS["picky"].clear()
    async with running_worker(namespace, functions_file, task_store=task_settings.task_store), \
            Client(settings=task_settings) as client:
        task_id = await client.invoke("picky", {"n": 1}, task=True, id="picky_1")
        failed = await _until_status(client, task_id, Status.FAILED)
        assert failed.error == "NonRetryableError: refused the first time"

        # The same envelope published again by a producer is a duplicate: not run.
        channel = await amqp.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(namespace.names.invoke)
        duplicate = {"v": 1, "id": task_id, "fn": "picky", "payload": {"n": 1}, "task": True}
        await exchange.publish(
            aio_pika.Message(msgpack.packb(duplicate), delivery_mode=2), routing_key="picky"
        )
        await _settled_behind(client)
        assert _runs(task_id) == 1
        assert await (await client.tasks()).get(task_id) == failed

        report = await dlq.replay(task_settings, Selector(ids=frozenset({task_id})))
        assert report.replayed == 1
        succeeded = await _until_status(client, task_id, Status.SUCCEEDED)
        assert _runs(task_id) == 2

        # A task that succeeded never runs again, even for a copy that says it is a replay.
        forged = {**duplicate, "replay": True}
        await exchange.publish(
            aio_pika.Message(msgpack.packb(forged), delivery_mode=2), routing_key="picky"
        )
        await _settled_behind(client)
        after = await (await client.tasks()).get(task_id)
    assert _runs(task_id) == 2
    assert after == succeeded
    statuses = [event.status.value for event in succeeded.events]
    assert statuses == ["Enqueued", "Running", "Failed", "Enqueued", "Running", "Succeeded"]
    assert "replayed" in succeeded.events[3].detail
    assert succeeded.attempts == 2
    assert succeeded.error is None
    assert failed.ended_at is not None and succeeded.ended_at is not None
    assert succeeded.ended_at > failed.ended_at
    assert msgpack.unpackb(succeeded.result) == "ok on run 2"
