"""Every refusal of the gateway is FC's JSON error ({Code, Message, RequestId}) with the
right status: unknown function 404, duplicate task id 409, bad delay 400, oversize
payload 413, bad signature 403, no reply in time 504, broker away 503.

Plain HTTP (aiohttp) here, so each request is exactly what the test says; signed
requests are signed by the SDK's own signing code.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import types
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from alibabacloud_tea_openapi.utils import Utils

from asyncinvoke.gateway import Gateway
from tests.conftest import Namespace, running_worker
from tests.integration.test_gateway import AK_ID, AK_SECRET, running_gateway, task_store

FUNCTIONS = """
    [functions.echo]
    handler = "tests.support.handlers:sync_echo"
    task_mode = true

    [functions.quick]
    handler = "tests.support.handlers:sync_echo"
    timeout = 0.2
"""
INVOKE = "/2023-03-30/functions/{}/invocations"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


def signed(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    port: int,
    query: dict[str, str] | None = None,
    secret: str = AK_SECRET,
    date: str | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers as the SDK sends them, signed by the SDK's Utils.get_authorization."""
    all_headers = {
        "host": f"127.0.0.1:{port}",
        "x-acs-version": "2023-03-30",
        "x-acs-action": "Test",
        "x-acs-date": date or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "x-acs-signature-nonce": nonce or uuid.uuid4().hex,
        "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
        **(headers or {}),
    }
    request = types.SimpleNamespace(
        pathname=path, method=method, query=query or {}, headers=all_headers
    )
    all_headers["Authorization"] = Utils.get_authorization(
        request, "ACS3-HMAC-SHA256", all_headers["x-acs-content-sha256"], AK_ID, secret
    )
    return all_headers


async def fc_error(response: aiohttp.ClientResponse) -> dict[str, Any]:
    error: dict[str, Any] = await response.json()
    assert set(error) == {"Code", "Message", "RequestId"}, error
    assert error["RequestId"] == response.headers["x-fc-request-id"]
    return error


async def expect(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    method: str,
    path: str,
    status: int,
    code: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> str:
    """Send the request, signed; assert the status and FC error code; the message."""
    sent = signed(method, path, body, headers, port=gateway.port, query=query)
    async with http.request(
        method, gateway.url + path, data=body, headers=sent, params=query
    ) as response:
        error = await fc_error(response)
        assert (response.status, error["Code"]) == (status, code), error
        return str(error["Message"])


async def test_unknown_function_is_404_function_not_found(
    namespace: Namespace, http: aiohttp.ClientSession
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    async with running_gateway(namespace, functions_file, task_store=task_store(namespace)) as gw:
        for method, path in (
            ("POST", INVOKE.format("nope")),
            ("GET", "/2023-03-30/functions/nope/async-tasks/t1"),
            ("GET", "/2023-03-30/functions/nope/async-tasks"),
            ("PUT", "/2023-03-30/functions/nope/async-tasks/t1/stop"),
            ("GET", "/2023-03-30/functions/nope/async-invoke-config"),
        ):
            message = await expect(http, gw, method, path, 404, "FunctionNotFound")
            assert "'nope'" in message
        await expect(
            http, gw, "GET", "/2023-03-30/functions/echo/async-tasks/t1", 404, "AsyncTaskNotFound"
        )
        await expect(http, gw, "GET", "/2023-03-30/nothing-here", 404, "PathNotSupported")


async def test_a_duplicate_task_id_is_409_and_a_finished_task_cannot_be_stopped(
    namespace: Namespace, http: aiohttp.ClientSession
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    store = task_store(namespace)
    async with running_worker(namespace, functions_file, task_store=store), running_gateway(
        namespace, functions_file, task_store=store
    ) as gw:
        headers = {"x-fc-invocation-type": "Async", "x-fc-async-task-id": "once"}
        path = INVOKE.format("echo")
        async with http.post(
            gw.url + path, data=b"1", headers=signed("POST", path, b"1", headers, port=gw.port)
        ) as first:
            assert first.status == 202
        message = await expect(
            http, gw, "POST", path, 409, "AsyncTaskAlreadyExists", body=b"2", headers=headers
        )
        assert "'once'" in message
        async with asyncio.timeout(15):
            while True:
                task_path = "/2023-03-30/functions/echo/async-tasks/once"
                async with http.get(
                    gw.url + task_path, headers=signed("GET", task_path, port=gw.port)
                ) as got:
                    if (await got.json())["status"] == "Succeeded":
                        break
                await asyncio.sleep(0.05)
        await expect(
            http, gw, "PUT", task_path + "/stop", 409, "AsyncTaskFinished"
        )


async def test_bad_invocation_headers_are_400_invalid_argument(
    namespace: Namespace, http: aiohttp.ClientSession
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    async with running_gateway(namespace, functions_file, task_store=task_store(namespace)) as gw:
        path = INVOKE.format("echo")
        for headers in (
            {"x-fc-invocation-type": "Async", "x-fc-async-delay": "3601"},
            {"x-fc-invocation-type": "Async", "x-fc-async-delay": "-1"},
            {"x-fc-invocation-type": "Async", "x-fc-async-delay": "1.5"},
            {"x-fc-invocation-type": "Async", "x-fc-async-delay": "soon"},
            {"x-fc-invocation-type": "Sync", "x-fc-async-delay": "5"},
            {"x-fc-invocation-type": "Async", "x-fc-async-task-id": "9 starts with a digit"},
            {"x-fc-invocation-type": "Later"},
        ):
            message = await expect(
                http, gw, "POST", path, 400, "InvalidArgument", headers=headers
            )
            assert "x-fc-" in message, message
        tasks = "/2023-03-30/functions/echo/async-tasks"
        for name, value in (
            ("status", "Done"),
            ("limit", "0"),
            ("limit", "many"),
            ("nextToken", "garbage"),
            ("sortOrderByTime", "up"),
            ("includePayload", "maybe"),
        ):
            message = await expect(
                http, gw, "GET", tasks, 400, "InvalidArgument", query={name: value}
            )
            assert name in message or "next_token" in message, message


async def test_an_oversize_payload_is_413_entity_too_large(
    namespace: Namespace, http: aiohttp.ClientSession
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    async with running_gateway(
        namespace, functions_file, task_store=task_store(namespace), max_payload_bytes=2048
    ) as gw:
        path = INVOKE.format("echo")
        headers = {"x-fc-invocation-type": "Async"}
        # Over the limit by itself, and under it but over once wrapped in its envelope.
        for size in (4096, 2000):
            await expect(
                http, gw, "POST", path, 413, "EntityTooLarge", body=b"x" * size, headers=headers
            )
        async with http.post(
            gw.url + path,
            data=b"x" * 1000,
            headers=signed("POST", path, b"x" * 1000, headers, port=gw.port),
        ) as fits:
            assert fits.status == 202


async def test_a_bad_signature_is_403(namespace: Namespace, http: aiohttp.ClientSession) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    async with running_gateway(namespace, functions_file, task_store=task_store(namespace)) as gw:
        path = "/2023-03-30/functions/echo/async-invoke-config"
        url = gw.url + path

        async def status_and_code(headers: dict[str, str], body: bytes = b"") -> tuple[int, str]:
            async with http.get(url, headers=headers, data=body or None) as response:
                return response.status, (await fc_error(response))["Code"]

        assert await status_and_code({}) == (403, "AccessDenied")
        wrong = signed("GET", path, port=gw.port, secret="wrong")
        assert await status_and_code(wrong) == (403, "SignatureNotMatch")
        stale = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
        assert await status_and_code(signed("GET", path, port=gw.port, date=stale)) == (
            403, "RequestTimeTooSkewed"
        )
        tampered = signed("GET", path, port=gw.port)
        tampered["x-acs-action"] = "SomethingElse"  # changed after signing
        assert await status_and_code(tampered) == (403, "SignatureNotMatch")
        unsigned = signed("GET", path, port=gw.port)
        unsigned["x-acs-security-token"] = "added after signing"
        assert await status_and_code(unsigned) == (403, "AccessDenied")
        other_body = signed("GET", path, port=gw.port)
        assert await status_and_code(other_body, b"not what was signed") == (
            403, "SignatureNotMatch"
        )

        once = signed("GET", path, port=gw.port)
        async with http.get(url, headers=once) as first:
            assert first.status == 200
        assert await status_and_code(once) == (403, "SignatureNonceUsed")


async def test_no_reply_in_time_is_504_and_an_unreachable_broker_503(
    namespace: Namespace, http: aiohttp.ClientSession
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    async with running_gateway(
        namespace, functions_file, task_store=task_store(namespace), sync_margin_s=0.3
    ) as gw:
        # No worker serves "quick": its timeout (0.2 s) + the margin passes without a reply.
        started = time.monotonic()
        message = await expect(
            http, gw, "POST", INVOKE.format("quick"), 504, "FunctionTimeout",
            headers={"x-fc-invocation-type": "Sync"},
        )
        assert time.monotonic() - started < 5
        assert "is a worker serving it?" in message

        async with http.get(gw.url + "/readyz") as ready:
            assert ready.status == 200
        assert gw.client.broker.connection is not None
        await gw.client.broker.connection.close()
        async with http.get(gw.url + "/readyz") as not_ready:
            assert not_ready.status == 503
        async with http.get(gw.url + "/healthz") as alive:
            assert alive.status == 200
        await expect(
            http, gw, "POST", INVOKE.format("echo"), 503, "ServiceUnavailable",
            headers={"x-fc-invocation-type": "Async"},
        )


