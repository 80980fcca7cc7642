"""The tools that show records and tasks, on payloads msgpack carries and JSON cannot.

The dead-letter tool (list, show, export, replay) and the gateway (GetAsyncTask, a
synchronous call's result) crashed on them with a TypeError, or answered 500.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson

from asyncinvoke import Client, contract, topology
from asyncinvoke.gateway import Gateway
from tests.conftest import ROOT, Namespace, collect, running_worker
from tests.integration.helpers import Connection, assert_empty, publish_raw
from tests.support.hostile import PAYLOADS


def _dlq(namespace: Namespace, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncinvoke", "dlq", *args],
        env=namespace.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_dlq_tool_shows_exports_and_replays_records_json_cannot_carry(
    namespace: Namespace, amqp: Connection, tmp_path: Path
) -> None:
    spec = namespace.functions("""
        [functions.breaks]
        handler = "tests.support.handlers:always_fail"
        max_retries = 0
    """)
    async with running_worker(namespace, spec):
        for kind, payload in PAYLOADS.items():
            wire = {"v": 1, "id": kind, "fn": "breaks", "payload": payload}
            await publish_raw(amqp, namespace.names, wire)
        async with asyncio.timeout(30):
            while await _depth(amqp, namespace.names.failed) < len(PAYLOADS):
                await asyncio.sleep(0.05)
    export_file = tmp_path / "failed.jsonl"

    def run_tool() -> list[subprocess.CompletedProcess[str]]:
        return [
            _dlq(namespace, "list", "--json"),
            _dlq(namespace, "show", "bytes_keys"),
            _dlq(namespace, "show", "deep", "--json"),
            _dlq(namespace, "export", str(export_file)),
            _dlq(namespace, "purge", "--all", "--yes"),
            _dlq(namespace, "replay", "--from-file", str(export_file)),
        ]

    results = await asyncio.to_thread(run_tool)
    for result in results:
        assert result.returncode == 0, (result.args, result.stderr)
    listed, shown, shown_json = results[0], results[1], results[2]
    assert sorted(orjson.loads(line)["id"] for line in listed.stdout.splitlines()) == sorted(
        PAYLOADS
    )
    assert "b'k'" in shown.stdout  # the payload, rendered
    deep = orjson.loads(shown_json.stdout)
    assert deep["requestContext"]["requestId"] == "deep"
    assert contract.ENCODING_ERROR in deep
    exported = [orjson.loads(line) for line in export_file.read_bytes().splitlines()]
    assert len(exported) == len(PAYLOADS)
    # The replay sent each original invocation back, every byte of its payload intact.
    replayed = await collect(amqp, namespace.names.function_queue("breaks"), 2, timeout=30)
    payloads = {
        contract.unpack(message.body)["id"]: contract.unpack(message.body)["payload"]
        for message in replayed
    }
    assert payloads == PAYLOADS
    await assert_empty(amqp, namespace.names.failed)


async def _depth(amqp: Connection, queue: str) -> int:
    return await topology.queue_depth(amqp, queue) or 0


async def test_the_gateway_answers_for_results_and_tasks_json_cannot_carry(
    namespace: Namespace, tmp_path: Path
) -> None:
    """GetAsyncTask shows such a task's payload and result as renderings; a synchronous
    call whose result JSON cannot carry is a function error that says so (both were 500)."""
    spec = namespace.functions("""
        [functions.odd]
        handler = "tests.support.hostile:bytes_key_result"

        [functions.echo_task]
        handler = "tests.support.handlers:echo"
        task_mode = true
    """)
    settings = namespace.settings.with_overrides(task_store=f"sqlite:///{tmp_path}/tasks.db")
    gateway = Gateway(settings, spec, {})  # no keys: loopback only
    async with running_worker(namespace, spec, task_store=settings.task_store) as worker:
        await gateway.start("127.0.0.1", 0)
        try:
            async with Client(settings=settings) as client:
                task_id = await client.invoke("echo_task", PAYLOADS["bytes_keys"], task=True)
            store = await worker.tracker.store()

            async def succeeded() -> bool:
                task = await store.get(task_id)
                return task is not None and task.status.value == "Succeeded"

            async with asyncio.timeout(20):
                while not await succeeded():
                    await asyncio.sleep(0.05)
            base = f"{gateway.url}/2023-03-30/functions"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                async with http.get(f"{base}/echo_task/async-tasks/{task_id}") as response:
                    task_status, task_view = response.status, await response.json()
                async with http.post(
                    f"{base}/odd/invocations",
                    data=b"{}",
                    headers={"x-fc-invocation-type": "Sync", "content-type": "application/json"},
                ) as response:
                    call_status, call_headers = response.status, response.headers
                    call_body = await response.json()
        finally:
            await gateway.stop()
    assert task_status == 200, task_view
    assert task_view["status"] == "Succeeded"
    assert "b'k'" in task_view["taskPayload"] and "not JSON" in task_view["taskPayload"]
    assert "b'k'" in task_view["returnPayload"]
    assert call_status == 200, call_body
    assert call_headers["x-fc-error-type"] == contract.UNHANDLED
    assert call_body["errorType"] == "ResultNotSerializable"
    assert "b'k'" in call_body["errorMessage"]


async def test_invoke_sync_prints_a_result_json_cannot_carry_as_a_rendering(
    namespace: Namespace,
) -> None:
    spec = namespace.functions("""
        [functions.odd]
        handler = "tests.support.hostile:bytes_key_result"
    """)
    async with running_worker(namespace, spec):
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "asyncinvoke", "invoke", "odd", "--sync"],
            env=namespace.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    shown = orjson.loads(result.stdout)
    assert "not JSON" in shown and "b'k'" in shown
