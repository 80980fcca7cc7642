"""The PostgreSQL task store: for workers on several hosts sharing one database.

Every change is a compare-and-set on the row's version (read, decide, UPDATE ... WHERE
version = the one read); a worker that loses the race reads again and decides anew. That
takes two round trips and holds no row lock across them, where SELECT ... FOR UPDATE would
need four (BEGIN, SELECT, UPDATE, COMMIT).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import asyncpg

from asyncinvoke.errors import ConfigError, TaskExists, TaskNotFound, TaskStoreUnavailable
from asyncinvoke.settings import DEFAULT_TASK_RESULT_MAX_BYTES, redact_url
from asyncinvoke.tasks.query import list_query, page_of, postgres_prefix
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

DEFAULT_SCHEMA = "public"
POOL_MAX_SIZE = 10
TABLE = "asyncinvoke_tasks"
# Serialises schema creation: concurrent CREATE TABLE IF NOT EXISTS can still collide.
_SCHEMA_LOCK_KEY = 0x61_73_79_6E_63_69_6E_76  # "asyncinv"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_COLUMNS = (
    "id, function, status, created_at, updated_at, attempts, started_at, ended_at, payload, "
    "result, result_truncated, error, lease_until, events, version"
)
_TERMINAL = sorted(status.value for status in TERMINAL)
# What a server restart, a failover or a cut network looks like through asyncpg: refused
# or lost connections (OSError, class 08), "shutting down" / "starting up" (class 57),
# too many connections or a full disk (class 53). None of them is the task's fault, and
# each passes. The pool replaces a connection it finds closed when it is next acquired.
# A connection the server ended while it sat idle in the pool fails its reset on release
# with InternalClientError ("cannot switch to state 15", asyncpg issue #784; seen in
# tests/chaos/test_postgres_restart.py); the pool then drops that connection.
_OUTAGES = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.InternalClientError,
)


class PostgresTaskStore:
    """TaskStore on PostgreSQL at ``dsn``; its table lives in ``schema`` (created if missing).

    Ids compare bytewise (COLLATE "C"), as in SQLite, whatever the database's collation:
    prefixes and the order pages follow do not depend on the locale.
    """

    def __init__(
        self,
        dsn: str,
        *,
        result_max_bytes: int = DEFAULT_TASK_RESULT_MAX_BYTES,
        schema: str = DEFAULT_SCHEMA,
    ):
        if not _SCHEMA_NAME.match(schema):
            raise ConfigError(f"schema {schema!r} is not a plain lower-case SQL name",
                              key="ASYNCINVOKE_TASK_STORE")
        self.dsn = dsn
        self.result_max_bytes = result_max_bytes
        self.schema = schema
        self._table = f'"{schema}".{TABLE}'
        self._pool: asyncpg.Pool | None = None

    @contextlib.contextmanager
    def _outage_is_unavailable(self) -> Iterator[None]:
        try:
            yield
        except _OUTAGES as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise TaskStoreUnavailable(redact_url(self.dsn), reason) from exc

    async def open(self) -> None:
        with self._outage_is_unavailable():
            pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=POOL_MAX_SIZE)
            try:
                await self._create_schema(pool)
            except BaseException:
                await pool.close()
                raise
        self._pool = pool

    async def _create_schema(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_KEY)
            # CREATE SCHEMA wants the database's CREATE privilege even when the schema
            # exists, which a store in "public" should not need.
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1", self.schema
            )
            if not exists:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.execute(self._ddl())

    def _ddl(self) -> str:
        return f"""
        CREATE TABLE IF NOT EXISTS {self._table} (
            id TEXT COLLATE "C" PRIMARY KEY,
            function TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            attempts INTEGER NOT NULL,
            started_at BIGINT,
            ended_at BIGINT,
            payload BYTEA,
            result BYTEA,
            result_truncated BOOLEAN NOT NULL,
            error TEXT,
            lease_until BIGINT,
            events JSONB NOT NULL,
            version BIGINT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS {TABLE}_function_created
            ON {self._table} (function, created_at, id);
        CREATE INDEX IF NOT EXISTS {TABLE}_created ON {self._table} (created_at, id);
        CREATE INDEX IF NOT EXISTS {TABLE}_status_created
            ON {self._table} (status, created_at, id);
        CREATE INDEX IF NOT EXISTS {TABLE}_function_status_created
            ON {self._table} (function, status, created_at, id);
        DROP INDEX IF EXISTS "{self.schema}".{TABLE}_status;
        CREATE INDEX IF NOT EXISTS {TABLE}_ended ON {self._table} (ended_at);
        """

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError(f"task store in schema {self.schema!r} is not open")
        return self._pool

    async def _insert(self, task: Task) -> bool:
        """Insert ``task``; False if its id is taken."""
        with self._outage_is_unavailable():
            status = await self.pool.execute(
                f"INSERT INTO {self._table} ({_COLUMNS}) VALUES "
                "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 0) "
                "ON CONFLICT (id) DO NOTHING",
                *_row_of(task),
            )
        return bool(status == "INSERT 0 1")

    async def create(
        self, task_id: str, function: str, payload: bytes | None, now_ms: int, detail: str = ""
    ) -> Task:
        task = new_task(task_id, function, payload, now_ms, detail)
        if not await self._insert(task):
            raise TaskExists(task_id)
        return task

    async def ensure(
        self, task_id: str, function: str, payload: bytes | None, now_ms: int
    ) -> Task:
        task = new_task(task_id, function, payload, now_ms, ENQUEUED_OVER_AMQP)
        while True:  # again if it was purged between the two statements
            if await self._insert(task):
                return task
            found = await self.get(task_id)
            if found is not None:
                return found

    async def claim(
        self, task_id: str, attempt: int, now_ms: int, lease_ms: int
    ) -> ClaimResult:
        return await self._change(
            task_id,
            lambda task: decide_claim(task, attempt, now_ms, lease_ms),
            lambda outcome: outcome.task,
        )

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

        return await self._change(task_id, decide, lambda after: after)

    async def request_stop(self, task_id: str, now_ms: int) -> Task:
        return await self._change(
            task_id, lambda task: decide_stop(task, now_ms), lambda after: after
        )

    async def _change(
        self,
        task_id: str,
        decide: Callable[[Task], R],
        after_of: Callable[[R], Task | None],
    ) -> R:
        """Read the task, let ``decide`` answer, and write the task the answer holds if it
        changed, unless another writer came first: then read and decide again."""
        with self._outage_is_unavailable():
            return await self._change_on_connection(encodable(task_id), decide, after_of)

    async def _change_on_connection(
        self,
        task_id: str,
        decide: Callable[[Task], R],
        after_of: Callable[[R], Task | None],
    ) -> R:
        async with self.pool.acquire() as conn:
            while True:
                row = await conn.fetchrow(
                    f"SELECT {_COLUMNS} FROM {self._table} WHERE id = $1", task_id
                )
                if row is None:
                    raise TaskNotFound(task_id)
                task = _task_of(row)
                answer = decide(task)
                after = after_of(answer)
                if after is None or after == task:
                    return answer
                status = await conn.execute(
                    f"UPDATE {self._table} SET status = $1, updated_at = $2, attempts = $3, "
                    "started_at = $4, ended_at = $5, result = $6, result_truncated = $7, "
                    "error = $8, lease_until = $9, events = $10, version = version + 1 "
                    "WHERE id = $11 AND version = $12",
                    *_changes_of(after), task_id, row["version"],
                )
                if status == "UPDATE 1":
                    return answer

    async def get(self, task_id: str) -> Task | None:
        with self._outage_is_unavailable():
            row = await self.pool.fetchrow(
                f"SELECT {_COLUMNS} FROM {self._table} WHERE id = $1", encodable(task_id)
            )
        return None if row is None else _task_of(row)

    async def ping(self) -> None:
        with self._outage_is_unavailable():
            await self.pool.fetchval("SELECT 1")

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
            self._table,
            _COLUMNS,
            numbered=True,
            prefix_test=postgres_prefix,
            function=function,
            status=status,
            prefix=prefix,
            started_from=started_from,
            started_to=started_to,
            limit=limit,
            next_token=next_token,
            newest_first=newest_first,
        )
        with self._outage_is_unavailable():
            rows = await self.pool.fetch(sql, *params)
        return page_of([_task_of(row) for row in rows], limit)

    async def purge(self, older_than_ms: int) -> int:
        with self._outage_is_unavailable():
            status = await self.pool.execute(
                f"DELETE FROM {self._table} WHERE status = ANY($1::text[]) AND ended_at < $2",
                _TERMINAL, older_than_ms,
            )
        return int(status.split()[-1])

    # Signature nonces (TaskStore.remember_nonce): their table is made on first use, so a
    # database set up before it existed gains it without a migration step.
    _nonces_ready = False

    async def remember_nonce(self, nonce: str, expires_at_ms: int, now_ms: int) -> bool:
        table = f'"{self.schema}".{NONCE_TABLE}'
        with self._outage_is_unavailable():
            if not self._nonces_ready:
                async with self.pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_KEY)
                    await conn.execute(_nonce_ddl(table))
                self._nonces_ready = True
            status = await self.pool.execute(
                _remember_nonce_sql(table), nonce, expires_at_ms, now_ms, NONCE_PRUNE_BATCH
            )
        return bool(status == "INSERT 0 1")

    async def reopen(self, task_id: str, now_ms: int, detail: str) -> Task | None:
        return await self._change(
            task_id, lambda task: decide_reopen(task, now_ms, detail), lambda after: after
        )

    async def rerun(self, task_id: str, now_ms: int, detail: str) -> Task:
        return await self._change(
            task_id, lambda task: decide_rerun(task, now_ms, detail), lambda after: after
        )


def _row_of(task: Task) -> tuple[Any, ...]:
    return (
        task.id, task.function, task.status.value, task.created_at, task.updated_at,
        task.attempts, task.started_at, task.ended_at, task.payload, task.result,
        task.result_truncated, task.error, task.lease_until, encode_events(task.events),
    )


def _changes_of(task: Task) -> tuple[Any, ...]:
    """The values the UPDATE in _change sets, in its order."""
    return (
        task.status.value, task.updated_at, task.attempts, task.started_at, task.ended_at,
        task.result, task.result_truncated, task.error, task.lease_until,
        encode_events(task.events),
    )


def _task_of(row: asyncpg.Record) -> Task:
    return Task(
        id=row[0], function=row[1], status=Status(row[2]), created_at=row[3],
        updated_at=row[4], attempts=row[5], started_at=row[6], ended_at=row[7],
        payload=row[8], result=row[9], result_truncated=row[10], error=row[11],
        lease_until=row[12], events=decode_events(row[13]),
    )


NONCE_TABLE = "asyncinvoke_nonces"


def _nonce_ddl(table: str) -> str:
    return f"""
    CREATE TABLE IF NOT EXISTS {table} (
        nonce TEXT COLLATE "C" PRIMARY KEY,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS {NONCE_TABLE}_expires ON {table} (expires_at);
    """


def _remember_nonce_sql(table: str) -> str:
    """One round trip: prune a few expired nonces (skipping rows another gateway is
    pruning), then insert this one. A nonce that expired but was not pruned yet is
    taken as new: its old request can no longer be accepted anyway."""
    return f"""
    WITH pruned AS (
        DELETE FROM {table} WHERE nonce IN (
            SELECT nonce FROM {table} WHERE expires_at <= $3 AND nonce <> $1
            LIMIT $4 FOR UPDATE SKIP LOCKED
        )
    )
    INSERT INTO {table} (nonce, expires_at) VALUES ($1, $2)
    ON CONFLICT (nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at
    WHERE {table}.expires_at <= $3
    """
