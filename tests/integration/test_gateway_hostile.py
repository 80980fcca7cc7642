"""The gateway against hostile requests, over real HTTP: web pages reaching a gateway
without keys (DNS rebinding, cross-site posts), malformed signatures and numbers, replays
against another replica or after a restart, and credentials in the config it shows.

Each refusal is FC's JSON error, never a 500.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from asyncinvoke.gateway import Gateway
from tests.conftest import Namespace, running_worker
from tests.integration.test_gateway import running_gateway, task_store
from tests.integration.test_gateway_errors import INVOKE, fc_error, signed
from tests.integration.test_task_store import POSTGRES_DSN

FUNCTIONS = """
    [functions.echo]
    handler = "tests.support.handlers:sync_echo"
    task_mode = true
"""
CONFIG = "/2023-03-30/functions/echo/async-invoke-config"
TASKS = "/2023-03-30/functions/echo/async-tasks"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def answer(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, Any]]:
    """Status and, for a refusal, the FC error (checked for its shape)."""
    async with http.request(method, gateway.url + path, headers=headers, data=body) as response:
        if response.status < 400:
            await response.read()
            return response.status, {}
        return response.status, await fc_error(response)


# -- without access keys: only this machine's programs -----------------------------------


@pytest.fixture
async def keyless(namespace: Namespace) -> AsyncIterator[Gateway]:
    functions_file = namespace.functions(FUNCTIONS)
    store = task_store(namespace)
    async with running_worker(namespace, functions_file, task_store=store), running_gateway(
        namespace, functions_file, keys={}, task_store=store
    ) as gateway:
        yield gateway


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:{port}",
        "127.0.0.1.evil.example:{port}",
        "localhost.evil.example",
        "10.0.0.1:{port}",
        "[::1",
        "127.0.0.1:{port}:1",
        "",
    ],
)
async def test_without_keys_a_host_that_is_not_loopback_is_refused(
    keyless: Gateway, http: aiohttp.ClientSession, host: str
) -> None:
    host = host.format(port=keyless.port)
    for method, path, body in (
        ("GET", CONFIG, None),
        ("GET", TASKS, None),
        ("POST", INVOKE.format("echo"), b'{"a": 1}'),
        ("GET", "/metrics", None),
    ):
        headers = {"Host": host, "x-fc-invocation-type": "Async"}
        status, error = await answer(http, keyless, method, path, headers, body)
        assert (status, error["Code"]) == (403, "AccessDenied"), (path, error)
        assert "localhost" in error["Message"]
        assert "ASYNCINVOKE_ACCESS_KEYS" in error["Message"]


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "127.1.2.3", "[::1]:{port}"]
)
async def test_without_keys_a_loopback_host_is_answered(
    keyless: Gateway, http: aiohttp.ClientSession, host: str
) -> None:
    headers = {"Host": host.format(port=keyless.port)}
    assert await answer(http, keyless, "GET", CONFIG, headers) == (200, {})
    assert await answer(http, keyless, "GET", "/metrics", headers) == (200, {})


async def test_without_keys_the_probes_answer_whatever_the_host(
    keyless: Gateway, http: aiohttp.ClientSession
) -> None:
    for path in ("/healthz", "/readyz"):
        headers = {"Host": "gateway.svc.cluster.local", "Origin": "http://evil.example"}
        assert await answer(http, keyless, "GET", path, headers) == (200, {})


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "https://evil.example:443", "null", "file://"]
)
async def test_without_keys_a_web_page_of_another_origin_is_refused(
    keyless: Gateway, http: aiohttp.ClientSession, origin: str
) -> None:
    # What a page's fetch() sends after rebinding evil.example to 127.0.0.1 may carry the
    # right Host (the port is the gateway's); its Origin still gives it away.
    headers = {"Origin": origin, "x-fc-invocation-type": "Async"}
    for method, path in (("GET", TASKS), ("POST", INVOKE.format("echo"))):
        status, error = await answer(http, keyless, method, path, headers, b"{}")
        assert (status, error["Code"]) == (403, "AccessDenied"), error
        assert "Origin" in error["Message"]


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://127.0.0.1", "http://[::1]:8"])
async def test_without_keys_a_loopback_origin_is_answered(
    keyless: Gateway, http: aiohttp.ClientSession, origin: str
) -> None:
    assert await answer(http, keyless, "GET", CONFIG, {"Origin": origin}) == (200, {})


async def test_without_keys_an_invocation_a_form_could_send_is_refused(
    keyless: Gateway, http: aiohttp.ClientSession
) -> None:
    path = INVOKE.format("echo")
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        status, error = await answer(http, keyless, "POST", path, headers, b"a=1")
        assert (status, error["Code"]) == (403, "AccessDenied"), error
        assert "x-fc-invocation-type" in error["Message"], error
    # What a program sends: the header, or a JSON body (then Sync, FC's default).
    async with http.post(
        keyless.url + path, data=b"x", headers={"x-fc-invocation-type": "Async"}
    ) as accepted:
        assert accepted.status == 202
    async with http.post(
        keyless.url + path, data=b'{"a": 1}', headers={"Content-Type": "application/json"}
    ) as ran:
        assert ran.status == 200
        assert await ran.read() == b'{"a": 1}'  # the body, handed on and back unchanged


# -- with access keys: malformed input is a 4xx, never a 500 -----------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, namespace: Namespace) -> str:
    return task_store(namespace) if request.param == "sqlite" else POSTGRES_DSN


async def test_a_signature_that_is_not_ascii_is_403(
    namespace: Namespace, http: aiohttp.ClientSession
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    async with running_gateway(namespace, functions_file, task_store=task_store(namespace)) as gw:
        headers = signed("GET", CONFIG, port=gw.port)
        head, _, _ = headers["Authorization"].rpartition("Signature=")
        headers["Authorization"] = head + "Signature=" + "ä" * 64
        status, error = await answer(http, gw, "GET", CONFIG, headers)
        assert (status, error["Code"]) == (403, "SignatureNotMatch"), error


async def test_numbers_out_of_range_are_400(
    namespace: Namespace, http: aiohttp.ClientSession, store_url: str
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    async with running_gateway(namespace, functions_file, task_store=store_url) as gw:

        async def refused(
            method: str, path: str, headers: dict[str, str] | None = None,
            query: dict[str, str] | None = None,
        ) -> str:
            sent = signed(method, path, headers=headers, port=gw.port, query=query)
            async with http.request(method, gw.url + path, headers=sent, params=query) as got:
                error = await fc_error(got)
                assert (got.status, error["Code"]) == (400, "InvalidArgument"), error
                return str(error["Message"])

        for delay in ("²", "٣", "1_0", "+5", "9" * 5000):
            headers = {"x-fc-invocation-type": "Async", "x-fc-async-delay": delay}
            assert "x-fc-async-delay" in await refused("POST", INVOKE.format("echo"), headers)
        huge = str(2**63)
        for name, value in (
            ("startedTimeBegin", huge),
            ("startedTimeEnd", huge),
            ("startedTimeBegin", "-1"),
            ("startedTimeEnd", "9" * 5000),
            ("limit", str(2**64)),
            ("limit", "٣"),
        ):
            assert name in await refused("GET", TASKS, query={name: value})
        # Page tokens that decode, but to a position no store can compare with.
        for position in (f'[{2**63},"a"]', '[-1,"a"]', '[1,"\\u0000"]'):
            token = base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")
            assert "nextToken" in await refused("GET", TASKS, query={"nextToken": token})
        assert "prefix" in await refused("GET", TASKS, query={"prefix": "a\x00b"})
        # A task id that no task can have: not found, not an error of the store.
        for raw_id in ("a%00b", "%F0%9F%92%A9", "a%0A"):
            path = f"{TASKS}/{raw_id}"
            sent = signed("GET", path, port=gw.port)
            async with http.get(gw.url + path, headers=sent) as got:
                error = await fc_error(got)
                assert (got.status, error["Code"]) == (404, "AsyncTaskNotFound"), error


async def test_a_signed_request_is_refused_by_another_replica_and_after_a_restart(
    namespace: Namespace, http: aiohttp.ClientSession, store_url: str
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    async with running_gateway(namespace, functions_file, task_store=store_url) as first:
        once = signed("GET", CONFIG, port=first.port)
        assert await answer(http, first, "GET", CONFIG, once) == (200, {})
        async with running_gateway(namespace, functions_file, task_store=store_url) as second:
            status, error = await answer(http, second, "GET", CONFIG, once)
            assert (status, error["Code"]) == (403, "SignatureNonceUsed"), error
    async with running_gateway(namespace, functions_file, task_store=store_url) as restarted:
        status, error = await answer(http, restarted, "GET", CONFIG, once)
        assert (status, error["Code"]) == (403, "SignatureNonceUsed"), error
        fresh = signed("GET", CONFIG, port=restarted.port)
        assert await answer(http, restarted, "GET", CONFIG, fresh) == (200, {})


# -- credentials in what the gateway shows -------------------------------------------------


async def test_the_async_invoke_config_shows_urls_without_their_passwords(
    namespace: Namespace, http: aiohttp.ClientSession
) -> None:
    functions_file = namespace.functions(
        """
        [functions.hook]
        url = "http://fn-user:hunter2@127.0.0.1:9/run"
        on_success = "https://ok-user:hunter3@127.0.0.1:9/done"
        on_failure = "http://bad-user:hunter4@127.0.0.1:9/failed"
        """
    )
    async with running_gateway(namespace, functions_file, task_store=task_store(namespace)) as gw:
        path = "/2023-03-30/functions/hook/async-invoke-config"
        async with http.get(gw.url + path, headers=signed("GET", path, port=gw.port)) as got:
            assert got.status == 200
            text = await got.text()
            config = await got.json()
    assert "hunter" not in text
    destinations = config["destinationConfig"]
    assert destinations["onSuccess"]["destination"] == "https://ok-user:***@127.0.0.1:9/done"
    assert destinations["onFailure"]["destination"] == "http://bad-user:***@127.0.0.1:9/failed"
    assert config["asyncinvoke"]["target"] == "http://fn-user:***@127.0.0.1:9/run"
