"""Task mode end to end: each state reached for real, stop, idempotent ids."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import msgpack
import orjson
import pytest

from asyncinvoke import Client
from asyncinvoke.client import TaskExistsError
from asyncinvoke.errors import PublishTimeout
from asyncinvoke.settings import Settings
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import Task, TaskFinished
from asyncinvoke.worker import Worker
from tests.conftest import ROOT, Namespace, collect, declare_queue, records_of, running_worker
from tests.support import handlers
from tests.support.task_stores import KINDS, task_store_url


@pytest.fixture(params=KINDS)
async def task_settings(
    request: pytest.FixtureRequest, namespace: Namespace, tmp_path: Path
) -> AsyncIterator[Settings]:
    """Each test runs on both stores: SQLite, and PostgreSQL (a database of its own)."""
    async with task_store_url(request.param, tmp_path) as url:
        yield namespace.settings.with_overrides(task_store=url)


FUNCTIONS = """
    [functions.echo]
    handler = "tests.support.handlers:echo"
    task_mode = true

    [functions.sleep]
    handler = "tests.support.handlers:sleep"
    task_mode = true

    [functions.sync_sleep]
    handler = "tests.support.handlers:sync_sleep"
    task_mode = true

    [functions.flaky]
    handler = "tests.support.handlers:fail_until"
    task_mode = true
    max_retries = 3
    backoff = { initial = 0.05, multiplier = 1.0, max = 0.05, jitter = 0.0 }

    [functions.old]
    handler = "tests.support.handlers:echo"
    task_mode = true
    max_event_age = 1
"""


async def _until_status(
    client: Client, task_id: str, statuses: set[Status], timeout: float = 15
) -> Task:
    store = await client.tasks()
    async with asyncio.timeout(timeout):
        while True:
            task = await store.get(task_id)
            if task is not None and task.status in statuses:
                return task
            await asyncio.sleep(0.02)


def _statuses(task: Task) -> list[str]:
    return [event.status.value for event in task.events]


async def test_a_retried_task_succeeds_and_its_events_list_retrying(
    namespace: Namespace, task_settings: Settings
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    async with running_worker(namespace, functions_file, task_store=task_settings.task_store), \
            Client(settings=task_settings) as client:
        task_id = await client.invoke("flaky", {"fail_times": 2}, task=True, id="flaky_1")
        task = await _until_status(client, task_id, {Status.SUCCEEDED})
    # Each retry is due 50 ms later: the worker that receives it holds it (Dequeued).
    assert _statuses(task) == [
        "Enqueued", "Running", "Retrying", "Dequeued", "Running", "Retrying", "Dequeued",
        "Running", "Succeeded",
    ]
    assert task.attempts == 3
    assert msgpack.unpackb(task.result) == "ok on attempt 2"
    assert all(
        later.timestamp >= earlier.timestamp
        for earlier, later in zip(task.events, task.events[1:], strict=False)
    )


async def test_a_delayed_task_stopped_before_it_starts_never_runs(
    namespace: Namespace, task_settings: Settings
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    handlers.CALLS["echo"].clear()
    async with running_worker(namespace, functions_file, task_store=task_settings.task_store), \
            Client(settings=task_settings) as client:
        task_id = await client.invoke("echo", "never", delay=2, task=True)
        stopped = await client.stop_task(task_id)
        assert stopped.status is Status.STOPPED
        # Once it falls due the worker takes it from the ladder and acknowledges it unrun.
        control = await client.invoke("echo", "after", delay=2.3, task=True)
        await _until_status(client, control, {Status.SUCCEEDED})
        with pytest.raises(TaskFinished, match="already ended as Stopped"):
            await client.stop_task(task_id)
    assert [call[0] for call in handlers.CALLS["echo"]] == [control]


async def test_a_running_async_handler_is_cancelled_by_stop(
    namespace: Namespace, task_settings: Settings
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    async with running_worker(namespace, functions_file, task_store=task_settings.task_store), \
            Client(settings=task_settings) as client:
        task_id = await client.invoke("sleep", {"seconds": 30}, task=True)
        await _until_status(client, task_id, {Status.RUNNING})
        started = time.monotonic()
        assert (await client.stop_task(task_id)).status is Status.STOPPING
        task = await _until_status(client, task_id, {Status.STOPPED}, timeout=5)
        assert time.monotonic() - started < 2, "the stop was not prompt"
    assert _statuses(task)[-2:] == ["Stopping", "Stopped"]
    assert task.result is None


async def test_a_running_sync_handler_is_stopping_and_its_result_discarded(
    namespace: Namespace, task_settings: Settings
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    async with running_worker(namespace, functions_file, task_store=task_settings.task_store), \
            Client(settings=task_settings) as client:
        task_id = await client.invoke("sync_sleep", {"seconds": 0.5}, task=True)
        await _until_status(client, task_id, {Status.RUNNING})
        assert (await client.stop_task(task_id)).status is Status.STOPPING
        task = await _until_status(client, task_id, {Status.STOPPED})
    assert task.result is None
    assert "result discarded" in task.events[-1].detail


async def test_an_old_task_expires_and_an_invalid_one_is_invalid(
    namespace: Namespace, task_settings: Settings, amqp
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    handlers.CALLS["old"].clear()
    channel = await amqp.channel(publisher_confirms=True)
    async with running_worker(namespace, functions_file, task_store=task_settings.task_store), \
            Client(settings=task_settings) as client:
        exchange = await channel.get_exchange(namespace.names.invoke)
        old = {"v": 1, "id": "too_old", "fn": "old", "payload": None,
               "created_at": time.time_ns() // 1_000_000 - 5000}
        bad = {"v": 1, "id": "bad_task", "fn": "echo", "payload": None, "attempt": "x"}
        for envelope in (old, bad):
            await exchange.publish(
                aio_pika.Message(msgpack.packb(envelope), delivery_mode=2),
                routing_key=str(envelope["fn"]),
            )
        expired = await _until_status(client, "too_old", {Status.EXPIRED})
        invalid = await _until_status(client, "bad_task", {Status.INVALID})
    assert handlers.CALLS["old"] == []
    assert "max_event_age of 1 s" in (expired.error or "")
    assert "'attempt' must be an integer" in (invalid.error or "")


async def test_a_task_waiting_out_its_last_fraction_of_a_second_is_dequeued(
    namespace: Namespace, task_settings: Settings
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    async with running_worker(namespace, functions_file, task_store=task_settings.task_store), \
            Client(settings=task_settings) as client:
        task_id = await client.invoke("echo", None, delay=0.6, task=True)
        task = await _until_status(client, task_id, {Status.SUCCEEDED})
    assert _statuses(task) == ["Enqueued", "Dequeued", "Running", "Succeeded"]


async def test_a_task_id_is_used_once_by_the_client_and_the_command_line(
    namespace: Namespace, task_settings: Settings
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    async with running_worker(namespace, functions_file, task_store=task_settings.task_store), \
            Client(settings=task_settings) as client:
        await client.invoke("echo", 1, task=True, id="once")
        with pytest.raises(TaskExistsError, match="'once' already exists"):
            await client.invoke("echo", 2, task=True, id="once")
        env = namespace.env(ASYNCINVOKE_TASK_STORE=task_settings.task_store)
        command = [sys.executable, "-m", "asyncinvoke", "invoke", "echo", "--task", "--id", "once"]
        refused = await asyncio.to_thread(
            subprocess.run, command, env=env, cwd=ROOT, capture_output=True, text=True,
            timeout=60,
        )
        assert refused.returncode == 1
        assert "'once' already exists" in refused.stderr
        await _until_status(client, "once", {Status.SUCCEEDED})
        shown = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "asyncinvoke", "task", "get", "once", "--json"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
    assert shown.returncode == 0, shown.stderr
    view = orjson.loads(shown.stdout)
    assert view["status"] == "Succeeded"
    assert view["taskPayload"] == "1"
    assert view["returnPayload"] == "1"
    assert [event["status"] for event in view["events"]] == ["Enqueued", "Running", "Succeeded"]


async def test_a_duplicate_id_over_plain_amqp_runs_once(
    namespace: Namespace, task_settings: Settings, amqp
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    handlers.CALLS["echo"].clear()
    envelope = msgpack.packb({"v": 1, "id": "dup_1", "fn": "echo", "payload": "x", "task": True})
    channel = await amqp.channel(publisher_confirms=True)
    async with running_worker(namespace, functions_file, task_store=task_settings.task_store), \
            Client(settings=task_settings) as client:
        exchange = await channel.get_exchange(namespace.names.invoke)
        await exchange.publish(aio_pika.Message(envelope, delivery_mode=2), routing_key="echo")
        await _until_status(client, "dup_1", {Status.SUCCEEDED})
        await exchange.publish(aio_pika.Message(envelope, delivery_mode=2), routing_key="echo")
        marker = await client.invoke("echo", "marker", task=True)
        await _until_status(client, marker, {Status.SUCCEEDED})
    assert [call[0] for call in handlers.CALLS["echo"]].count("dup_1") == 1


async def test_two_workers_racing_on_a_duplicate_run_it_once(
    namespace: Namespace, task_settings: Settings, amqp
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    handlers.CALLS["sleep"].clear()
    channel = await amqp.channel(publisher_confirms=True)
    first = Worker(task_settings, functions_file)
    second = Worker(task_settings, functions_file)
    await first.start()
    await second.start()
    try:
        exchange = await channel.get_exchange(namespace.names.invoke)
        async with Client(settings=task_settings) as client:
            ids = [f"race_{i}" for i in range(20)]
            for task_id in ids:
                body = msgpack.packb({"v": 1, "id": task_id, "fn": "sleep",
                                      "payload": {"seconds": 0.2}, "task": True})
                # Each id twice, back to back: the two copies go to the two workers.
                for _ in range(2):
                    await exchange.publish(aio_pika.Message(body, delivery_mode=2),
                                           routing_key="sleep")
            for task_id in ids:
                await _until_status(client, task_id, {Status.SUCCEEDED}, timeout=60)
            # A deferred copy comes back after the claim it lost to has ended: let it.
            async with asyncio.timeout(30):
                while first.in_flight or second.in_flight:
                    await asyncio.sleep(0.05)
    finally:
        await first.stop()
        await second.stop()
    runs = [call[0] for call in handlers.CALLS["sleep"]]
    assert sorted(runs) == sorted(ids)


async def test_a_delayed_task_from_plain_amqp_can_be_seen_and_stopped_while_it_waits(
    namespace: Namespace, task_settings: Settings, amqp
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    handlers.CALLS["echo"].clear()
    delay_s = 8
    # Not our client: nothing wrote the task before the worker saw the invocation.
    envelope = msgpack.packb(
        {"v": 1, "id": "plain_delayed", "fn": "echo", "payload": "never", "delay": delay_s}
    )
    channel = await amqp.channel(publisher_confirms=True)
    async with running_worker(namespace, functions_file, task_store=task_settings.task_store), \
            Client(settings=task_settings) as client:
        exchange = await channel.get_exchange(namespace.names.invoke)
        await exchange.publish(aio_pika.Message(envelope, delivery_mode=2), routing_key="echo")
        # Well before it leaves the ladder (in delay_s) it must be there to see and stop.
        waiting = await _until_status(client, "plain_delayed", {Status.ENQUEUED},
                                      timeout=delay_s / 2)
        listed = await (await client.tasks()).list(function="echo")
        assert [task.id for task in listed.tasks] == ["plain_delayed"]
        assert (await client.stop_task("plain_delayed")).status is Status.STOPPED
        # Published after it and due after it: once this one ran, the stopped one fell due.
        control = await client.invoke("echo", "after", delay=delay_s + 0.5, task=True)
        await _until_status(client, control, {Status.SUCCEEDED}, timeout=delay_s + 15)
        stopped = await _until_status(client, "plain_delayed", {Status.STOPPED}, timeout=1)
    assert waiting.events[0].detail == "received over AMQP"
    assert _statuses(stopped) == ["Enqueued", "Stopped"]
    assert [call[0] for call in handlers.CALLS["echo"]] == [control]


async def test_a_task_whose_record_was_not_confirmed_runs_again_and_its_record_arrives(
    namespace: Namespace, task_settings: Settings, amqp, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = namespace.queue_name("done")
    await declare_queue(amqp, done)
    functions_file = namespace.functions(FUNCTIONS + f"""
    [functions.reported]
    handler = "tests.support.handlers:echo"
    task_mode = true
    on_success = "queue:{done}"
    """)
    handlers.CALLS["reported"].clear()
    async with running_worker(namespace, functions_file,
                              task_store=task_settings.task_store) as worker, \
            Client(settings=task_settings) as client:
        assert worker.pipeline is not None
        destinations = worker.pipeline.destinations
        send, lost = destinations.send, []

        async def first_confirm_lost(record: dict[str, object], destination: object) -> None:
            # As the broker does when a connection drops mid-publish: no confirm, in time.
            if not lost:
                lost.append(record)
                raise PublishTimeout("no confirm within 10 s (injected by the test)")
            await send(record, destination)  # type: ignore[arg-type]

        monkeypatch.setattr(destinations, "send", first_confirm_lost)
        task_id = await client.invoke("reported", "x", task=True)
        # The record comes, only now is the task Succeeded (before: at once, no record ever).
        received = await collect(amqp, done, 1, timeout=30)
        task = await _until_status(client, task_id, {Status.SUCCEEDED})
    assert lost
    assert [record["requestContext"]["requestId"] for record in records_of(received)] == [task_id]
    assert [call[0] for call in handlers.CALLS["reported"]] == [task_id, task_id]
    assert _statuses(task) == ["Enqueued", "Running", "Retrying", "Running", "Succeeded"]
    assert "was not settled (PublishTimeout" in task.events[2].detail


async def test_a_task_cut_short_by_shutdown_runs_again_at_once_after_a_restart(
    namespace: Namespace, task_settings: Settings
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    handlers.CALLS["sleep"].clear()
    store_url = task_settings.task_store
    async with Client(settings=task_settings) as client:
        async with running_worker(namespace, functions_file, task_store=store_url,
                                  shutdown_grace_s=0.2):
            task_id = await client.invoke("sleep", {"seconds": 2}, task=True)
            await _until_status(client, task_id, {Status.RUNNING})
        # Its claim was given up: not held until the timeout (60 s) runs out, as a dead
        # worker's would be, and not counted as a death.
        released = await _until_status(client, task_id, {Status.RETRYING}, timeout=5)
        async with running_worker(namespace, functions_file, task_store=store_url):
            task = await _until_status(client, task_id, {Status.SUCCEEDED}, timeout=20)
    assert "was not settled (CancelledError" in released.events[-1].detail
    assert _statuses(task) == ["Enqueued", "Running", "Retrying", "Running", "Succeeded"]
    assert [call[0] for call in handlers.CALLS["sleep"]] == [task_id, task_id]
