"""kill -9 between a handler's return and its ack, at each follow-up: nothing is lost.

The rule: a delivery is acknowledged only once every publish that follows from it
(a retry, a forward into the ladder, a record) is confirmed. Each test starts a worker
with ASYNCINVOKE_TESTPOINT naming one point (asyncinvoke/_testpoints.py): the
delivery stops there, its attempt over and its follow-up not yet published, while the
rest of the worker goes on (acks included). The test checks that the broker counts the
delivery unacknowledged and that nothing followed yet, kills the worker with SIGKILL,
starts another, and waits for what should follow: it comes (at least once), after the
delivery came back redelivered (the new worker moves it to the suspects).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web

from asyncinvoke import Client, _testpoints, contract
from tests.conftest import Namespace, WorkerProcess, declare_queue
from tests.integration.helpers import (
    Connection,
    RecordSink,
    assert_namespace_empty,
    publish_raw,
)
from tests.support.infrastructure import require_tool, until_unacknowledged

REACH_TIMEOUT_S = 30.0  # the first worker's start and the attempt, on a loaded machine
RECORD_TIMEOUT_S = 40.0  # the second worker's start, the suspect's run, a retry or a delay


class HookServer:
    """A real HTTP endpoint for the destination: keeps every record POSTed to it."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.url = ""

    async def _hook(self, request: web.Request) -> web.Response:
        self.records.append(orjson.loads(await request.read()))
        return web.Response(status=204)

    async def __aenter__(self) -> HookServer:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._runner.cleanup()


Send = Callable[[Namespace, Connection, str, str], Awaitable[None]]  # ..., function, id


@dataclass
class Case:
    """One kill point: the functions it needs and how its invocation is sent."""

    functions: str  # TOML; {results} and {hook} are filled in
    function: str  # whose queue the stopped delivery came from
    send: Send
    record_queue: str | None  # where its record ends ("results" or "failed"); None: HTTP
    condition: str


def _client_send(payload: object, *, delay: float = 0) -> Send:
    async def send(namespace: Namespace, amqp: Connection, function: str, inv_id: str) -> None:
        async with Client(settings=namespace.settings) as client:
            await client.invoke(function, payload, delay=delay, id=inv_id)

    return send


async def _plain_delayed(
    namespace: Namespace, amqp: Connection, function: str, inv_id: str
) -> None:
    """A plain AMQP producer's delayed invocation: the worker forwards it into the ladder."""
    wire = {
        "v": 1,
        "id": inv_id,
        "fn": function,
        "payload": {"plain": True},
        "created_at": time.time_ns() // 1_000_000,
        "delay": 3,
    }
    await publish_raw(amqp, namespace.names, wire)


ECHO = """
    [functions.echo]
    handler = "tests.support.handlers:echo"
    on_success = "queue:{results}"
"""

CASES = {
    "retry": Case(
        """
        [functions.flaky]
        handler = "tests.support.handlers:fail_until"
        max_retries = 1
        backoff = {{ initial = 0.05, jitter = 0.0 }}
        on_success = "queue:{results}"
        """,
        "flaky",
        _client_send({"fail_times": 1}),
        "results",
        contract.SUCCESS,
    ),
    "forward": Case(ECHO, "echo", _plain_delayed, "results", contract.SUCCESS),
    "hold": Case(
        ECHO, "echo", _client_send({"held": True}, delay=0.9), "results", contract.SUCCESS
    ),
    "failure_record": Case(
        """
        [functions.picky]
        handler = "tests.support.handlers:refuse"
        """,
        "picky",
        _client_send({"refused": True}),
        "failed",
        contract.NON_RETRYABLE,
    ),
    "function_destination": Case(
        """
        [functions.echo]
        handler = "tests.support.handlers:echo"
        on_success = "function:sink"

        [functions.sink]
        handler = "tests.support.handlers:echo"
        on_success = "queue:{results}"
        """,
        "echo",
        _client_send({"chained": True}),
        "results",
        contract.SUCCESS,
    ),
    "http_destination": Case(
        """
        [functions.echo]
        handler = "tests.support.handlers:echo"
        on_success = "{hook}"
        """,
        "echo",
        _client_send({"posted": True}),
        None,
        contract.SUCCESS,
    ),
}


def test_every_test_point_has_a_case() -> None:
    assert set(CASES) == set(_testpoints.POINTS)


@pytest.fixture
async def hook() -> AsyncIterator[HookServer]:
    async with HookServer() as server:
        yield server


async def _reached(worker: WorkerProcess, point: str) -> None:
    """Wait until a delivery in ``worker`` stopped at ``point``."""
    mark = f'"point":"{point}"'
    deadline = time.monotonic() + REACH_TIMEOUT_S
    while not any('"testpoint_reached"' in line and mark in line for line in worker.lines):
        assert worker.process is not None and worker.process.returncode is None, (
            "\n".join(worker.lines[-20:])
        )
        assert time.monotonic() < deadline, f"no delivery reached {point!r}"
        await asyncio.sleep(0.02)


async def _records_of(
    inv_id: str, sink: RecordSink, queue: str | None, hook: HookServer
) -> list[dict[str, Any]]:
    """Wait for the records about ``inv_id`` in ``queue`` (None: the HTTP hook)."""
    deadline = time.monotonic() + RECORD_TIMEOUT_S
    while time.monotonic() < deadline:
        if queue is None:
            records = list(hook.records)
        else:
            records = [contract.unpack(m.body) for m in sink.received[queue]]
        mine = [record for record in records if inv_id in _ids_in(record)]
        if mine:
            return mine
        await asyncio.sleep(0.05)
    raise AssertionError(f"no record about {inv_id} within {RECORD_TIMEOUT_S} s: it was lost")


def _ids_in(record: dict[str, Any]) -> set[str]:
    """The invocation a record is about, and, for a function destination's record, the
    invocation whose record was its payload."""
    ids = {str(record["requestContext"]["requestId"])}
    payload = record.get("requestPayload")
    if isinstance(payload, dict) and isinstance(payload.get("requestContext"), dict):
        ids.add(str(payload["requestContext"]["requestId"]))
    return ids


@pytest.mark.parametrize("point", list(CASES))
async def test_a_kill_at_the_follow_up_loses_nothing(
    point: str, namespace: Namespace, amqp: Connection, hook: HookServer
) -> None:
    require_tool("rabbitmqctl")
    case = CASES[point]
    results = namespace.queue_name("results")
    await declare_queue(amqp, results)
    functions = namespace.functions(case.functions.format(results=results, hook=hook.url))
    inv_id = f"kill_{point}_{namespace.ns}"
    source = namespace.names.function_queue(case.function)
    record_queue = {"results": results, "failed": namespace.names.failed}.get(
        case.record_queue or ""
    )

    first = WorkerProcess(namespace, functions.path, ASYNCINVOKE_TESTPOINT=point)
    second = WorkerProcess(namespace, functions.path)
    await first.start()  # declares the namespace, the failure queue included
    try:
        async with RecordSink(amqp, results, namespace.names.failed) as sink:
            await case.send(namespace, amqp, case.function, inv_id)
            await _reached(first, point)
            # In flight: the broker holds the delivery unacknowledged, and nothing followed
            # yet (no record; no retry or forward waiting in a queue or the ladder).
            await until_unacknowledged(source, 1)
            assert not sink.request_ids() and not hook.records
            await assert_namespace_empty(amqp, namespace.names, list(functions.functions))
            await first.kill()

            await second.start()
            records = await _records_of(inv_id, sink, record_queue, hook)
            assert await second.terminate() == 0
    finally:
        await first.kill()
        await second.kill()
    # It came back redelivered: the new worker took it for a suspect.
    assert any('"suspect"' in line and inv_id in line for line in second.lines), (
        "\n".join(second.lines[-20:])
    )

    assert all(record["requestContext"]["condition"] == case.condition for record in records)
    await assert_namespace_empty(amqp, namespace.names, list(functions.functions))
