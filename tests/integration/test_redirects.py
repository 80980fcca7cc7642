"""The worker never follows a redirect when it POSTs, to an HTTP function or an HTTP destination.

aiohttp follows redirects by default, and on 301, 302 and 303 it turns the POST into a
GET without a body: the 2xx at the end of the chain would count as a success (or a
delivered record) although no one ever received the event. Here a real aiohttp server
redirects to a target that notes every request: the target must never see one, and the
failure must name where the redirect pointed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from asyncinvoke import Client, contract
from tests.conftest import Namespace, collect, running_worker
from tests.integration.helpers import Connection, assert_empty, by_request_id

REDIRECTS = (301, 302, 303, 307)


class Redirector:
    """``/from/{status}`` answers that status with a Location of ``/target``; ``/target``
    answers 200 to anything and remembers the method of each request it got."""

    def __init__(self) -> None:
        self.target_methods: list[str] = []
        self.redirected: list[int] = []
        self.base = ""

    def target_url(self) -> str:
        return f"{self.base}/target"

    async def redirect(self, request: web.Request) -> web.Response:
        status = int(request.match_info["status"])
        self.redirected.append(status)
        await request.read()
        return web.Response(status=status, headers={"Location": self.target_url()})

    async def target(self, request: web.Request) -> web.Response:
        self.target_methods.append(request.method)
        return web.json_response({"received": True})


@pytest.fixture
async def redirector() -> AsyncIterator[Redirector]:
    server_side = Redirector()
    app = web.Application()
    app.router.add_post("/from/{status}", server_side.redirect)
    app.router.add_route("*", "/target", server_side.target)
    async with TestServer(app, host="127.0.0.1") as server:
        server_side.base = str(server.make_url("")).rstrip("/")
        yield server_side


async def test_an_http_function_that_redirects_fails_and_the_target_never_sees_a_request(
    namespace: Namespace, amqp: Connection, redirector: Redirector
) -> None:
    spec = namespace.functions(
        "\n".join(
            f"""
            [functions.moved{status}]
            url = "{redirector.base}/from/{status}"
            max_retries = 0
            """
            for status in REDIRECTS
        )
    )
    async with running_worker(namespace, spec), Client(settings=namespace.settings) as client:
        sent = {await client.invoke(f"moved{code}", {"n": code}): code for code in REDIRECTS}
        failures = by_request_id(await collect(amqp, namespace.names.failed, len(sent), 20))
    await assert_empty(amqp, namespace.names.failed)

    assert redirector.target_methods == []
    assert sorted(redirector.redirected) == sorted(REDIRECTS)
    assert set(failures) == set(sent)
    for invocation_id, status in sent.items():
        message, record = failures[invocation_id]
        assert message.headers.get("x-condition") == contract.RETRIES_EXHAUSTED
        assert record["responseContext"]["statusCode"] == status
        error = record["responsePayload"]
        assert error["errorType"] == f"HTTP{status}"
        assert redirector.target_url() in error["errorMessage"]
        assert "never follows redirects" in error["errorMessage"]


async def test_an_http_destination_that_redirects_sends_the_record_to_the_failure_queue(
    namespace: Namespace, amqp: Connection, redirector: Redirector
) -> None:
    spec = namespace.functions(
        "\n".join(
            f"""
            [functions.echo{status}]
            handler = "tests.support.handlers:echo"
            on_success = "{redirector.base}/from/{status}"
            """
            for status in REDIRECTS
        )
    )
    async with running_worker(namespace, spec), Client(settings=namespace.settings) as client:
        sent = {await client.invoke(f"echo{code}", {"n": code}): code for code in REDIRECTS}
        # The destination retries within its bounded time (about 4 s) before it falls back.
        failures = by_request_id(await collect(amqp, namespace.names.failed, len(sent), 40))
    await assert_empty(amqp, namespace.names.failed)

    assert redirector.target_methods == []
    assert set(redirector.redirected) == set(REDIRECTS)
    assert set(failures) == set(sent)
    for invocation_id, status in sent.items():
        message, record = failures[invocation_id]
        # The success record itself, kept whole, with why it did not reach its destination.
        assert message.headers.get("x-condition") == contract.SUCCESS
        assert record["responsePayload"] == {"n": status}
        delivery_error = record["deliveryError"]
        assert delivery_error["destination"] == f"{redirector.base}/from/{status}"
        assert f"status {status}" in delivery_error["error"]
        assert redirector.target_url() in delivery_error["error"]
