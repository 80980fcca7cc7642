"""The SQLite task store: the default, for one host with several worker processes.

All SQLite work of a store happens on one thread, fed by a queue. The thread runs whatever
is queued in one transaction and only then hands each caller its own result (group commit):
one commit per batch instead of one per statement is what lets a single worker write
thousands of task changes a second. WAL with synchronous=NORMAL keeps every commit across a
process crash (not across a power cut), which is the failure a worker has to survive.

Processes share the file safely: a batch begins with BEGIN IMMEDIATE (the file's write lock,
waited for up to busy_timeout), and every change is a compare-and-set on the row's version.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from asyncinvoke.errors import ConfigError, TaskExists, TaskNotFound, TaskStoreUnavailable
from asyncinvoke.settings import DEFAULT_TASK_RESULT_MAX_BYTES
from asyncinvoke.tasks.query import list_query, page_of, sqlite_prefix
from asyncinvoke.tasks.states import TERMINAL, Status
from asyncinvoke.tasks.store import (
    ENQUEUED_OVER_AMQP,
    NONCE_PRUNE_BATCH,
    ClaimResult,
    Page,
    Task,
    decide_claim,
    decide_reopen,
    decide_rerun,
    decide_stop,
    decide_transition,
    decode_events,
    encode_events,
    new_task,
)
from asyncinvoke.text import encodable

R = TypeVar("R")
Operation = Callable[[sqlite3.Connection], Any]

# Another process may hold the write lock for one batch; waiting this long for it means
# something is stuck, not busy.
BUSY_TIMEOUT_MS = 30_000
# Caps the time one commit keeps the callers of a batch waiting.
MAX_BATCH = 1000
# SQLite's primary result codes for a file it cannot write now: locked by another process
# past busy_timeout (BUSY, LOCKED), a failing or full disk (IOERR, FULL). The batch was
# rolled back; the same calls may succeed later.
_OUTAGE_CODES = frozenset({5, 6, 10, 13})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    started_at INTEGER,
    ended_at INTEGER,
    payload BLOB,
    result BLOB,
    result_truncated INTEGER NOT NULL,
    error TEXT,
    lease_until INTEGER,
    events TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_function_created ON tasks (function, created_at, id);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at, id);
-- A status (and a function's status) listed newest first is read along an index, never
-- sorted: 5,000 Failed of 100,000 tasks took 10 ms to sort (60-400 ms on a loaded
-- machine), 0.1 ms along this. It replaces the index on status alone.
CREATE INDEX IF NOT EXISTS tasks_status_created ON tasks (status, created_at, id);
CREATE INDEX IF NOT EXISTS tasks_function_status_created
    ON tasks (function, status, created_at, id);
DROP INDEX IF EXISTS tasks_status;
CREATE INDEX IF NOT EXISTS tasks_ended ON tasks (ended_at);
"""
_COLUMNS = (
    "id, function, status, created_at, updated_at, attempts, started_at, ended_at, payload, "
    "result, result_truncated, error, lease_until, events, version"
)
_INSERT = (
    f"INSERT INTO tasks ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0) "
    "ON CONFLICT (id) DO NOTHING"
)
_SELECT = f"SELECT {_COLUMNS} FROM tasks WHERE id = ?"
_UPDATE = (
    "UPDATE tasks SET status = ?, updated_at = ?, attempts = ?, started_at = ?, ended_at = ?, "
    "result = ?, result_truncated = ?, error = ?, lease_until = ?, events = ?, "
    "version = version + 1 WHERE id = ? AND version = ?"
)
_TERMINAL = tuple(sorted(status.value for status in TERMINAL))
_PURGE = (
    f"DELETE FROM tasks WHERE status IN ({', '.join('?' * len(_TERMINAL))}) AND ended_at < ?"
)


class SqliteTaskStore:
    """TaskStore on one SQLite file (``path``), shared by the processes of one host."""

    def __init__(self, path: str, *, result_max_bytes: int = DEFAULT_TASK_RESULT_MAX_BYTES):
        self.path = path
        self.result_max_bytes = result_max_bytes
        self._thread: _SqliteThread | None = None

    async def open(self) -> None:
        thread = _SqliteThread(self.path)
        await thread.start()
        self._thread = thread

    async def close(self) -> None:
        if self._thread is not None:
            thread, self._thread = self._thread, None
            await thread.stop()

    async def _run(self, operation: Callable[[sqlite3.Connection], R]) -> R:
        if self._thread is None:
            raise RuntimeError(f"task store {self.path!r} is not open")
        try:
            result: R = await self._thread.run(operation)
        except sqlite3.Error as exc:
            if _is_outage(exc):
                raise TaskStoreUnavailable(self.path, f"{type(exc).__name__}: {exc}") from exc
            raise
        return result

    async def create(
        self, task_id: str, function: str, payload: bytes | None, now_ms: int, detail: str = ""
    ) -> Task:
        task = new_task(task_id, function, payload, now_ms, detail)

        def insert(conn: sqlite3.Connection) -> Task:
            if not _insert(conn, task):
                raise TaskExists(task_id)
            return task

        return await self._run(insert)

    async def ensure(
        self, task_id: str, function: str, payload: bytes | None, now_ms: int
    ) -> Task:
        task = new_task(task_id, function, payload, now_ms, ENQUEUED_OVER_AMQP)

        def insert_or_read(conn: sqlite3.Connection) -> Task:
            if _insert(conn, task):
                return task
            return _read(conn, task_id)[0]

        return await self._run(insert_or_read)

    async def claim(
        self, task_id: str, attempt: int, now_ms: int, lease_ms: int
    ) -> ClaimResult:
        return await self._run(lambda conn: _change(
            conn, task_id, lambda task: decide_claim(task, attempt, now_ms, lease_ms),
            lambda outcome: outcome.task,
        ))

    async def transition(
        self,
        task_id: str,
        target: Status,
        now_ms: int,
        detail: str = "",
        *,
        result: Any = None,
        error: str | None = None,
    ) -> Task | None:
        def decide(task: Task) -> Task | None:
            return decide_transition(task, target, now_ms, detail, result=result, error=error,
                                     result_max_bytes=self.result_max_bytes)

        return await self._run(lambda conn: _change(conn, task_id, decide, lambda after: after))

    async def request_stop(self, task_id: str, now_ms: int) -> Task:
        return await self._run(lambda conn: _change(
            conn, task_id, lambda task: decide_stop(task, now_ms), lambda after: after
        ))

    async def get(self, task_id: str) -> Task | None:
        def read(conn: sqlite3.Connection) -> Task | None:
            row = conn.execute(_SELECT, (encodable(task_id),)).fetchone()
            return None if row is None else _task_of(row)

        return await self._run(read)

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def list(
        self,
        *,
        function: str | None = None,
        status: Status | None = None,
        prefix: str | None = None,
        started_from: int | None = None,
        started_to: int | None = None,
        limit: int = 20,
        next_token: str | None = None,
        newest_first: bool = True,
    ) -> Page:
        sql, params = list_query(
            "tasks",
            _COLUMNS,
            numbered=False,
            prefix_test=sqlite_prefix,
            function=function,
            status=status,
            prefix=prefix,
            started_from=started_from,
            started_to=started_to,
            limit=limit,
            next_token=next_token,
            newest_first=newest_first,
        )

        def read(conn: sqlite3.Connection) -> list[Task]:
            return [_task_of(row) for row in conn.execute(sql, params)]

        return page_of(await self._run(read), limit)

    async def purge(self, older_than_ms: int) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute(_PURGE, (*_TERMINAL, older_than_ms)).rowcount

        return await self._run(delete)

    async def remember_nonce(self, nonce: str, expires_at_ms: int, now_ms: int) -> bool:
        return await self._run(lambda conn: _remember_nonce(conn, nonce, expires_at_ms, now_ms))

    async def reopen(self, task_id: str, now_ms: int, detail: str) -> Task | None:
        return await self._run(lambda conn: _change(
            conn, task_id, lambda task: decide_reopen(task, now_ms, detail), lambda after: after
        ))

    async def rerun(self, task_id: str, now_ms: int, detail: str) -> Task:
        return await self._run(lambda conn: _change(
            conn, task_id, lambda task: decide_rerun(task, now_ms, detail), lambda after: after
        ))


def _row_of(task: Task) -> tuple[Any, ...]:
    return (
        task.id, task.function, task.status.value, task.created_at, task.updated_at,
        task.attempts, task.started_at, task.ended_at, task.payload, task.result,
        int(task.result_truncated), task.error, task.lease_until, encode_events(task.events),
    )


def _changes_of(task: Task) -> tuple[Any, ...]:
    """The values _UPDATE sets, in its order."""
    return (
        task.status.value, task.updated_at, task.attempts, task.started_at, task.ended_at,
        task.result, int(task.result_truncated), task.error, task.lease_until,
        encode_events(task.events),
    )


def _task_of(row: tuple[Any, ...]) -> Task:
    return Task(
        id=row[0], function=row[1], status=Status(row[2]), created_at=row[3],
        updated_at=row[4], attempts=row[5], started_at=row[6], ended_at=row[7],
        payload=row[8], result=row[9], result_truncated=bool(row[10]), error=row[11],
        lease_until=row[12], events=decode_events(row[13]),
    )


def _insert(conn: sqlite3.Connection, task: Task) -> bool:
    """Insert ``task``; False if its id is taken."""
    return conn.execute(_INSERT, _row_of(task)).rowcount == 1


def _read(conn: sqlite3.Connection, task_id: str) -> tuple[Task, int]:
    row = conn.execute(_SELECT, (task_id,)).fetchone()
    if row is None:
        raise TaskNotFound(task_id)
    return _task_of(row), row[14]


def _change(
    conn: sqlite3.Connection,
    task_id: str,
    decide: Callable[[Task], R],
    after_of: Callable[[R], Task | None],
) -> R:
    """Read the task, let ``decide`` answer, and write the task the answer holds if it changed.

    The write is a compare-and-set on the version read; inside the batch's transaction no
    other process can write in between, so a lost race only shows up as a retry here.
    """
    task_id = encodable(task_id)  # an id from a request: no encoder takes a lone surrogate
    while True:
        task, version = _read(conn, task_id)
        answer = decide(task)
        after = after_of(answer)
        if after is None or after == task:
            return answer
        cursor = conn.execute(_UPDATE, (*_changes_of(after), task_id, version))
        if cursor.rowcount == 1:
            return answer


@dataclass(frozen=True, slots=True)
class _Call:
    operation: Operation
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class _SqliteThread:
    """One connection on one thread; queued calls run in batches, one commit per batch."""

    def __init__(self, path: str):
        self._path = path
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[Any] = loop.create_future()
        self._thread = threading.Thread(
            target=self._main, args=(ready, loop), name=f"sqlite-tasks {self._path}", daemon=True
        )
        self._thread.start()
        await ready

    async def run(self, operation: Operation) -> Any:
        if self._stopping:
            raise RuntimeError(f"task store {self._path!r} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._calls.put(_Call(operation, future, loop))
        return await future

    async def stop(self) -> None:
        """Finish what is queued, then close the connection."""
        self._stopping = True
        self._calls.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def _main(self, ready: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        try:
            conn = _connect(self._path)
        except Exception as exc:
            _deliver(loop, [(ready, False, exc)])
            return
        _deliver(loop, [(ready, True, None)])
        try:
            running = True
            while running:
                batch: list[_Call] = []
                call = self._calls.get()
                while call is not None:
                    batch.append(call)
                    if len(batch) >= MAX_BATCH:
                        break
                    try:
                        call = self._calls.get_nowait()
                    except queue.Empty:
                        break
                running = call is not None
                if batch:
                    self._run_batch(conn, batch)
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Call]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            # Each call writes with a single statement, so one that fails leaves nothing
            # half done and the others in the batch still commit.
            for call in batch:
                try:
                    outcomes.append((call.future, True, call.operation(conn)))
                except Exception as exc:
                    if not conn.in_transaction:  # SQLite rolled the whole batch back
                        raise
                    outcomes.append((call.future, False, exc))
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            outcomes = [(call.future, False, exc) for call in batch]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for call, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(call.loop, []).append(outcome)
        for loop, settled in by_loop.items():
            _deliver(loop, settled)


def _create_private(path: str) -> None:
    """Create the database file readable by its owner only (0600), before SQLite would
    create it 0644: tasks hold payloads and results. SQLite gives its -wal and -shm files
    the database file's mode. A file that exists keeps the mode its operator gave it."""
    if path == ":memory:" or os.path.exists(path):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # another worker process created it between the check and here
    except OSError as exc:
        raise ConfigError(f"cannot create the task store: {exc.strerror}", path=path,
                          key="ASYNCINVOKE_TASK_STORE") from exc


def _connect(path: str) -> sqlite3.Connection:
    _create_private(path)
    try:
        # Autocommit mode: the thread opens and commits the batch transactions itself.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open the task store: {exc}", path=path,
                          key="ASYNCINVOKE_TASK_STORE") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(_SCHEMA)
    except sqlite3.Error as exc:
        conn.close()
        if _is_outage(exc):  # another process holds the file: worth another try
            raise TaskStoreUnavailable(path, f"{type(exc).__name__}: {exc}") from exc
        raise ConfigError(f"cannot set up the task store: {exc}", path=path,
                          key="ASYNCINVOKE_TASK_STORE") from exc
    return conn


def _is_outage(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _OUTAGE_CODES


def _deliver(
    loop: asyncio.AbstractEventLoop, outcomes: list[tuple[asyncio.Future[Any], bool, Any]]
) -> None:
    # The loop may be gone when a caller's process is shutting down; nobody waits then.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, outcomes)


def _settle(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # the caller stopped waiting (cancelled)
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


# Signature nonces (TaskStore.remember_nonce). The table is made on first use, so a store
# file made before it existed gains it without a migration step.
_NONCE_TABLE = (
    "CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, expires_at INTEGER NOT NULL)"
    " WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS nonces_expires ON nonces (expires_at)",
)
_PRUNE_NONCES = (
    "DELETE FROM nonces WHERE nonce IN "
    "(SELECT nonce FROM nonces WHERE expires_at <= ? LIMIT ?)"
)
# A nonce that expired but was not pruned yet is taken as new: its old request can no
# longer be accepted anyway (its date is out of the window).
_REMEMBER_NONCE = (
    "INSERT INTO nonces (nonce, expires_at) VALUES (?, ?) "
    "ON CONFLICT (nonce) DO UPDATE SET expires_at = excluded.expires_at "
    "WHERE nonces.expires_at <= ?"
)


def _remember_nonce(
    conn: sqlite3.Connection, nonce: str, expires_at_ms: int, now_ms: int
) -> bool:
    # Several statements, unlike the task calls: if the insert fails, what stays done is
    # the table and the pruning of expired nonces, which is harmless.
    for statement in _NONCE_TABLE:
        conn.execute(statement)
    conn.execute(_PRUNE_NONCES, (now_ms, NONCE_PRUNE_BATCH))
    return conn.execute(_REMEMBER_NONCE, (nonce, expires_at_ms, now_ms)).rowcount == 1
