"""Task stores for end-to-end tests: a SQLite file, or a PostgreSQL database of its own.

Each PostgreSQL test gets a fresh database (dropped afterwards), so tests that pick
their own task ids ("once", "dup_1") never meet the rows of another test, of another
run, or of another suite sharing the server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

POSTGRES_DSN = os.environ.get(
    "ASYNCINVOKE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
KINDS = ("sqlite", "postgresql")


@asynccontextmanager
async def task_store_url(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """The ``ASYNCINVOKE_TASK_STORE`` URL of an empty store of ``kind``."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/tasks.db"
        return
    assert kind == "postgresql", kind
    database = f"asyncinvoke_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    try:
        yield POSTGRES_DSN.rsplit("/", 1)[0] + f"/{database}"
    finally:
        admin = await asyncpg.connect(POSTGRES_DSN)
        try:
            # FORCE: a worker subprocess that was killed may leave a connection behind.
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()
