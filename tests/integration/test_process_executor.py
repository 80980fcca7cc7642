"""``executor = "process"``: sync handlers in processes of their own, for real.

Timeouts bite (the process is killed and the next attempt runs), a handler that kills
its process is an ordinary failed attempt, data crosses as msgpack, and a handler that
holds the GIL leaves the worker's loop (and its connection's heartbeats) alone.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from asyncinvoke import Client, contract
from tests.conftest import Namespace, collect, declare_queue, running_worker

FAST_RETRY = (
    "max_retries = 1\nbackoff = { initial = 0.0, multiplier = 1.0, max = 0.0, jitter = 0.0 }"
)


async def _records(amqp, queue: str, count: int, timeout: float = 30) -> list[dict]:
    return [contract.unpack(m.body) for m in await collect(amqp, queue, count, timeout=timeout)]


async def test_handlers_run_in_other_processes_and_data_crosses_as_msgpack(
    namespace: Namespace, amqp
) -> None:
    results = namespace.queue_name("results")
    await declare_queue(amqp, results)
    functions_file = namespace.functions(f"""
        [functions.whose]
        handler = "tests.support.handlers:sync_whose"
        executor = "process"
        concurrency = 2
        on_success = "queue:{results}"

        [functions.echo]
        handler = "tests.support.handlers:sync_echo"
        executor = "process"
        on_success = "queue:{results}"
    """)
    event = {"bytes": b"\x00\xff", "text": "\u00e9", "list": [1, 2.5, None, True], "n": -7}
    async with running_worker(namespace, functions_file) as worker, Client(
        settings=namespace.settings
    ) as client:
        await client.invoke_many([("whose", None)] * 6)
        await client.invoke("echo", event)
        got = await _records(amqp, results, 7)
        assert worker.functions["whose"].runner.cancellable
    by_function: dict[str, list[object]] = {}
    for record in got:
        by_function.setdefault(record["requestContext"]["functionName"], []).append(
            record["responsePayload"]
        )
    assert by_function["echo"] == [event]
    pids = set(by_function["whose"])
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # concurrency 2: two at most


async def test_a_handler_that_loops_forever_ends_at_its_timeout_and_the_next_attempt_runs(
    namespace: Namespace, amqp, tmp_path: Path
) -> None:
    results = namespace.queue_name("results")
    await declare_queue(amqp, results)
    functions_file = namespace.functions(f"""
        [functions.spin]
        handler = "tests.support.handlers:spin_once_then_pid"
        executor = "process"
        timeout = 1
        on_success = "queue:{results}"
        {FAST_RETRY}
    """)
    pidfile = tmp_path / "spinning.pid"
    async with running_worker(namespace, functions_file) as worker, Client(
        settings=namespace.settings
    ) as client:
        await client.invoke("spin", {"pidfile": str(pidfile)})
        [record] = await _records(amqp, results, 1)
        durations = worker.metrics.attempt_duration.labels("spin")
        attempts = durations._sum.get()  # both attempts' run time
        count = worker.metrics.invocations.labels("spin", "retry")._value.get()
    assert record["requestContext"]["approximateInvokeCount"] == 2
    spinning = int(pidfile.read_text())
    assert record["responsePayload"] != spinning  # a fresh process ran the retry
    # The first attempt ran 1 s and was ended then (the watchdog ticks every 20 ms);
    # the second returned at once.
    assert count == 1
    assert 1.0 <= attempts <= 1.5, attempts
    # Killed, not left spinning in the background as a thread would be.
    async with asyncio.timeout(5):
        while _alive(spinning):
            await asyncio.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_a_handler_that_kills_its_process_is_an_ordinary_failed_attempt(
    namespace: Namespace, amqp
) -> None:
    results = namespace.queue_name("results")
    await declare_queue(amqp, results)
    functions_file = namespace.functions(f"""
        [functions.crash]
        handler = "tests.support.handlers:exit_hard"
        executor = "process"
        on_success = "queue:{results}"
        {FAST_RETRY}
    """)
    async with running_worker(namespace, functions_file) as worker, Client(
        settings=namespace.settings
    ) as client:
        await client.invoke("crash", "exit")
        await client.invoke("crash", "segfault")
        got = await _records(amqp, results, 2)
        retries = worker.metrics.invocations.labels("crash", "retry")._value.get()
    assert [r["requestContext"]["approximateInvokeCount"] for r in got] == [2, 2]
    assert retries == 2


async def test_a_handler_holding_the_gil_in_a_process_leaves_the_worker_loop_turning(
    namespace: Namespace, amqp
) -> None:
    """The same handler in a thread stops the loop for as long as it runs (measured in
    docs/benchmarks.md): with a 1 s heartbeat the broker would close the connection."""
    results = namespace.queue_name("results")
    await declare_queue(amqp, results)
    functions_file = namespace.functions(f"""
        [functions.gil]
        handler = "tests.support.handlers:hold_gil"
        executor = "process"
        on_success = "queue:{results}"
    """)
    lags: list[float] = []

    async def measure_lag() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - before - 0.01)

    async with running_worker(
        namespace, functions_file, amqp_url=namespace.settings.amqp_url + "?heartbeat=1"
    ) as worker, Client(settings=namespace.settings) as client:
        await client.invoke("gil", {"n": 60_000_000})
        ticker = asyncio.create_task(measure_lag())
        try:
            [record] = await _records(amqp, results, 1)
        finally:
            ticker.cancel()
        assert worker.broker.is_connected
    assert record["responseContext"]["functionError"] == ""
    assert max(lags) < 0.5, max(lags)
