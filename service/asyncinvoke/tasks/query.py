"""The task list's SQL, written once for both stores (SQLite and PostgreSQL).

The two dialects differ in how a parameter is written (``?`` or ``$n``) and in the
prefix test (SQLite has no ``starts_with``); the rest is the same statement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import Page, Task, check_limit, decode_page_token, encode_page_token
from asyncinvoke.text import encodable

# created_at and started_at may come from the clocks of two hosts (the gateway's and a
# worker's): the bound a start time puts on the creation time allows them this much apart.
CLOCK_SKEW_MARGIN_MS = 15 * 60_000

Bind = Callable[[Any], str]  # adds a parameter and returns its placeholder


def sqlite_prefix(bind: Bind, prefix: str) -> str:
    # Not LIKE: a prefix with "%" or "_" in it would match as a pattern.
    return f"substr(id, 1, {bind(len(prefix))}) = {bind(prefix)}"


def postgres_prefix(bind: Bind, prefix: str) -> str:
    return f"starts_with(id, {bind(prefix)})"


def list_query(
    table: str,
    columns: str,
    *,
    numbered: bool,
    prefix_test: Callable[[Bind, str], str],
    function: str | None,
    status: Status | None,
    prefix: str | None,
    started_from: int | None,
    started_to: int | None,
    limit: int,
    next_token: str | None,
    newest_first: bool,
) -> tuple[str, list[Any]]:
    """The SELECT of one page (``limit + 1`` rows, to tell whether another follows) and its
    parameters; ``numbered`` placeholders are PostgreSQL's ``$1``, else SQLite's ``?``."""
    check_limit(limit)
    params: list[Any] = []

    def bind(value: Any) -> str:
        params.append(encodable(value))  # no driver takes a NUL or a lone surrogate
        return f"${len(params)}" if numbered else "?"

    conditions: list[str] = []
    if function is not None:
        conditions.append(f"function = {bind(function)}")
    if status is not None:
        conditions.append(f"status = {bind(status.value)}")
    if prefix is not None:
        conditions.append(prefix_test(bind, prefix))
    if started_from is not None:
        conditions.append(f"started_at >= {bind(started_from)}")
    if started_to is not None:
        conditions.append(f"started_at <= {bind(started_to)}")
        # Implied (a task starts after it was created), and what lets the created_at
        # index skip every task created after the range instead of reading it.
        conditions.append(f"created_at <= {bind(started_to + CLOCK_SKEW_MARGIN_MS)}")
    direction, after = ("DESC", "<") if newest_first else ("ASC", ">")
    if next_token is not None:
        created_at, last_id = decode_page_token(next_token)
        conditions.append(f"(created_at, id) {after} ({bind(created_at)}, {bind(last_id)})")
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    sql = (
        f"SELECT {columns} FROM {table} {where}"
        f"ORDER BY created_at {direction}, id {direction} LIMIT {bind(limit + 1)}"
    )
    return sql, params


def page_of(tasks: list[Task], limit: int) -> Page:
    """One page from the ``limit + 1`` rows ``list_query`` reads."""
    if len(tasks) <= limit:
        return Page(tasks, None)
    return Page(tasks[:limit], encode_page_token(tasks[limit - 1]))
