"""The HTTP gateway driven by the official Function Compute SDK (alibabacloud-fc20230330),
with only the endpoint changed: async and sync invocation, async tasks, the invoke
config, and its signature check.

The SDK is synchronous: every call runs in a thread (asyncio.to_thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from alibabacloud_fc20230330 import models as fc
from alibabacloud_fc20230330.client import Client as FcClient
from alibabacloud_tea_openapi import models as openapi
from alibabacloud_tea_openapi.exceptions import ClientException
from darabonba.runtime import RuntimeOptions

from asyncinvoke import functions
from asyncinvoke.gateway import Gateway
from asyncinvoke.gateway.app import SYNC_MARGIN_S
from tests.conftest import ROOT, Namespace, running_worker

AK_ID = "test-key"
AK_SECRET = "test-secret-do-not-log"
KEYS = {AK_ID: AK_SECRET}
T = TypeVar("T")


@contextlib.asynccontextmanager
async def running_gateway(
    namespace: Namespace,
    functions_file: functions.FunctionsFile,
    keys: dict[str, str] | None = None,
    *,
    sync_margin_s: float = SYNC_MARGIN_S,
    **settings: Any,
) -> AsyncIterator[Gateway]:
    """The gateway in this process and loop, on a free loopback port."""
    gateway = Gateway(
        namespace.settings.with_overrides(**settings),
        functions_file,
        KEYS if keys is None else keys,
        sync_margin_s=sync_margin_s,
    )
    await gateway.start("127.0.0.1", 0)
    try:
        yield gateway
    finally:
        await gateway.stop()


def task_store(namespace: Namespace) -> str:
    return f"sqlite:///{namespace.tmp_path / 'tasks.db'}"


def sdk(gateway: Gateway, secret: str = AK_SECRET, key_id: str = AK_ID) -> FcClient:
    config = openapi.Config(
        access_key_id=key_id,
        access_key_secret=secret,
        endpoint=f"127.0.0.1:{gateway.port}",
        protocol="http",
        read_timeout=30_000,
    )
    return FcClient(config)


async def call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """One SDK call, in a thread, with a timeout."""
    async with asyncio.timeout(30):
        return await asyncio.to_thread(function, *args, **kwargs)


def invoke_headers(kind: str, **headers: str) -> fc.InvokeFunctionHeaders:
    task_id = headers.pop("task_id", None)
    return fc.InvokeFunctionHeaders(
        x_fc_invocation_type=kind, x_fc_async_task_id=task_id, common_headers=headers or None
    )


def invoke(
    client: FcClient, function: str, body: bytes, headers: fc.InvokeFunctionHeaders
) -> fc.InvokeFunctionResponse:
    request = fc.InvokeFunctionRequest(body=io.BytesIO(body))
    return client.invoke_function_with_options(function, request, headers, RuntimeOptions())


async def until_status(
    client: FcClient, function: str, task_id: str, statuses: set[str], timeout: float = 15
) -> fc.AsyncTask:
    deadline = time.monotonic() + timeout
    while True:
        response = await call(client.get_async_task, function, task_id, fc.GetAsyncTaskRequest())
        if response.body.status in statuses:
            return response.body
        if time.monotonic() > deadline:
            pytest.fail(f"task {task_id} still {response.body.status} after {timeout} s")
        await asyncio.sleep(0.05)


TASK_FUNCTIONS = """
    [functions.echo]
    handler = "tests.support.handlers:sync_echo"
    task_mode = true
    max_retries = 2
    max_event_age = 600

    [functions.clock]
    handler = "tests.support.handlers:started_at"

    [functions.refuse]
    handler = "tests.support.handlers:refuse"
"""


async def test_an_async_invocation_with_delay_and_task_id_runs_and_reads_as_fc_async_task(
    namespace: Namespace,
) -> None:
    functions_file = namespace.functions(TASK_FUNCTIONS)
    store = task_store(namespace)
    async with running_worker(namespace, functions_file, task_store=store), running_gateway(
        namespace, functions_file, task_store=store
    ) as gateway:
        client = sdk(gateway)
        task_id = f"resize_{uuid.uuid4().hex}"
        sent = time.time_ns() // 1_000_000
        response = await call(
            invoke,
            client,
            "echo",
            b"a.png",
            invoke_headers("Async", task_id=task_id, **{"x-fc-async-delay": "1"}),
        )
        assert response.status_code == 202
        assert response.headers["x-fc-request-id"] == task_id

        task = await until_status(client, "echo", task_id, {"Succeeded"})
        assert task.task_id == task_id
        assert task.task_payload == "a.png"
        assert task.return_payload == "a.png"
        assert task.already_retried_times == 0
        assert task.started_time >= sent + 1000, "the delay was not honoured"
        assert task.end_time >= task.started_time
        # Due within a second and the ladder's lead: the worker takes it and holds it.
        assert [event.status for event in task.events] == [
            "Enqueued",
            "Dequeued",
            "Running",
            "Succeeded",
        ]


async def test_a_sync_invocation_returns_the_functions_result_as_the_body(
    namespace: Namespace,
) -> None:
    functions_file = namespace.functions(TASK_FUNCTIONS)
    store = task_store(namespace)
    async with running_worker(namespace, functions_file, task_store=store), running_gateway(
        namespace, functions_file, task_store=store
    ) as gateway:
        client = sdk(gateway)
        echoed = await call(invoke, client, "echo", b"\x00raw bytes\xff", invoke_headers("Sync"))
        assert echoed.status_code == 200
        assert echoed.body.read() == b"\x00raw bytes\xff"
        assert echoed.headers["x-fc-request-id"]
        assert "x-fc-error-type" not in echoed.headers

        before = time.time_ns() // 1_000_000
        clock = await call(invoke, client, "clock", b"", invoke_headers("Sync"))
        assert clock.headers["content-type"].startswith("application/json")
        assert orjson.loads(clock.body.read()) >= before  # an int result, sent as JSON

        refused = await call(invoke, client, "refuse", b"{}", invoke_headers("Sync"))
        assert refused.status_code == 200
        assert refused.headers["x-fc-error-type"] == "HandledInvocationError"
        error = orjson.loads(refused.body.read())
        assert error["errorType"] == "NonRetryableError"
        assert error["errorMessage"] == "refused: will not get better"


async def test_list_async_tasks_filters_by_prefix_and_status_and_pages(
    namespace: Namespace,
) -> None:
    functions_file = namespace.functions(TASK_FUNCTIONS)
    store = task_store(namespace)
    async with running_worker(namespace, functions_file, task_store=store), running_gateway(
        namespace, functions_file, task_store=store
    ) as gateway:
        client = sdk(gateway)
        ids = [f"batch_{n}_{uuid.uuid4().hex[:8]}" for n in range(3)]
        for task_id in ids:
            await call(invoke, client, "echo", task_id.encode(), invoke_headers(
                "Async", task_id=task_id
            ))
        await call(invoke, client, "echo", b"other", invoke_headers("Async", task_id="other_1"))
        for task_id in ids:
            await until_status(client, "echo", task_id, {"Succeeded"})

        def listing(**query: Any) -> fc.ListAsyncTaskOutput:
            request = fc.ListAsyncTasksRequest(**query)
            return client.list_async_tasks("echo", request).body

        first = await call(listing, prefix="batch_", limit=2, sort_order_by_time="asc")
        assert [task.task_id for task in first.tasks] == ids[:2]
        assert first.next_token
        assert first.tasks[0].task_payload is None  # includePayload defaults to false
        second = await call(
            listing, prefix="batch_", limit=2, sort_order_by_time="asc", next_token=first.next_token
        )
        assert [task.task_id for task in second.tasks] == ids[2:]
        assert not second.next_token

        newest = await call(listing, prefix="batch_", include_payload=True, status="Succeeded")
        assert [task.task_id for task in newest.tasks] == ids[::-1]
        assert newest.tasks[0].task_payload == ids[-1]
        assert (await call(listing, prefix="batch_", status="Failed")).tasks == []
        # Query values the SDK has to encode still verify.
        assert (await call(listing, prefix="no match: ü/+ &=%20~*")).tasks == []


async def test_stop_async_task_stops_a_delayed_task_before_it_starts(
    namespace: Namespace,
) -> None:
    functions_file = namespace.functions(TASK_FUNCTIONS)
    store = task_store(namespace)
    async with running_worker(namespace, functions_file, task_store=store), running_gateway(
        namespace, functions_file, task_store=store
    ) as gateway:
        client = sdk(gateway)
        task_id = f"later_{uuid.uuid4().hex}"
        await call(
            invoke,
            client,
            "echo",
            b"never",
            invoke_headers("Async", task_id=task_id, **{"x-fc-async-delay": "60"}),
        )
        stopped = await call(client.stop_async_task, "echo", task_id, fc.StopAsyncTaskRequest())
        assert stopped.status_code == 200
        task = await until_status(client, "echo", task_id, {"Stopped"}, timeout=5)
        assert task.started_time is None
        assert [event.status for event in task.events] == ["Enqueued", "Stopped"]
        # Stopping a stopped task again is no error.
        again = await call(client.stop_async_task, "echo", task_id, fc.StopAsyncTaskRequest())
        assert again.status_code == 200


async def test_get_async_invoke_config_is_the_functions_effective_policy(
    namespace: Namespace,
) -> None:
    functions_file = namespace.functions("""
        [functions.echo]
        handler = "tests.support.handlers:sync_echo"
        task_mode = true
        max_retries = 2
        max_event_age = 600
        on_success = "queue:done"

        [functions.clock]
        handler = "tests.support.handlers:started_at"
    """)
    async with running_gateway(namespace, functions_file, task_store=task_store(namespace)) as gw:
        client = sdk(gw)
        echo = await call(client.get_async_invoke_config, "echo", fc.GetAsyncInvokeConfigRequest())
        assert echo.body.async_task is True
        assert echo.body.max_async_retry_attempts == 2
        assert echo.body.max_async_event_age_in_seconds == 600
        assert echo.body.destination_config.on_success.destination == "queue:done"
        assert echo.body.destination_config.on_failure.destination == (
            f"queue:{namespace.names.failed}"
        )
        assert echo.body.function_arn.endswith(":functions/echo")
        clock = await call(
            client.get_async_invoke_config, "clock", fc.GetAsyncInvokeConfigRequest()
        )
        assert clock.body.async_task is False
        assert clock.body.destination_config.on_success is None


async def test_a_wrong_secret_makes_the_sdk_raise_a_signature_error(
    namespace: Namespace,
) -> None:
    functions_file = namespace.functions(TASK_FUNCTIONS)
    async with running_gateway(namespace, functions_file, task_store=task_store(namespace)) as gw:
        wrong = sdk(gw, secret="not-the-secret")
        with pytest.raises(ClientException) as raised:
            await call(invoke, wrong, "clock", b"", invoke_headers("Async"))
        assert raised.value.code == "SignatureNotMatch"
        assert raised.value.status_code == 403
        assert AK_SECRET not in str(raised.value)
        with pytest.raises(ClientException) as unknown:
            await call(invoke, sdk(gw, key_id="nobody"), "clock", b"", invoke_headers("Async"))
        assert unknown.value.code == "InvalidAccessKeyID"


async def test_serve_runs_worker_and_gateway_in_one_process_on_loopback_without_keys(
    namespace: Namespace, tmp_path: Path
) -> None:
    namespace.functions("""
        [functions.echo]
        handler = "tests.support.handlers:sync_echo"
    """)
    env = namespace.env()
    env.pop("ASYNCINVOKE_ACCESS_KEYS", None)
    env.pop("ASYNCINVOKE_ACCESS_KEYS_FILE", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncinvoke", "serve",
        "--config", str(tmp_path / "functions.toml"), "--host", "0.0.0.0", "--port", "0",
        env={**env, "ASYNCINVOKE_TASK_STORE": task_store(namespace)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )
    lines: list[dict[str, Any]] = []
    try:
        assert process.stderr is not None
        async with asyncio.timeout(30):
            while not any(line.get("event") == "gateway_started" for line in lines):
                raw = await process.stderr.readline()
                assert raw, f"serve exited early: {lines}"
                with contextlib.suppress(orjson.JSONDecodeError):
                    lines.append(orjson.loads(raw))
        events = {line.get("event"): line for line in lines}
        assert events["gateway_loopback_only"]["requested_host"] == "0.0.0.0"
        url = events["gateway_started"]["url"]
        assert url.startswith("http://127.0.0.1:")
        assert "off" in events["gateway_started"]["authentication"]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            async with http.post(
                f"{url}/2023-03-30/functions/echo/invocations",
                data=b"hello",
                headers={"x-fc-invocation-type": "Sync"},
            ) as response:
                assert response.status == 200
                assert await response.read() == b"hello"
            async with http.get(f"{url}/readyz") as ready:
                assert ready.status == 200
    finally:
        if process.returncode is None:
            process.terminate()
        async with asyncio.timeout(30):
            code = await process.wait()
    assert code == 0, lines[-5:]
