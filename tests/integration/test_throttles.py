"""Throttles against real HTTP functions (a local aiohttp server answering 429 with
``Retry-After: 1``, 503, and a port nothing listens on) and a Python handler raising
``Throttled``: retried on their own budget, never on max_retries; the budget's end is a
``ThrottleExhausted`` record; task history and metrics show each throttle."""

from __future__ import annotations

import itertools
import re
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aio_pika.abc import AbstractConnection
from aiohttp import web
from aiohttp.test_utils import TestServer

from asyncinvoke import Client
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.views import async_task
from tests.conftest import Namespace, collect, declare_queue, records_of, running_worker
from tests.integration.test_task_rerun import _until_status
from tests.support import handlers


class BusyFunction:
    """An HTTP function that answers ``status`` (with ``Retry-After: 1`` when asked) the
    first ``busy`` times an invocation comes, then 200."""

    def __init__(self, status: int, busy: int, retry_after: bool):
        self.status = status
        self.busy = busy
        self.retry_after = retry_after
        self.calls: dict[str, list[tuple[str, float]]] = defaultdict(list)

    async def handle(self, request: web.Request) -> web.Response:
        invocation = request.headers["x-fc-request-id"]
        calls = self.calls[invocation]
        calls.append((request.headers["x-asyncinvoke-attempt"], time.monotonic()))
        if len(calls) <= self.busy:
            headers = {"Retry-After": "1"} if self.retry_after else {}
            return web.Response(status=self.status, text="busy, come back", headers=headers)
        return web.json_response({"done": await request.json()})


@pytest.fixture
async def server() -> AsyncIterator[tuple[dict[str, BusyFunction], str]]:
    functions = {
        "slow_down": BusyFunction(429, busy=2, retry_after=True),
        "unavailable": BusyFunction(503, busy=1000, retry_after=True),
    }
    app = web.Application()
    for path, function in functions.items():
        app.router.add_post(f"/{path}", function.handle)
    async with TestServer(app, host="127.0.0.1") as running:
        yield functions, str(running.make_url("/"))


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but never listening: connections are refused, and no one else takes it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def _sample(worker: Any, name: str, **labels: str) -> float:
    return worker.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_throttled_attempts_wait_their_retry_after_spend_no_retry_and_then_succeed(
    namespace: Namespace, amqp: AbstractConnection,
    server: tuple[dict[str, BusyFunction], str], capsys: pytest.CaptureFixture[str],
) -> None:
    functions, base = server
    done = namespace.queue_name("done")
    await declare_queue(amqp, done)
    functions_file = namespace.functions(f"""
        [functions.slow_down]
        url = "{base}slow_down"
        max_retries = 0
        task_mode = true
        on_success = "queue:{done}"

        [functions.printer]
        handler = "tests.support.handlers:throttled_once"
        max_retries = 0
        on_success = "queue:{done}"
    """)
    store = f"sqlite:///{namespace.tmp_path / 'tasks.db'}"
    settings = namespace.settings.with_overrides(task_store=store)
    async with running_worker(namespace, functions_file, task_store=store) as worker, \
            Client(settings=settings) as client:
        task_id = await client.invoke("slow_down", {"n": 1}, task=True)
        printed = await client.invoke("printer", "page")
        records = {r["requestContext"]["requestId"]: r
                   for r in records_of(await collect(amqp, done, 2, timeout=20))}
        task = await _until_status(client, task_id, Status.SUCCEEDED)
        throttles = _sample(worker, "asyncinvoke_throttles_total", function="slow_down")
        retries = _sample(worker, "asyncinvoke_retries_total", function="slow_down")
        printer_throttles = _sample(worker, "asyncinvoke_throttles_total", function="printer")

    calls = functions["slow_down"].calls[task_id]
    assert [attempt for attempt, _ in calls] == ["0", "0", "0"]  # no retry was spent
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(calls)]
    assert all(1.0 <= gap < 3.0 for gap in gaps), gaps  # Retry-After: 1, honoured
    record = records[task_id]
    assert record["requestContext"]["condition"] == "Success"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["responsePayload"] == {"done": {"n": 1}}
    assert (throttles, retries) == (2, 0)

    view = async_task(task)
    assert view["alreadyRetriedTimes"] == 0
    # (Dequeued: the last fraction of a second before a throttled copy is due.)
    assert [event["status"] for event in view["events"] if event["status"] != "Dequeued"] == [
        "Enqueued", "Running", "Throttled", "Running", "Throttled", "Running", "Succeeded",
    ]
    assert "attempt 0 throttled (HTTP429: busy, come back)" in view["events"][2]["eventDetail"]

    assert records[printed]["requestContext"]["condition"] == "Success"
    printer_calls = [(attempt, at) for ran, attempt, at in handlers.CALLS["printer"]
                     if ran == printed]
    assert [attempt for attempt, _ in printer_calls] == [0, 0]
    assert printer_calls[1][1] - printer_calls[0][1] >= 1.0
    assert printer_throttles == 1
    # Each throttle's log line says so (JSON or console format alike).
    lines = [line for line in capsys.readouterr().out.splitlines() if task_id in line]
    throttled_lines = [line for line in lines if re.search(r"outcome\W+throttled", line)]
    assert len(throttled_lines) == 2
    assert re.search(r"throttles\W+2", throttled_lines[1])


async def test_a_spent_throttle_budget_ends_in_a_throttle_exhausted_record(
    namespace: Namespace, amqp: AbstractConnection,
    server: tuple[dict[str, BusyFunction], str], closed_port: int,
) -> None:
    functions, base = server
    failed = namespace.queue_name("failed")
    await declare_queue(amqp, failed)
    functions_file = namespace.functions(f"""
        [defaults]
        max_retries = 3
        throttle_budget = 3
        task_mode = true
        on_failure = "queue:{failed}"
        backoff = {{ initial = 1.0, multiplier = 2.0, jitter = 0.0 }}

        [functions.unavailable]
        url = "{base}unavailable"

        [functions.nobody]
        url = "http://127.0.0.1:{closed_port}/run"

        [functions.quota]
        handler = "tests.support.handlers:always_throttled"
        executor = "process"
    """)
    store = f"sqlite:///{namespace.tmp_path / 'tasks.db'}"
    settings = namespace.settings.with_overrides(task_store=store)
    async with running_worker(namespace, functions_file, task_store=store) as worker, \
            Client(settings=settings) as client:
        busy = await client.invoke("unavailable", {"n": 2}, task=True)
        nobody = await client.invoke("nobody", {"n": 3}, task=True)
        quota = await client.invoke("quota", {"n": 4}, task=True)
        records = {r["requestContext"]["requestId"]: r
                   for r in records_of(await collect(amqp, failed, 3, timeout=30))}
        busy_task = await _until_status(client, busy, Status.FAILED)
        nobody_task = await _until_status(client, nobody, Status.FAILED)
        retries = _sample(worker, "asyncinvoke_retries_total", function="unavailable")
        exhausted = _sample(worker, "asyncinvoke_failure_records_total",
                            function="nobody", condition="ThrottleExhausted")

    # 503 with Retry-After: 1 is tried at 0, ~1 and ~2 s; the next would be past 3 s.
    assert [attempt for attempt, _ in functions["unavailable"].calls[busy]] == ["0"] * 3
    assert records[busy]["requestContext"]["condition"] == "ThrottleExhausted"
    assert records[busy]["requestContext"]["approximateInvokeCount"] == 3
    assert records[busy]["responseContext"]["statusCode"] == 503
    assert records[busy]["responsePayload"]["errorType"] == "HTTP503"
    # Nothing listens: the backoff (1 s, then 2 s) applies; 1 + 2 s is past the budget.
    assert records[nobody]["requestContext"]["condition"] == "ThrottleExhausted"
    assert records[nobody]["requestContext"]["approximateInvokeCount"] == 2
    assert records[nobody]["responsePayload"]["errorType"] == "ClientConnectorError"
    assert retries == 0 and exhausted == 1
    # Throttled raised in a handler process of its own: the same, 3 tries 1 s apart.
    assert records[quota]["requestContext"]["condition"] == "ThrottleExhausted"
    assert records[quota]["requestContext"]["approximateInvokeCount"] == 3
    assert records[quota]["responsePayload"]["errorType"] == "Throttled"

    for task, throttled in ((busy_task, 2), (nobody_task, 1)):
        statuses = [event.status.value for event in task.events]
        assert statuses.count("Throttled") == throttled
        assert statuses[-1] == "Failed"
        assert task.events[-1].detail.startswith("ThrottleExhausted: throttled")
        assert task.attempts == 1  # alreadyRetriedTimes 0: max_retries untouched
