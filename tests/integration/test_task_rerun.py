"""Re-running an ended task (``asyncinvoke task rerun``, ``Client.rerun_task`` and the
gateway's POST .../async-tasks/{id}/rerun): the original payload, the same id, a new
attempt sequence, the history kept; a task that has not ended is a 409."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import msgpack
import orjson

from asyncinvoke import Client
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import Task
from tests.conftest import ROOT, Namespace, running_worker
from tests.integration.test_gateway import running_gateway
from tests.support import handlers

FUNCTIONS = """
    [functions.picky]
    handler = "tests.support.handlers:refuse_first"
    task_mode = true

    [functions.echo]
    handler = "tests.support.handlers:echo"
    task_mode = true

    [functions.nap]
    handler = "tests.support.handlers:sleep"
    task_mode = true
"""


async def _until_status(client: Client, task_id: str, status: Status, timeout: float = 20) -> Task:
    store = await client.tasks()
    async with asyncio.timeout(timeout):
        while True:
            task = await store.get(task_id)
            if task is not None and task.status is status:
                return task
            await asyncio.sleep(0.02)


def _runs(function: str, task_id: str) -> list[int]:
    """The attempt numbers of each run of ``task_id``."""
    return [attempt for (ran, attempt, _) in handlers.CALLS[function] if ran == task_id]


async def test_a_rerun_of_a_succeeded_task_runs_its_payload_again_under_the_same_id(
    namespace: Namespace,
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    settings = namespace.settings.with_overrides(
        task_store=f"sqlite:///{namespace.tmp_path / 'tasks.db'}"
    )
    handlers.CALLS["echo"].clear()
    async with running_worker(namespace, functions_file, task_store=settings.task_store), \
            Client(settings=settings) as client:
        task_id = await client.invoke("echo", {"n": 7}, task=True, id="echo_rerun_1")
        first = await _until_status(client, task_id, Status.SUCCEEDED)
        enqueued = await client.rerun_task(task_id)
        assert enqueued.status is Status.ENQUEUED
        assert enqueued.attempts == 0 and enqueued.result is None
        second = await _until_status(client, task_id, Status.SUCCEEDED)
    assert _runs("echo", task_id) == [0, 0]  # a new attempt sequence starts at attempt 0
    assert msgpack.unpackb(second.result) == {"n": 7}  # the original payload
    assert second.attempts == 1
    statuses = [event.status.value for event in second.events]
    assert statuses == ["Enqueued", "Running", "Succeeded", "Enqueued", "Running", "Succeeded"]
    assert second.events[:3] == first.events  # the history is kept
    assert second.events[3].detail == "rerun after it ended Succeeded"
    assert first.ended_at is not None and second.ended_at is not None
    assert second.ended_at > first.ended_at


async def test_a_rerun_of_a_failed_task_gets_its_retries_afresh_and_can_succeed(
    namespace: Namespace,
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    settings = namespace.settings.with_overrides(
        task_store=f"sqlite:///{namespace.tmp_path / 'tasks.db'}"
    )
    handlers.CALLS["picky"].clear()
    async with running_worker(namespace, functions_file, task_store=settings.task_store), \
            Client(settings=settings) as client:
        task_id = await client.invoke("picky", b"raw bytes", task=True, id="picky_rerun_1")
        failed = await _until_status(client, task_id, Status.FAILED)
        assert failed.error == "NonRetryableError: refused the first time"
        await client.rerun_task(task_id)
        succeeded = await _until_status(client, task_id, Status.SUCCEEDED)
    assert _runs("picky", task_id) == [0, 0]
    assert msgpack.unpackb(succeeded.result) == "ok on run 2"
    assert succeeded.error is None
    assert [event.status.value for event in succeeded.events] == [
        "Enqueued", "Running", "Failed", "Enqueued", "Running", "Succeeded",
    ]
    assert succeeded.events[3].detail == "rerun after it ended Failed"


async def test_the_gateway_reruns_an_ended_task_and_refuses_a_running_one_with_409(
    namespace: Namespace,
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    store = f"sqlite:///{namespace.tmp_path / 'tasks.db'}"
    settings = namespace.settings.with_overrides(task_store=store)
    handlers.CALLS["echo"].clear()
    async with running_worker(namespace, functions_file, task_store=store), \
            running_gateway(namespace, functions_file, keys={}, task_store=store) as gateway, \
            Client(settings=settings) as client, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{gateway.port}/2023-03-30/functions"
        napping = await client.invoke("nap", {"seconds": 30}, task=True, id="nap_1")
        await _until_status(client, napping, Status.RUNNING)
        async with http.post(f"{base}/nap/async-tasks/{napping}/rerun") as response:
            refused = response.status, orjson.loads(await response.read())
        assert refused[0] == 409
        assert refused[1]["Code"] == "AsyncTaskNotEnded"
        assert "has not ended (it is Running)" in refused[1]["Message"]
        await client.stop_task(napping)

        done = await client.invoke("echo", "hello", task=True, id="echo_gw_1")
        await _until_status(client, done, Status.SUCCEEDED)
        async with http.post(f"{base}/echo/async-tasks/{done}/rerun") as response:
            accepted = response.status, orjson.loads(await response.read())
            request_id = response.headers["x-fc-request-id"]
        async with http.post(f"{base}/echo/async-tasks/no_such_task/rerun") as response:
            missing = response.status, orjson.loads(await response.read())
        again = await _until_status(client, done, Status.SUCCEEDED)
    assert accepted[0] == 202
    assert accepted[1]["taskId"] == done == request_id
    assert accepted[1]["status"] == "Enqueued"
    assert missing[0] == 404 and missing[1]["Code"] == "AsyncTaskNotFound"
    assert _runs("echo", done) == [0, 0]
    assert [event.status.value for event in again.events][-3:] == [
        "Enqueued", "Running", "Succeeded",
    ]


async def test_the_cli_reruns_an_ended_task_and_refuses_one_not_ended(
    namespace: Namespace,
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    store = f"sqlite:///{namespace.tmp_path / 'tasks.db'}"
    settings = namespace.settings.with_overrides(task_store=store)
    handlers.CALLS["echo"].clear()
    env = namespace.env(ASYNCINVOKE_TASK_STORE=store)

    async def cli(*args: str) -> tuple[int, bytes, bytes]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "asyncinvoke", "task", *args,
            env=env, cwd=str(ROOT),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            out, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out, err

    async with running_worker(namespace, functions_file, task_store=store), \
            Client(settings=settings) as client:
        task_id = await client.invoke("echo", [1, 2], task=True, id="echo_cli_1", delay=30)
        status, _, err = await cli("rerun", task_id)
        assert status == 1
        assert b"has not ended (it is Enqueued)" in err
        await client.stop_task(task_id)  # a task stopped before it started has ended too
        status, out, err = await cli("rerun", task_id, "--json")
        assert status == 0, err
        view = orjson.loads(out)
        assert view["taskId"] == task_id and view["status"] == "Enqueued"
        succeeded = await _until_status(client, task_id, Status.SUCCEEDED)
    assert msgpack.unpackb(succeeded.result) == [1, 2]
    assert [event.status.value for event in succeeded.events] == [
        "Enqueued", "Stopped", "Enqueued", "Running", "Succeeded",
    ]
