"""Payloads msgpack carries and JSON cannot: one record each, never a rerun, never a loop.

A map with bytes keys and a list nested 300 deep are valid msgpack, so any AMQP
producer can send them, but orjson refuses both. Before, the refusal was a crash of
the attempt: the handler ran again and again, and the record of a system queue
was retried once a second forever.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from asyncinvoke import Client, contract, records
from asyncinvoke.client import FunctionError
from asyncinvoke.tasks.views import async_task
from tests.conftest import (
    Namespace,
    WorkerProcess,
    collect,
    declare_queue,
    running_worker,
    wait_for,
)
from tests.integration.helpers import Connection, assert_empty, attempts_of, publish_raw
from tests.support.hostile import PAYLOADS

PYTHON_FUNCTIONS = ("plain", "plain_task", "refused")
HTTP_FUNCTIONS = ("web", "web_task")


class Endpoint:
    """A real HTTP server: keeps each request, answers 200."""

    def __init__(self) -> None:
        self.requests: dict[str, list[bytes]] = {"/fn": [], "/hook": []}

    async def handle(self, request: web.Request) -> web.Response:
        self.requests[request.path].append(await request.read())
        return web.json_response({"ok": True})

    def hook_records(self) -> dict[str, dict[str, Any]]:
        """The records POSTed to /hook, by invocation id; two for one id fail the test."""
        keyed: dict[str, dict[str, Any]] = {}
        for body in self.requests["/hook"]:
            record = orjson.loads(body)
            request_id = record["requestContext"]["requestId"]
            assert request_id not in keyed, f"two records for {request_id}"
            keyed[request_id] = record
        return keyed


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[Endpoint, str]]:
    receiver = Endpoint()
    app = web.Application()
    app.router.add_post("/fn", receiver.handle)
    app.router.add_post("/hook", receiver.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield receiver, str(server.make_url(""))


def _functions(namespace: Namespace, base_url: str) -> Any:
    return namespace.functions(f"""
        [functions.plain]
        handler = "tests.support.handlers:echo"
        on_success = "{base_url}/hook"

        [functions.plain_task]
        handler = "tests.support.handlers:echo"
        task_mode = true
        on_success = "{base_url}/hook"

        [functions.refused]
        handler = "tests.support.handlers:refuse"
        on_failure = "{base_url}/hook"

        [functions.web]
        url = "{base_url}/fn"

        [functions.web_task]
        url = "{base_url}/fn"
        task_mode = true
    """)


async def _publish_to_queue(amqp: Connection, queue: str, wire: Mapping[str, Any]) -> None:
    """Straight into a system queue, as the broker's dead-lettering would put it there."""
    async with amqp.channel(publisher_confirms=True) as channel:
        await channel.default_exchange.publish(
            aio_pika.Message(
                contract.pack(dict(wire)),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=wire["id"],
            ),
            routing_key=queue,
            timeout=10,
        )


def _carried_invocation(record: dict[str, Any]) -> Any:
    return contract.unpack(base64.b64decode(record[contract.INVOCATION_BASE64]))


async def _settled_and_empty(namespace: Namespace, amqp: Connection, worker: Any) -> None:
    """Nothing in flight in the worker, nothing waiting in any queue it serves."""
    await wait_for(lambda: not worker.in_flight, 15, "the worker to have nothing in flight")
    names = namespace.names
    queues = [names.dead, names.unrouted, names.failed]
    for function in (*PYTHON_FUNCTIONS, *HTTP_FUNCTIONS):
        queues += [names.function_queue(function), names.suspect_queue(function)]
    await assert_empty(amqp, *queues)


async def test_payloads_json_cannot_carry_end_in_one_record_each_and_nothing_loops(
    namespace: Namespace, amqp: Connection, endpoint: tuple[Endpoint, str], tmp_path: Path
) -> None:
    receiver, base_url = endpoint
    spec = _functions(namespace, base_url)
    task_store = f"sqlite:///{tmp_path}/tasks.db"
    dead_id = "dead_bytes_keys"
    async with running_worker(namespace, spec, task_store=task_store) as worker:
        for function in (*PYTHON_FUNCTIONS, *HTTP_FUNCTIONS):
            for kind, payload in PAYLOADS.items():
                wire = {"v": 1, "id": f"{function}_{kind}", "fn": function, "payload": payload}
                await publish_raw(amqp, namespace.names, wire)
        # A poison message the broker dead-lettered: its record goes to an HTTP destination.
        await _publish_to_queue(
            amqp,
            namespace.names.dead,
            {"v": 1, "id": dead_id, "fn": "refused", "payload": PAYLOADS["bytes_keys"]},
        )
        hook_ids = {f"{fn}_{kind}" for fn in PYTHON_FUNCTIONS for kind in PAYLOADS} | {dead_id}
        await wait_for(
            lambda: set(receiver.hook_records()) >= hook_ids, 30, "a record for each at the hook"
        )
        failed = [
            contract.unpack(message.body)
            for message in await collect(amqp, namespace.names.failed, 4, timeout=30)
        ]
        await _settled_and_empty(namespace, amqp, worker)
        await asyncio.sleep(1.5)  # a record written twice, or a rerun, would show by now
        store = await worker.tracker.store()
        tasks = {
            f"{fn}_{kind}": await store.get(f"{fn}_{kind}")
            for fn in ("plain_task", "web_task")
            for kind in PAYLOADS
        }
    await assert_empty(amqp, namespace.names.failed)

    # Python functions: each ran exactly once, and its record reached the HTTP destination
    # degraded, with the original invocation in base64, not one byte lost.
    hook_records = receiver.hook_records()
    assert set(hook_records) == hook_ids
    for function in PYTHON_FUNCTIONS:
        for kind, payload in PAYLOADS.items():
            invocation_id = f"{function}_{kind}"
            assert [attempt for attempt, _ in attempts_of(function, invocation_id)] == [0]
            record = hook_records[invocation_id]
            expected = contract.NON_RETRYABLE if function == "refused" else contract.SUCCESS
            assert record["requestContext"]["condition"] == expected
            assert record["invocation"] is None
            assert _carried_invocation(record)["payload"] == payload
            assert isinstance(record["requestPayload"], str)  # the readable rendering
            assert "requestPayload" in record[contract.ENCODING_ERROR]
    dead_record = hook_records[dead_id]
    assert dead_record["requestContext"]["condition"] == contract.DELIVERY_LIMIT_EXCEEDED
    assert _carried_invocation(dead_record)["payload"] == PAYLOADS["bytes_keys"]
    assert attempts_of("refused", dead_id) == []

    # HTTP functions: the event is never POSTed (not half of it, not a rendering), and the
    # invocation fails for good, with a record that names the reason.
    assert receiver.requests["/fn"] == []
    assert {r["requestContext"]["requestId"] for r in failed} == {
        f"{fn}_{kind}" for fn in HTTP_FUNCTIONS for kind in PAYLOADS
    }
    for record in failed:
        assert record["requestContext"]["condition"] == contract.NON_RETRYABLE
        assert record["responsePayload"]["errorType"] == "EventNotSerializable"
        assert "JSON" in record["responsePayload"]["errorMessage"]
        kind = next(kind for kind in PAYLOADS if record["invocation"]["id"].endswith(kind))
        assert record["invocation"]["payload"] == PAYLOADS[kind]

    # Task views (task get, GetAsyncTask) show such payloads as a rendering.
    for task_id, task in tasks.items():
        assert task is not None, task_id
        assert task.status.value == ("Succeeded" if task_id.startswith("plain") else "Failed")
        view = async_task(task)
        orjson.dumps(view)
        assert "not JSON" in view["taskPayload"]


async def test_a_system_queue_record_that_keeps_failing_ends_as_a_minimal_record(
    namespace: Namespace, amqp: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug (here, planted) that fails a record every time: after a bounded number of
    tries a minimal record stands in for it, and the message is acknowledged."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("record builder broke")

    monkeypatch.setattr(records, "delivery_limit", broken)
    monkeypatch.setattr(records, "unknown_function", broken)
    spec = namespace.functions("""
        [functions.echo]
        handler = "tests.support.handlers:echo"
    """)
    dead = {"v": 1, "id": "dead_one", "fn": "echo", "payload": {b"k": 1}}
    ghost = {"v": 1, "id": "ghost_one", "fn": "ghost", "payload": [1, 2]}
    async with running_worker(namespace, spec) as worker:
        await _publish_to_queue(amqp, namespace.names.dead, dead)
        await publish_raw(amqp, namespace.names, ghost)  # nothing serves 'ghost': unrouted
        failed = [
            contract.unpack(message.body)
            for message in await collect(amqp, namespace.names.failed, 2, timeout=30)
        ]
        await wait_for(lambda: not worker.in_flight, 15, "the worker to have nothing in flight")
        await asyncio.sleep(1.5)  # a message still circling would be back by now
        assert not worker.in_flight
    await assert_empty(
        amqp, namespace.names.dead, namespace.names.unrouted, namespace.names.failed
    )
    by_id = {record["requestContext"]["requestId"]: record for record in failed}
    assert set(by_id) == {"dead_one", "ghost_one"}
    for record, wire, condition in (
        (by_id["dead_one"], dead, contract.DELIVERY_LIMIT_EXCEEDED),
        (by_id["ghost_one"], ghost, contract.UNKNOWN_FUNCTION),
    ):
        assert record["requestContext"]["condition"] == condition
        assert record["requestContext"]["functionName"] == wire["fn"]
        assert record["responsePayload"]["errorType"] == "RecordNotWritten"
        assert "record builder broke" in record["responsePayload"]["errorMessage"]
        assert _carried_invocation(record) == wire


async def test_an_error_text_no_encoder_takes_ends_in_one_record_and_fails_nothing_else(
    namespace: Namespace, amqp: Connection
) -> None:
    """A lone surrogate in an exception's text: the record escapes it, and so does the
    JSON log line of the attempt (which, raising after the ack, failed the delivery)."""
    namespace.functions("""
        [functions.surr]
        handler = "tests.support.hostile:surrogate_error"
        max_retries = 0
    """)
    worker = await WorkerProcess(namespace, namespace.tmp_path / "functions.toml").start()
    try:
        async with Client(settings=namespace.settings) as client:
            invocation_id = await client.invoke("surr", {"n": 1})
        failed = await collect(amqp, namespace.names.failed, 1, timeout=30)
        await asyncio.sleep(2)  # a failed settlement logs within a second
    finally:
        await worker.terminate()
    names = namespace.names
    await assert_empty(
        amqp, names.failed, names.function_queue("surr"), names.suspect_queue("surr")
    )
    assert not [line for line in worker.lines if '"settle_failed"' in line]
    record = contract.unpack(failed[0].body)
    assert record["requestContext"]["requestId"] == invocation_id
    assert record["requestContext"]["condition"] == contract.RETRIES_EXHAUSTED
    assert record["responsePayload"]["errorType"] == "RuntimeError"
    assert record["responsePayload"]["errorMessage"] == "bad text \\udc80 from a decoder"
    attempts = [line for line in worker.lines if '"event":"attempt"' in line]
    assert len(attempts) == 1 and "udc80" in attempts[0]


async def test_a_record_for_a_function_destination_is_cut_to_the_payload_limit(
    namespace: Namespace, amqp: Connection
) -> None:
    """The record becomes the destination function's payload: over the payload limit it
    would be refused there (PayloadTooLarge) and the destination would never run."""
    sunk = namespace.queue_name("sunk")
    await declare_queue(amqp, sunk)
    spec = namespace.functions(f"""
        [functions.source]
        handler = "tests.support.handlers:echo"
        on_success = "function:sink"

        [functions.sink]
        handler = "tests.support.handlers:echo"
        on_success = "queue:{sunk}"
    """)
    payload = "x" * 4000  # in the record three times: payload, result, invocation
    async with running_worker(namespace, spec, max_payload_bytes=10_000) as worker:
        async with Client(settings=namespace.settings) as client:
            source_id = await client.invoke("source", payload)
        (message,) = await collect(amqp, sunk, 1, timeout=30)
        await wait_for(lambda: not worker.in_flight, 15, "the worker to have nothing in flight")
    names = namespace.names
    await assert_empty(amqp, sunk, names.failed, names.function_queue("sink"))
    forwarded = contract.unpack(message.body)["requestPayload"]  # the source's record
    assert forwarded["requestContext"]["requestId"] == source_id
    assert forwarded["invocation"]["payload"] == payload  # still replayable
    assert forwarded["responsePayload"].startswith("'xxx")  # the result, rendered
    assert "over the limit of 10000" in forwarded[contract.ENCODING_ERROR]


async def test_a_result_past_64_bits_fails_once_as_not_serializable(
    namespace: Namespace, amqp: Connection
) -> None:
    """msgpack raises OverflowError (not TypeError or ValueError) for such an integer:
    it crashed the attempt, which then ran again and again."""
    done = namespace.queue_name("done")
    await declare_queue(amqp, done)
    spec = namespace.functions(f"""
        [functions.huge]
        handler = "tests.support.hostile:huge_int_result"
        on_success = "queue:{done}"
    """)
    async with running_worker(namespace, spec) as worker:
        async with Client(settings=namespace.settings) as client:
            queued = await client.invoke("huge", None)
            with pytest.raises(FunctionError) as called:
                await client.call("huge", None, timeout=20)
        (message,) = await collect(amqp, namespace.names.failed, 1, timeout=30)
        await wait_for(lambda: not worker.in_flight, 15, "the worker to have nothing in flight")
    names = namespace.names
    await assert_empty(amqp, done, names.failed, names.function_queue("huge"))
    assert called.value.error["errorType"] == "ResultNotSerializable"
    record = contract.unpack(message.body)
    assert record["requestContext"]["requestId"] == queued
    assert record["requestContext"]["condition"] == contract.NON_RETRYABLE
    assert record["responsePayload"]["errorType"] == "ResultNotSerializable"
