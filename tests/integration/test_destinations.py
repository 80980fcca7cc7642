"""Destinations against the real broker and a real HTTP server: where each record arrives.

A record that cannot reach its destination (an HTTP endpoint that is down, a
queue that does not exist) must not be lost: it lands in ``{ns}.failed`` with a
``deliveryError`` saying where it was meant to go and why it did not get there.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from asyncinvoke import Client, contract
from tests.conftest import (
    Namespace,
    collect,
    declare_queue,
    records_of,
    running_worker,
    wait_for,
)
from tests.integration.helpers import (
    Connection,
    assert_empty,
    assert_header,
    attempts_of,
    by_request_id,
)


class Hook:
    """An HTTP destination: answers with ``statuses`` in turn, then 200; keeps each request."""

    def __init__(self, *statuses: int):
        self.statuses = list(statuses)
        self.requests: list[tuple[Mapping[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.headers.copy(), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="busy" if status >= 300 else "ok")


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    """A real aiohttp server on a free port; yields the hook and its URL."""
    receiver = Hook(503, 503)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield receiver, str(server.make_url("/hook"))


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but never listening: connections are refused, and no one else takes it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


async def test_queue_destination_gets_the_record_with_its_amqp_properties(
    namespace: Namespace, amqp: Connection
) -> None:
    done, refused = namespace.queue_name("done"), namespace.queue_name("refused")
    await declare_queue(amqp, done)
    await declare_queue(amqp, refused)
    spec = namespace.functions(f"""
        [functions.echo]
        handler = "tests.support.handlers:echo"
        on_success = "queue:{done}"

        [functions.picky]
        handler = "tests.support.handlers:refuse"
        on_failure = "queue:{refused}"
    """)
    async with running_worker(namespace, spec), Client(settings=namespace.settings) as client:
        echoed = await client.invoke("echo", {"greeting": "hello"})
        rejected = await client.invoke("picky", {"n": 1})
        successes = by_request_id(await collect(amqp, done, 1, timeout=10))
        failures = by_request_id(await collect(amqp, refused, 1, timeout=10))
    await assert_empty(amqp, done, refused, namespace.names.failed)

    assert set(successes) == {echoed}
    message, record = successes[echoed]
    assert_header(message, echoed, "echo", contract.SUCCESS)
    assert message.delivery_mode == 2
    assert record["requestPayload"] == record["responsePayload"] == {"greeting": "hello"}
    assert record["invocation"]["id"] == echoed

    assert set(failures) == {rejected}
    message, record = failures[rejected]
    assert_header(message, rejected, "picky", contract.NON_RETRYABLE)
    assert record["responsePayload"]["errorType"] == "NonRetryableError"


async def test_function_destination_runs_the_other_function_with_the_record(
    namespace: Namespace, amqp: Connection
) -> None:
    sunk = namespace.queue_name("sunk")
    await declare_queue(amqp, sunk)
    spec = namespace.functions(f"""
        [functions.source]
        handler = "tests.support.handlers:echo"
        on_success = "function:sink"

        [functions.picky]
        handler = "tests.support.handlers:refuse"
        on_failure = "function:sink"

        [functions.sink]
        handler = "tests.support.handlers:echo"
        on_success = "queue:{sunk}"
    """)
    async with running_worker(namespace, spec), Client(settings=namespace.settings) as client:
        sent = {
            await client.invoke("source", {"n": 1}): contract.SUCCESS,
            await client.invoke("picky", {"n": 2}): contract.NON_RETRYABLE,
        }
        sink_records = records_of(await collect(amqp, sunk, 2, timeout=10))
    await assert_empty(amqp, sunk, namespace.names.failed, namespace.names.function_queue("sink"))

    # Each sink invocation carries one source record as its payload.
    forwarded = {
        record["requestPayload"]["requestContext"]["requestId"]: record for record in sink_records
    }
    assert len(sink_records) == len(forwarded) == len(sent)
    assert set(forwarded) == set(sent)
    for source_id, condition in sent.items():
        sink_record = forwarded[source_id]
        assert sink_record["requestPayload"]["requestContext"]["condition"] == condition
        assert sink_record["responsePayload"] == sink_record["requestPayload"]
        sink_id = sink_record["requestContext"]["requestId"]
        assert sink_id.startswith(f"{source_id}_")
        assert sink_record["invocation"]["meta"] == {"source": source_id, "condition": condition}
        assert [attempt for attempt, _ in attempts_of("sink", sink_id)] == [0]


async def test_http_destination_gets_the_record_as_json_after_retrying(
    namespace: Namespace, amqp: Connection, hook: tuple[Hook, str]
) -> None:
    receiver, url = hook  # answers 503 twice before it takes the record
    spec = namespace.functions(f"""
        [functions.echo]
        handler = "tests.support.handlers:echo"
        on_success = "{url}"
    """)
    blob = b"\x00\xffbinary"
    async with running_worker(namespace, spec), Client(settings=namespace.settings) as client:
        echoed = await client.invoke("echo", {"blob": blob, "n": 1})
        await wait_for(lambda: len(receiver.requests) >= 3, 10, "the record POSTed 3 times")
    await assert_empty(amqp, namespace.names.failed, namespace.names.function_queue("echo"))

    assert len(receiver.requests) == 3
    for headers, body in receiver.requests:
        assert headers["content-type"] == "application/json"
        assert headers["x-fc-request-id"] == echoed
        assert headers["x-asyncinvoke-condition"] == contract.SUCCESS
        record: dict[str, Any] = orjson.loads(body)
        assert record["requestContext"]["requestId"] == echoed
        assert record["requestContext"]["condition"] == contract.SUCCESS
        encoded = base64.b64encode(blob).decode("ascii")
        assert record["requestPayload"] == record["responsePayload"] == {"blob": encoded, "n": 1}


async def test_http_destination_that_is_down_sends_the_record_to_the_failure_queue(
    namespace: Namespace, amqp: Connection, closed_port: int
) -> None:
    url = f"http://127.0.0.1:{closed_port}/hook"
    spec = namespace.functions(f"""
        [functions.echo]
        handler = "tests.support.handlers:echo"
        on_success = "{url}"
    """)
    async with running_worker(namespace, spec), Client(settings=namespace.settings) as client:
        echoed = await client.invoke("echo", {"n": 1})
        failures = by_request_id(await collect(amqp, namespace.names.failed, 1, timeout=15))
    await assert_empty(amqp, namespace.names.failed, namespace.names.function_queue("echo"))

    assert set(failures) == {echoed}
    message, record = failures[echoed]
    assert_header(message, echoed, "echo", contract.SUCCESS)
    assert record["responsePayload"] == {"n": 1}
    assert record["deliveryError"]["destination"] == url
    assert url in record["deliveryError"]["error"]
    assert [attempt for attempt, _ in attempts_of("echo", echoed)] == [0]


async def test_queue_destination_that_does_not_exist_sends_the_record_to_the_failure_queue(
    namespace: Namespace, amqp: Connection
) -> None:
    missing = f"{namespace.ns}.missing"  # never declared
    spec = namespace.functions(f"""
        [functions.echo]
        handler = "tests.support.handlers:echo"
        on_success = "queue:{missing}"
    """)
    async with running_worker(namespace, spec), Client(settings=namespace.settings) as client:
        echoed = await client.invoke("echo", {"n": 1})
        failures = by_request_id(await collect(amqp, namespace.names.failed, 1, timeout=10))
    await assert_empty(amqp, namespace.names.failed, namespace.names.function_queue("echo"))

    assert set(failures) == {echoed}
    message, record = failures[echoed]
    assert_header(message, echoed, "echo", contract.SUCCESS)
    assert record["responsePayload"] == {"n": 1}
    assert record["deliveryError"]["destination"] == f"queue:{missing}"
    assert missing in record["deliveryError"]["error"]
    assert [attempt for attempt, _ in attempts_of("echo", echoed)] == [0]
