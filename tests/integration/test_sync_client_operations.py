"""SyncClient has the async client's operations (invoke, invoke_many, call, the task
operations) with the async client's errors, from plain threads; a closed one refuses."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from asyncinvoke import SyncClient, SyncClientClosed, UnknownFunctionError
from asyncinvoke.client import FunctionError, TaskExistsError
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import Task, TaskFinished
from tests.conftest import Namespace, running_worker


def _wait_for_status(client: SyncClient, task_id: str, status: Status) -> Task:
    deadline = time.monotonic() + 20
    while True:
        task = client.get_task(task_id)
        if task is not None and task.status is status:
            return task
        if time.monotonic() > deadline:
            pytest.fail(f"task {task_id} is {task and task.status}, not {status} after 20 s")
        time.sleep(0.05)


def _exercise(client: SyncClient) -> None:
    assert client.call("echo", {"a": 1}, timeout=10) == {"a": 1}
    with pytest.raises(FunctionError, match="refused"):
        client.call("refuse", None, timeout=10)
    with pytest.raises(UnknownFunctionError):
        client.invoke("nobody-serves-this", None)
    assert len(client.invoke_many([("echo", n) for n in range(20)])) == 20

    assert client.invoke("echo", {"order": 42}, task=True, id="order-42") == "order-42"
    task = _wait_for_status(client, "order-42", Status.SUCCEEDED)
    assert task.function == "echo"
    assert "order-42" in {listed.id for listed in client.list_tasks(function="echo")}
    with pytest.raises(TaskExistsError):
        client.invoke("echo", None, task=True, id="order-42")
    with pytest.raises(TaskFinished):
        client.stop_task("order-42")


async def test_sync_client_operations_and_errors_are_the_async_clients(
    namespace: Namespace, tmp_path: Path
) -> None:
    settings = namespace.settings.with_overrides(task_store=f"sqlite:///{tmp_path}/tasks.db")
    functions_file = namespace.functions("""
        [functions.echo]
        handler = "tests.support.handlers:echo"

        [functions.refuse]
        handler = "tests.support.handlers:refuse"
    """)
    async with running_worker(namespace, functions_file, task_store=settings.task_store):
        client = SyncClient(settings=settings)
        try:
            await asyncio.to_thread(_exercise, client)
        finally:
            await asyncio.to_thread(client.close)
    with pytest.raises(SyncClientClosed):
        client.invoke("echo", None)
