"""The console's task lists read along the SQLite store's indexes: no list sorts the rows
it filtered (a sort of 5,000 Failed tasks of 100,000 was the slowest console page), and
a start-time range bounds the creation order it walks."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from asyncinvoke.tasks.query import CLOCK_SKEW_MARGIN_MS, list_query, sqlite_prefix
from asyncinvoke.tasks.sqlite import _COLUMNS, SqliteTaskStore
from asyncinvoke.tasks.states import Status


@pytest.fixture
async def database(tmp_path: Path) -> Path:
    path = tmp_path / "tasks.db"
    store = SqliteTaskStore(str(path))
    await store.open()  # the schema and its indexes
    await store.close()
    return path


def _plan(path: Path, **filters: Any) -> str:
    sql, params = list_query(
        "tasks", _COLUMNS, numbered=False, prefix_test=sqlite_prefix,
        function=filters.get("function"), status=filters.get("status"), prefix=None,
        started_from=filters.get("started_from"), started_to=filters.get("started_to"),
        limit=50, next_token=None, newest_first=True,
    )
    with sqlite3.connect(path) as connection:
        return " | ".join(row[3] for row in connection.execute("EXPLAIN QUERY PLAN " + sql, params))


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"function": "resize"},
        {"status": Status.FAILED},
        {"function": "resize", "status": Status.STOPPED},
        {"started_from": 1_000, "started_to": 2_000},
    ],
    ids=["all", "function", "status", "function and status", "start range"],
)
async def test_a_task_list_is_read_in_order_along_an_index(
    database: Path, filters: dict[str, Any]
) -> None:
    plan = _plan(database, **filters)
    assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, plan


async def test_a_start_range_walks_the_creation_order_from_its_end_only(database: Path) -> None:
    assert "created_at<" in _plan(database, started_from=1_000, started_to=2_000).replace(" ", "")


async def test_a_task_created_on_a_clock_ahead_of_its_workers_is_still_listed(
    database: Path,
) -> None:
    """created_at (the gateway's clock) may be later than started_at (a worker's)."""
    store = SqliteTaskStore(str(database))
    await store.open()
    try:
        started = 10_000_000
        await store.create("ahead", "resize", None, started + CLOCK_SKEW_MARGIN_MS - 1)
        await store.claim("ahead", 1, started, 60_000)
        page = await store.list(started_from=started - 1, started_to=started + 1)
        assert [task.id for task in page.tasks] == ["ahead"]
    finally:
        await store.close()
