"""The task store contract, proven against both stores: SQLite (a file in tmp_path) and
PostgreSQL (a schema of its own per test, dropped afterwards).

PostgreSQL is not optional here: when its server is down these tests fail, they do not skip.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from asyncinvoke import contract
from asyncinvoke.errors import ConfigError
from asyncinvoke.tasks import open_store
from asyncinvoke.tasks.postgres import PostgresTaskStore
from asyncinvoke.tasks.sqlite import SqliteTaskStore
from asyncinvoke.tasks.states import TERMINAL, WAITING, Status
from asyncinvoke.tasks.store import (
    Claim,
    Task,
    TaskExists,
    TaskFinished,
    TaskNotEnded,
    TaskNotFound,
    TaskNotRerunnable,
    TaskStore,
)

POSTGRES_DSN = os.environ.get(
    "ASYNCINVOKE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
NOW = 1_700_000_000_000
LEASE_MS = 30_000
PAYLOAD = contract.pack({"key": "a.png"})


class Stores:
    """Opens stores on one place (a SQLite file, a PostgreSQL schema), each its own object
    with its own connections, as separate worker processes would."""

    def __init__(self, kind: str, tmp_path: Path):
        self.kind = kind
        self.sqlite_path = str(tmp_path / "tasks.db")
        self.schema = f"test_{uuid.uuid4().hex[:12]}"
        self.opened: list[TaskStore] = []

    async def open(self, **options: Any) -> TaskStore:
        store: TaskStore
        if self.kind == "sqlite":
            store = SqliteTaskStore(self.sqlite_path, **options)
        else:
            store = PostgresTaskStore(POSTGRES_DSN, schema=self.schema, **options)
        await store.open()
        self.opened.append(store)
        return store

    async def close(self) -> None:
        for store in self.opened:
            await store.close()
        if self.kind == "postgresql" and self.opened:
            conn = await asyncpg.connect(POSTGRES_DSN)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            finally:
                await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    opened = Stores(request.param, tmp_path)
    yield opened
    await opened.close()


@pytest.fixture
async def store(stores: Stores) -> TaskStore:
    return await stores.open()


async def task_in(store: TaskStore, status: Status, task_id: str = "inv-1") -> Task:
    """A task brought to ``status`` the way a worker would bring it there."""
    task = await store.create(task_id, "resize", PAYLOAD, NOW)
    if status is Status.ENQUEUED:
        return task
    if status in (Status.STOPPED, Status.STOPPING):
        if status is Status.STOPPING:
            await store.claim(task_id, 1, NOW + 1, LEASE_MS)
        return await store.request_stop(task_id, NOW + 2)
    if status in (Status.DEQUEUED, Status.EXPIRED, Status.INVALID):
        moved = await store.transition(task_id, status, NOW + 1, "by the test")
    else:
        await store.claim(task_id, 1, NOW + 1, LEASE_MS)
        if status is Status.RUNNING:
            moved = await store.get(task_id)
        else:
            moved = await store.transition(task_id, status, NOW + 2, "by the test")
    assert moved is not None and moved.status is status
    return moved


# create / ensure


async def test_create_records_an_enqueued_task_and_its_first_event(store: TaskStore) -> None:
    created = await store.create("inv-1", "resize", PAYLOAD, NOW, "accepted over HTTP")

    read = await store.get("inv-1")
    assert read == created
    assert read.status is Status.ENQUEUED
    assert (read.function, read.payload, read.created_at, read.attempts) == (
        "resize", PAYLOAD, NOW, 0,
    )
    assert [(e.status, e.timestamp, e.detail) for e in read.events] == [
        (Status.ENQUEUED, NOW, "accepted over HTTP")
    ]


async def test_a_task_id_is_used_once(store: TaskStore) -> None:
    await store.create("inv-1", "resize", PAYLOAD, NOW)

    with pytest.raises(TaskExists) as raised:
        await store.create("inv-1", "other", None, NOW + 5)
    assert raised.value.task_id == "inv-1"
    kept = await store.get("inv-1")
    assert kept is not None and (kept.function, kept.created_at) == ("resize", NOW)


async def test_get_of_an_unknown_id_is_none(store: TaskStore) -> None:
    assert await store.get("nope") is None


async def test_ensure_inserts_once_and_then_returns_what_is_there(store: TaskStore) -> None:
    first = await store.ensure("inv-1", "resize", PAYLOAD, NOW)
    again = await store.ensure("inv-1", "resize", PAYLOAD, NOW + 10)

    assert first == again
    assert [(e.status, e.detail) for e in again.events] == [
        (Status.ENQUEUED, "received over AMQP")
    ]


async def test_ensure_leaves_a_task_created_over_http_as_it_is(store: TaskStore) -> None:
    created = await task_in(store, Status.RUNNING)

    assert await store.ensure("inv-1", "resize", PAYLOAD, NOW + 10) == created


async def test_a_task_outlives_its_store_object(stores: Stores) -> None:
    first = await stores.open()
    created = await first.create("inv-1", "resize", PAYLOAD, NOW)
    await first.close()

    assert await (await stores.open()).get("inv-1") == created


async def test_text_no_store_takes_as_it_is_is_kept_with_the_replacement_character(
    store: TaskStore,
) -> None:
    # PostgreSQL refuses NUL in text and JSONB; no UTF-8 encoder takes a lone surrogate.
    unstorable = "HTTP500: said \x00, read \udc80"
    await store.create("inv-1", "resize", PAYLOAD, NOW, f"accepted {unstorable}")
    await store.claim("inv-1", 0, NOW + 1, LEASE_MS)
    moved = await store.transition(
        "inv-1", Status.FAILED, NOW + 2, f"failed: {unstorable}", error=unstorable
    )

    read = await store.get("inv-1")
    assert read == moved
    assert read.error == "HTTP500: said \ufffd, read \ufffd"
    assert [event.detail for event in read.events] == [
        "accepted HTTP500: said \ufffd, read \ufffd", "attempt 0",
        "failed: HTTP500: said \ufffd, read \ufffd",
    ]


async def test_a_lookup_by_text_no_store_takes_finds_nothing_instead_of_failing(
    store: TaskStore,
) -> None:
    await store.create("inv-1", "resize", PAYLOAD, NOW)
    for unstorable in ("inv\x00-1", "inv\udc80-1"):
        assert await store.get(unstorable) is None
        assert (await store.list(prefix=unstorable)).tasks == []
        assert (await store.list(function=unstorable)).tasks == []
        with pytest.raises(TaskNotFound):
            await store.request_stop(unstorable, NOW + 1)


# claim


@pytest.mark.parametrize("status", sorted(WAITING))
async def test_claim_makes_a_waiting_task_running_under_a_lease(
    store: TaskStore, status: Status
) -> None:
    before = await task_in(store, status)

    claimed = await store.claim("inv-1", 3, NOW + 100, LEASE_MS)

    assert claimed.claim is Claim.CLAIMED
    task = claimed.task
    assert task is not None and task == await store.get("inv-1")
    assert task.status is Status.RUNNING
    assert task.attempts == before.attempts + 1
    assert task.lease_until == NOW + 100 + LEASE_MS
    assert task.started_at == (before.started_at or NOW + 100)
    assert task.events[-1].status is Status.RUNNING
    assert task.events[-1].timestamp == NOW + 100
    assert task.events[-1].detail == "attempt 3"


@pytest.mark.parametrize("status", sorted(TERMINAL - {Status.STOPPED}))
async def test_claim_of_a_finished_task_says_finished_and_changes_nothing(
    store: TaskStore, status: Status
) -> None:
    before = await task_in(store, status)

    claimed = await store.claim("inv-1", 2, NOW + 100, LEASE_MS)

    assert claimed.claim is Claim.FINISHED
    assert claimed.task == before == await store.get("inv-1")


async def test_claim_of_a_task_stopped_before_it_started_says_stopped(store: TaskStore) -> None:
    before = await task_in(store, Status.STOPPED)

    claimed = await store.claim("inv-1", 1, NOW + 100, LEASE_MS)

    assert claimed.claim is Claim.STOPPED
    assert claimed.task == before


async def test_claim_of_a_stopped_task_that_had_run_says_finished(store: TaskStore) -> None:
    await task_in(store, Status.STOPPING)
    await store.transition("inv-1", Status.STOPPED, NOW + 50, "cancelled")

    assert (await store.claim("inv-1", 2, NOW + 100, LEASE_MS)).claim is Claim.FINISHED


async def test_claim_under_a_live_lease_is_busy(store: TaskStore) -> None:
    running = await task_in(store, Status.RUNNING)
    assert running.lease_until is not None

    for now in (NOW + 2, running.lease_until):
        claimed = await store.claim("inv-1", 2, now, LEASE_MS)
        assert claimed.claim is Claim.BUSY
        assert claimed.task == running


async def test_claim_after_the_lease_ran_out_takes_the_task_over(store: TaskStore) -> None:
    running = await task_in(store, Status.RUNNING)
    assert running.lease_until is not None
    later = running.lease_until + 1

    claimed = await store.claim("inv-1", 1, later, LEASE_MS)

    assert claimed.claim is Claim.CLAIMED
    assert claimed.task is not None
    assert claimed.task.attempts == 2
    assert claimed.task.started_at == running.started_at
    assert claimed.task.lease_until == later + LEASE_MS


async def test_claim_of_a_stopping_task_whose_worker_died_stops_it(store: TaskStore) -> None:
    stopping = await task_in(store, Status.STOPPING)
    assert stopping.lease_until is not None

    assert (await store.claim("inv-1", 2, NOW + 10, LEASE_MS)).claim is Claim.BUSY
    claimed = await store.claim("inv-1", 2, stopping.lease_until + 1, LEASE_MS)

    assert claimed.claim is Claim.STOPPED
    assert claimed.task is not None and claimed.task.status is Status.STOPPED
    assert claimed.task.ended_at == stopping.lease_until + 1
    assert claimed.task == await store.get("inv-1")


async def test_claim_of_an_unknown_task_raises_not_found(store: TaskStore) -> None:
    with pytest.raises(TaskNotFound):
        await store.claim("nope", 1, NOW, LEASE_MS)


async def test_two_stores_claiming_at_once_claim_each_task_exactly_once(stores: Stores) -> None:
    one, other = await stores.open(), await stores.open()
    ids = [f"inv-{n}" for n in range(50)]
    await asyncio.gather(*(one.create(task_id, "resize", None, NOW) for task_id in ids))

    claims = [(task_id, store) for task_id in ids for store in (one, other)]

    results = await asyncio.gather(
        *(store.claim(task_id, 1, NOW + 1, LEASE_MS) for task_id, store in claims)
    )

    claimed = [
        task_id for (task_id, _), result in zip(claims, results, strict=True)
        if result.claim is Claim.CLAIMED
    ]
    assert sorted(claimed) == sorted(ids)
    assert Counter(result.claim for result in results) == {Claim.CLAIMED: 50, Claim.BUSY: 50}
    assert {task.attempts for task in (await one.list(limit=100)).tasks} == {1}


# transition


async def test_a_transition_moves_the_task_and_records_an_event(store: TaskStore) -> None:
    await task_in(store, Status.ENQUEUED)

    moved = await store.transition("inv-1", Status.DEQUEUED, NOW + 7, "due now")

    assert moved is not None and moved == await store.get("inv-1")
    assert (moved.status, moved.updated_at) == (Status.DEQUEUED, NOW + 7)
    assert moved.events[-1].status is Status.DEQUEUED
    assert (moved.events[-1].timestamp, moved.events[-1].detail) == (NOW + 7, "due now")


async def test_a_transition_that_is_not_allowed_returns_none_and_changes_nothing(
    store: TaskStore,
) -> None:
    before = await task_in(store, Status.ENQUEUED)

    assert await store.transition("inv-1", Status.SUCCEEDED, NOW + 5) is None
    assert await store.transition("inv-1", Status.STOPPING, NOW + 5) is None
    assert await store.get("inv-1") == before


@pytest.mark.parametrize("status", sorted(TERMINAL))
async def test_a_terminal_task_is_never_left(store: TaskStore, status: Status) -> None:
    ended = await task_in(store, status)

    for target in Status:
        assert await store.transition("inv-1", target, NOW + 50, result=1, error="e") is None
    with pytest.raises(TaskFinished) as raised:
        await store.request_stop("inv-1", NOW + 60)
    assert raised.value.task == ended
    assert (await store.claim("inv-1", 9, NOW + 70, LEASE_MS)).claim in (
        Claim.FINISHED, Claim.STOPPED,
    )
    assert await store.get("inv-1") == ended


async def test_an_ending_sets_the_end_time_and_releases_the_lease(store: TaskStore) -> None:
    await task_in(store, Status.RUNNING)

    ended = await store.transition("inv-1", Status.SUCCEEDED, NOW + 250, result={"ok": True})

    assert ended is not None
    assert (ended.ended_at, ended.lease_until) == (NOW + 250, None)
    assert ended.duration_ms == 249
    assert ended.result == contract.pack({"ok": True})
    assert ended.result_truncated is False


async def test_a_retry_keeps_the_error_and_a_later_success_clears_it(store: TaskStore) -> None:
    await task_in(store, Status.RUNNING)

    retrying = await store.transition("inv-1", Status.RETRYING, NOW + 5, error="E: boom")
    assert retrying is not None
    assert (retrying.error, retrying.lease_until, retrying.ended_at) == ("E: boom", None, None)
    await store.claim("inv-1", 2, NOW + 10, LEASE_MS)
    succeeded = await store.transition("inv-1", Status.SUCCEEDED, NOW + 20, result="done")

    assert succeeded is not None and succeeded.error is None
    assert contract.unpack(succeeded.result or b"") == "done"


async def test_a_failure_keeps_its_error(store: TaskStore) -> None:
    await task_in(store, Status.RUNNING)

    failed = await store.transition("inv-1", Status.FAILED, NOW + 5, "gave up", error="E: x")

    assert failed is not None and failed == await store.get("inv-1")
    assert (failed.status, failed.error, failed.ended_at) == (Status.FAILED, "E: x", NOW + 5)


async def test_a_result_over_the_limit_is_dropped_and_flagged(stores: Stores) -> None:
    store = await stores.open(result_max_bytes=100)
    for task_id, value in (("small", "x" * 90), ("large", "x" * 101)):
        await store.create(task_id, "resize", None, NOW)
        await store.claim(task_id, 1, NOW, LEASE_MS)
        await store.transition(task_id, Status.SUCCEEDED, NOW + 1, result=value)

    small, large = await store.get("small"), await store.get("large")
    assert small is not None and large is not None
    assert (contract.unpack(small.result or b""), small.result_truncated) == ("x" * 90, False)
    assert (large.result, large.result_truncated, large.status) == (None, True, Status.SUCCEEDED)


async def test_a_transition_of_an_unknown_task_raises_not_found(store: TaskStore) -> None:
    with pytest.raises(TaskNotFound):
        await store.transition("nope", Status.DEQUEUED, NOW)


# request_stop


@pytest.mark.parametrize("status", sorted(WAITING))
async def test_a_stop_before_the_start_stops_at_once(store: TaskStore, status: Status) -> None:
    await task_in(store, status)

    stopped = await store.request_stop("inv-1", NOW + 30)

    assert stopped == await store.get("inv-1")
    assert (stopped.status, stopped.ended_at, stopped.lease_until) == (
        Status.STOPPED, NOW + 30, None,
    )
    assert (stopped.events[-1].status, stopped.events[-1].detail) == (
        Status.STOPPED, "stopped before it started",
    )


async def test_a_stop_of_a_running_task_asks_it_to_stop(store: TaskStore) -> None:
    running = await task_in(store, Status.RUNNING)

    stopping = await store.request_stop("inv-1", NOW + 30)

    assert stopping == await store.get("inv-1")
    assert stopping.status is Status.STOPPING
    assert stopping.lease_until == running.lease_until  # still running in its worker
    assert stopping.events[-1].status is Status.STOPPING
    assert await store.transition("inv-1", Status.SUCCEEDED, NOW + 40) is None
    stopped = await store.transition("inv-1", Status.STOPPED, NOW + 50, "cancelled")
    assert stopped is not None and stopped.ended_at == NOW + 50


async def test_a_second_stop_of_a_stopping_task_changes_nothing(store: TaskStore) -> None:
    stopping = await task_in(store, Status.STOPPING)

    assert await store.request_stop("inv-1", NOW + 99) == stopping == await store.get("inv-1")


async def test_a_stop_of_an_unknown_task_raises_not_found(store: TaskStore) -> None:
    with pytest.raises(TaskNotFound):
        await store.request_stop("nope", NOW)


# events


async def test_events_are_kept_in_order_with_millisecond_timestamps(store: TaskStore) -> None:
    await store.create("inv-1", "resize", None, NOW, "accepted")
    await store.transition("inv-1", Status.DEQUEUED, NOW + 1, "due")
    await store.claim("inv-1", 1, NOW + 2, LEASE_MS)
    await store.transition("inv-1", Status.RETRYING, NOW + 3, "retry in 1 s", error="E: x")
    await store.transition("inv-1", Status.DEQUEUED, NOW + 1003, "due again")
    await store.claim("inv-1", 2, NOW + 1004, LEASE_MS)
    await store.transition("inv-1", Status.SUCCEEDED, NOW + 1005, "done", result=None)

    task = await store.get("inv-1")

    assert task is not None
    assert [(e.status, e.timestamp - NOW, e.detail) for e in task.events] == [
        (Status.ENQUEUED, 0, "accepted"),
        (Status.DEQUEUED, 1, "due"),
        (Status.RUNNING, 2, "attempt 1"),
        (Status.RETRYING, 3, "retry in 1 s"),
        (Status.DEQUEUED, 1003, "due again"),
        (Status.RUNNING, 1004, "attempt 2"),
        (Status.SUCCEEDED, 1005, "done"),
    ]
    assert all(isinstance(e.timestamp, int) for e in task.events)
    assert (task.attempts, task.started_at, task.ended_at) == (2, NOW + 2, NOW + 1005)


# list


async def test_list_filters_combine(store: TaskStore) -> None:
    for n in range(6):
        function = "resize" if n % 2 == 0 else "mail"
        await store.create(f"{'a' if n < 3 else 'b'}-{n}", function, None, NOW + n)
    await store.claim("a-0", 1, NOW + 100, LEASE_MS)
    await store.claim("a-2", 1, NOW + 200, LEASE_MS)
    await store.claim("b-4", 1, NOW + 300, LEASE_MS)

    async def ids(**filters: Any) -> list[str]:
        return [task.id for task in (await store.list(**filters)).tasks]

    assert await ids() == ["b-5", "b-4", "b-3", "a-2", "a-1", "a-0"]
    assert await ids(newest_first=False) == ["a-0", "a-1", "a-2", "b-3", "b-4", "b-5"]
    assert await ids(function="resize") == ["b-4", "a-2", "a-0"]
    assert await ids(status=Status.RUNNING) == ["b-4", "a-2", "a-0"]
    assert await ids(prefix="a-") == ["a-2", "a-1", "a-0"]
    assert await ids(prefix="A-") == []
    assert await ids(prefix="a-1") == ["a-1"]
    assert await ids(started_from=NOW + 200) == ["b-4", "a-2"]
    assert await ids(started_to=NOW + 200) == ["a-2", "a-0"]
    assert await ids(started_from=NOW + 150, started_to=NOW + 250) == ["a-2"]
    assert await ids(function="resize", status=Status.RUNNING, prefix="a") == ["a-2", "a-0"]
    assert await ids(function="mail", status=Status.RUNNING) == []


async def test_list_takes_prefixes_literally(store: TaskStore) -> None:
    for task_id in ("a%1", "a_1", "ab1", "a\\1"):
        await store.create(task_id, "resize", None, NOW)

    for prefix in ("a%", "a_", "a\\"):
        assert [t.id for t in (await store.list(prefix=prefix)).tasks] == [prefix + "1"]


async def test_paging_through_45_tasks_by_20_gives_20_20_5_and_no_repeats(
    store: TaskStore,
) -> None:
    # Pairs share a creation time so that paging has to break ties by id.
    for n in range(45):
        await store.create(f"inv-{n:02d}", "resize", None, NOW + n // 2)

    for newest_first in (True, False):
        sizes: list[int] = []
        seen: list[str] = []
        token: str | None = None
        while True:
            page = await store.list(limit=20, next_token=token, newest_first=newest_first)
            sizes.append(len(page.tasks))
            seen.extend(task.id for task in page.tasks)
            token = page.next_token
            if token is None:
                break
        expected = sorted(f"inv-{n:02d}" for n in range(45))
        assert sizes == [20, 20, 5]
        assert seen == (expected[::-1] if newest_first else expected)


async def test_a_page_exactly_full_has_no_next_token(store: TaskStore) -> None:
    for n in range(20):
        await store.create(f"inv-{n:02d}", "resize", None, NOW + n)

    page = await store.list(limit=20)

    assert (len(page.tasks), page.next_token) == (20, None)


async def test_list_refuses_a_limit_out_of_range_and_a_token_it_did_not_issue(
    store: TaskStore,
) -> None:
    for limit in (0, 101):
        with pytest.raises(ValueError, match="limit"):
            await store.list(limit=limit)
    with pytest.raises(ValueError, match="next_token"):
        await store.list(next_token="not-a-token")


# purge


async def test_purge_deletes_finished_tasks_that_ended_before_the_cutoff(
    store: TaskStore,
) -> None:
    for n, status in enumerate(sorted(TERMINAL)):
        await task_in(store, status, f"old-{n}")
    await task_in(store, Status.RUNNING, "recent")
    await store.transition("recent", Status.SUCCEEDED, NOW + 10)
    await task_in(store, Status.RUNNING, "running")
    await task_in(store, Status.ENQUEUED, "waiting")

    assert await store.purge(NOW + 10) == len(TERMINAL)

    assert [t.id for t in (await store.list(newest_first=False)).tasks] == [
        "recent", "running", "waiting",
    ]
    assert await store.get("old-0") is None
    assert await store.purge(NOW + 10) == 0
    # A purged id can be used again: its events went with it.
    again = await store.create("old-0", "resize", None, NOW + 99)
    assert len(again.events) == 1


# several processes on one SQLite file


async def _claim_all(path: str, ids: list[str]) -> list[str]:
    store = SqliteTaskStore(path)
    await store.open()
    try:
        results = await asyncio.gather(*(store.claim(i, 1, NOW, LEASE_MS) for i in ids))
    finally:
        await store.close()
    return [task_id for task_id, r in zip(ids, results, strict=True) if r.claim is Claim.CLAIMED]


def _claim_in_process(path: str, ids: list[str], start: Any, claimed: Any) -> None:
    start.wait()
    claimed.put(asyncio.run(_claim_all(path, ids)))


def test_processes_sharing_one_sqlite_file_claim_each_task_exactly_once(tmp_path: Path) -> None:
    path = str(tmp_path / "tasks.db")
    ids = [f"inv-{n:03d}" for n in range(200)]

    async def create_all() -> None:
        store = SqliteTaskStore(path)
        await store.open()
        await asyncio.gather(*(store.create(i, "resize", None, NOW) for i in ids))
        await store.close()

    asyncio.run(create_all())
    spawn = multiprocessing.get_context("spawn")
    start, claimed = spawn.Barrier(4), spawn.Queue()
    processes = [
        spawn.Process(target=_claim_in_process, args=(path, ids, start, claimed))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    try:
        per_process = [claimed.get(timeout=60) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    assert Counter(i for got in per_process for i in got) == Counter(ids)
    assert all(process.exitcode == 0 for process in processes)


# open_store


async def test_a_sqlite_file_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    path = str(tmp_path / "missing" / "tasks.db")

    with pytest.raises(ConfigError) as raised:
        await SqliteTaskStore(path).open()

    assert path in str(raised.value) and "ASYNCINVOKE_TASK_STORE" in str(raised.value)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///./tasks.db", "./tasks.db"),
        ("sqlite:////var/lib/x/tasks.db", "/var/lib/x/tasks.db"),
        ("sqlite:///tasks.db", "tasks.db"),
    ],
)
def test_open_store_maps_sqlite_urls_to_paths(url: str, path: str) -> None:
    store = open_store(url, result_max_bytes=10)

    assert isinstance(store, SqliteTaskStore)
    assert (store.path, store.result_max_bytes) == (path, 10)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_open_store_maps_postgresql_urls(scheme: str) -> None:
    store = open_store(f"{scheme}://u@db.example/tasks", schema="tenant_a")

    assert isinstance(store, PostgresTaskStore)
    assert (store.dsn, store.schema) == (f"{scheme}://u@db.example/tasks", "tenant_a")


@pytest.mark.parametrize(
    "url", ["mysql://u:secret@h/db", "sqlite://relative.db", "sqlite:///", "/tmp/tasks.db", ""]
)
def test_open_store_refuses_other_urls_without_showing_them(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        open_store(url)

    message = str(raised.value)
    assert "ASYNCINVOKE_TASK_STORE" in message
    assert "sqlite:///PATH" in message and "postgresql://" in message
    assert "secret" not in message


# -- signature nonces (gateway.auth.refuse_replay) ------------------------------------------


async def test_a_nonce_is_remembered_once_across_stores_on_one_database(stores: Stores) -> None:
    first, second = await stores.open(), await stores.open()
    assert await first.remember_nonce("n-1", NOW + 900_000, NOW)
    assert not await first.remember_nonce("n-1", NOW + 900_000, NOW + 1)
    # Another gateway on the same store: the same refusal.
    assert not await second.remember_nonce("n-1", NOW + 900_000, NOW + 2)
    assert await second.remember_nonce("n-2", NOW + 900_000, NOW + 2)


async def test_a_nonce_outlives_a_restart_until_it_expires(stores: Stores) -> None:
    before = await stores.open()
    assert await before.remember_nonce("n-1", NOW + 1000, NOW)
    await before.close()
    after = await stores.open()
    assert not await after.remember_nonce("n-1", NOW + 1000, NOW + 999)
    assert await after.remember_nonce("n-1", NOW + 3000, NOW + 1000)  # expired: new again


async def test_expired_nonces_are_pruned_as_new_ones_arrive(stores: Stores) -> None:
    store = await stores.open()
    for number in range(250):
        assert await store.remember_nonce(f"old-{number}", NOW + 10, NOW)
    for number in range(3):  # each remember prunes up to NONCE_PRUNE_BATCH expired ones
        assert await store.remember_nonce(f"new-{number}", NOW + 1000, NOW + 10)
    if isinstance(store, SqliteTaskStore):
        conn = sqlite3.connect(stores.sqlite_path)
        try:
            left = conn.execute("SELECT nonce FROM nonces").fetchall()
        finally:
            conn.close()
    else:
        conn_pg = await asyncpg.connect(POSTGRES_DSN)
        try:
            left = await conn_pg.fetch(f'SELECT nonce FROM "{stores.schema}".asyncinvoke_nonces')
        finally:
            await conn_pg.close()
    assert sorted(row[0] for row in left) == ["new-0", "new-1", "new-2"]


async def test_concurrent_remembers_of_one_nonce_accept_exactly_one(stores: Stores) -> None:
    first, second = await stores.open(), await stores.open()
    answers = await asyncio.gather(
        *(
            store.remember_nonce("raced", NOW + 900_000, NOW)
            for _ in range(10)
            for store in (first, second)
        )
    )
    assert answers.count(True) == 1


# rerun (asyncinvoke task rerun)


@pytest.mark.parametrize("status", sorted(TERMINAL))
async def test_a_rerun_enqueues_an_ended_task_afresh_and_keeps_its_events(
    store: TaskStore, status: Status
) -> None:
    ended = await task_in(store, status)

    rerun = await store.rerun("inv-1", NOW + 50, "rerun after it ended")

    assert rerun == await store.get("inv-1")
    assert rerun.status is Status.ENQUEUED
    assert (rerun.attempts, rerun.started_at, rerun.ended_at, rerun.lease_until) == (
        0, None, None, None,
    )
    assert (rerun.result, rerun.error, rerun.payload) == (None, None, PAYLOAD)
    assert rerun.events[:-1] == ended.events
    assert (rerun.events[-1].status, rerun.events[-1].timestamp) == (Status.ENQUEUED, NOW + 50)
    claimed = await store.claim("inv-1", 0, NOW + 60, LEASE_MS)
    assert claimed.claim is Claim.CLAIMED
    assert claimed.task is not None and claimed.task.attempts == 1


@pytest.mark.parametrize("status", sorted(set(Status) - TERMINAL))
async def test_a_rerun_of_a_task_not_ended_is_refused_and_changes_nothing(
    store: TaskStore, status: Status
) -> None:
    before = await task_in(store, status)

    with pytest.raises(TaskNotEnded) as raised:
        await store.rerun("inv-1", NOW + 50, "rerun")
    assert f"it is {status.value}" in str(raised.value)
    assert await store.get("inv-1") == before


async def test_a_rerun_of_a_task_without_a_payload_or_of_no_task_is_refused(
    store: TaskStore,
) -> None:
    await store.ensure("bad-1", "resize", None, NOW)
    await store.transition("bad-1", Status.INVALID, NOW + 1, "not msgpack")

    with pytest.raises(TaskNotRerunnable, match="no payload was kept"):
        await store.rerun("bad-1", NOW + 5, "rerun")
    with pytest.raises(TaskNotFound):
        await store.rerun("nope", NOW + 5, "rerun")


# throttles


async def test_a_throttle_is_an_event_that_gives_back_its_attempt_and_the_task_runs_again(
    store: TaskStore,
) -> None:
    await task_in(store, Status.RUNNING)

    throttled = await store.transition(
        "inv-1", Status.THROTTLED, NOW + 5, "attempt 0 throttled (HTTP429: busy)",
        error="HTTP429: busy",
    )

    assert throttled is not None and throttled == await store.get("inv-1")
    assert (throttled.status, throttled.attempts, throttled.lease_until) == (
        Status.THROTTLED, 0, None,
    )
    assert (throttled.events[-1].status, throttled.events[-1].detail) == (
        Status.THROTTLED, "attempt 0 throttled (HTTP429: busy)",
    )
    listed = await store.list(status=Status.THROTTLED)
    assert [task.id for task in listed.tasks] == ["inv-1"]
    again = await store.claim("inv-1", 0, NOW + 1_000, LEASE_MS)
    assert again.claim is Claim.CLAIMED
    assert again.task is not None and again.task.attempts == 1
    stopped = await task_in(store, Status.THROTTLED, "inv-2")
    assert (await store.request_stop(stopped.id, NOW + 9)).status is Status.STOPPED
