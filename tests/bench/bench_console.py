"""``python -m tests.bench.bench_console [--tasks N] [--records N] [--private-broker]``:
console page times.

Fills a throwaway namespace with N tasks in a SQLite task store (spread over 6 days,
4 functions, mostly Succeeded) and N records in ``{ns}.failed``, starts ``asyncinvoke
serve`` on them, waits for the failures summary (one full browse, in the background),
then times each page: ``REPEAT`` sequential requests after two warm-ups, median and
slowest. Deletes the namespace and the store at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

from asyncinvoke import contract
from asyncinvoke.console.failures import PAGE_CACHE_S
from asyncinvoke.tasks import sqlite as sqlite_store
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import Event, Task
from tests.bench.bench_dlq import cleanup, fill
from tests.bench.common import AMQP_URL, ROOT, Namespace, say
from tests.support import private_broker

REPEAT = 15
ROUNDS = 5
FUNCTIONS = ("resize", "notify", "report", "sync")
CONFIG = "\n".join(
    f'[functions.{name}]\nhandler = "tests.console.handlers:hello"\ntask_mode = true\n'
    for name in FUNCTIONS
)
DAY_MS = 86_400_000


def _status(index: int) -> Status:
    bucket = index % 100
    if bucket < 90:
        return Status.SUCCEEDED
    if bucket < 95:
        return Status.FAILED
    return Status.ENQUEUED if bucket < 98 else Status.STOPPED


def fill_tasks(path: Path, n: int, now_ms: int) -> None:
    asyncio.run(_create_schema(path))
    payload = contract.pack({"bucket": "uploads", "key": "user/1/photo.png"})
    rows = []
    for index in range(n):
        created = now_ms - 6 * DAY_MS + index * (6 * DAY_MS // n)
        status = _status(index)
        ended = created + 150 if status is not Status.ENQUEUED else None
        started = created + 100 if status in (Status.SUCCEEDED, Status.FAILED) else None
        task = Task(
            id=f"task{index:08d}", function=FUNCTIONS[index % len(FUNCTIONS)], status=status,
            created_at=created, updated_at=ended or created, attempts=1 if started else 0,
            started_at=started, ended_at=ended, payload=payload,
            error="TimeoutError: took too long" if status is Status.FAILED else None,
            events=(Event(Status.ENQUEUED, created, "accepted"), Event(status, created + 150)),
        )
        rows.append(sqlite_store._row_of(task))
    with sqlite3.connect(path) as connection:
        connection.executemany(sqlite_store._INSERT, rows)


async def _create_schema(path: Path) -> None:
    store = sqlite_store.SqliteTaskStore(str(path))
    await store.open()
    await store.close()


async def _time(session: aiohttp.ClientSession, url: str) -> list[float]:
    """The first request's time, then REPEAT more after a warm-up."""
    took = []
    for attempt in range(REPEAT + 2):
        started = time.perf_counter()
        async with session.get(url, allow_redirects=False) as response:
            await response.read()
            assert response.status in (200, 303), (url, response.status)
        if attempt != 1:
            took.append((time.perf_counter() - started) * 1000)
    return took


async def measure(base: str, now_ms: int, tasks: int) -> list[tuple[str, list[float]]]:
    day = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((now_ms - 3 * DAY_MS) / 1000))
    day_end = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((now_ms - 2 * DAY_MS) / 1000))
    middle = f"task{tasks // 2:08d}"
    async with aiohttp.ClientSession(base) as session:
        say("waiting for the failures summary (a full browse)")
        started = time.monotonic()
        while True:
            async with session.get("/console/failures") as response:
                summary = re.search(r"a full read took ([0-9.]+) s", await response.text())
                if summary:
                    say(f"summary of the failure queue: {summary[1]} s")
                    break
            if time.monotonic() - started > 600:
                raise SystemExit("no failures summary within 600 s")
            await asyncio.sleep(1)
        async with session.get("/console/tasks?function=resize") as response:
            token = re.search(r"token=([A-Za-z0-9_-]+)", await response.text())
        assert token is not None
        pages = [
            ("functions", "/console/functions"),
            ("live.json", "/console/live.json?page=failures"),
            ("tasks", "/console/tasks"),
            ("tasks, one function", "/console/tasks?function=resize"),
            ("tasks, one function, next page", f"/console/tasks?function=resize&token={token[1]}"),
            ("tasks, status Failed", "/console/tasks?status=Failed"),
            ("tasks, function + status", "/console/tasks?function=notify&status=Stopped"),
            ("tasks, one day's starts", f"/console/tasks?from={day}&to={day_end}"),
            ("tasks, search by id", f"/console/tasks?id={middle}"),
            ("tasks, id prefix", "/console/tasks?id=task0009"),
            ("task page", f"/console/tasks/{middle}"),
        ]
        # A page of records read less than 10 s ago is shown again while the depth is
        # unchanged (console/failures.py).
        failure_pages = [
            ("failures, records 1-25", "/console/failures"),
            ("failures, records 26-50", "/console/failures?start=25"),
            ("failures, records 51-75", "/console/failures?start=50"),
            ("failures, records 101-125 (the deepest)", "/console/failures?start=100"),
        ]
        results = []
        for label, path in pages:
            say(label)
            results.append((label, await _time(session, path)))
        # Each round comes after the pages read in the last one expired: every request of
        # a round is a browse. ROUNDS of them; then the cached page, as for the others.
        browses: dict[str, list[float]] = {label: [] for label, _ in failure_pages}
        for round_number in range(ROUNDS):
            say(f"failure pages, round {round_number + 1} of {ROUNDS}")
            await asyncio.sleep(PAGE_CACHE_S + 1)
            for label, path in failure_pages:
                started = time.perf_counter()
                async with session.get(path) as response:
                    await response.read()
                browses[label].append((time.perf_counter() - started) * 1000)
        for label, path in failure_pages:
            cached = (await _time(session, path))[1:]
            results.append((f"{label}: a browse ({ROUNDS} rounds)", [0.0, *browses[label]]))
            results.append((f"{label}: read before", [0.0, *cached]))
        return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument(
        "--private-broker", action="store_true",
        help="run against a fresh RabbitMQ node of its own (tests/support/private_broker.py)",
    )
    args = parser.parse_args()
    if args.private_broker:
        node = private_broker.start()
        try:
            subprocess.run(
                [sys.executable, "-m", "tests.bench.bench_console", "--tasks", str(args.tasks),
                 "--records", str(args.records)],
                env={**os.environ, "ASYNCINVOKE_AMQP_URL": node.url}, check=True,
            )
        finally:
            node.stop()
        return
    space = Namespace("console")
    now_ms = time.time_ns() // 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store = folder / "tasks.db"
        say(f"{args.tasks:,} tasks into {store}")
        fill_tasks(store, args.tasks, now_ms)
        say(f"{args.records:,} records into {space.names.failed}")
        asyncio.run(fill(space.names, args.records))
        config = folder / "functions.toml"
        config.write_text(CONFIG)
        port = 9700 + os.getpid() % 200
        env = {
            **os.environ, "ASYNCINVOKE_AMQP_URL": AMQP_URL, "ASYNCINVOKE_NAMESPACE": space.ns,
            "ASYNCINVOKE_TASK_STORE": f"sqlite:///{store}", "PYTHONPATH": str(ROOT),
        }
        serve = subprocess.Popen(
            [sys.executable, "-m", "asyncinvoke", "serve", "--config", str(config),
             "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=(folder / "serve.log").open("wb"),
        )
        try:
            _wait_ready(f"http://127.0.0.1:{port}/readyz", serve)
            results = asyncio.run(measure(f"http://127.0.0.1:{port}", now_ms, args.tasks))
        finally:
            serve.terminate()
            serve.wait(30)
            space.specs = []
            asyncio.run(cleanup(space.names))
            asyncio.run(_delete_function_queues(space))
    print(f"\n{args.tasks:,} tasks, {args.records:,} failure records; ms per page "
          f"({REPEAT} requests each)\n")
    print("| page | first request | median | slowest |")
    print("|---|---:|---:|---:|")
    for label, (first, *took) in results:
        shown = f"{first:.1f}" if first else "-"
        print(f"| {label} | {shown} | {statistics.median(took):.1f} | {max(took):.1f} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


def _wait_ready(url: str, serve: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise SystemExit(f"serve exited with {serve.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("serve not ready within 60 s")


async def _delete_function_queues(space: Namespace) -> None:
    from asyncinvoke import functions, topology

    specs = [functions.FunctionSpec(name) for name in FUNCTIONS]
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL)
    try:
        await topology.delete(connection, topology.functions_plan(space.names, specs))
    finally:
        await connection.close()


if __name__ == "__main__":
    main()
