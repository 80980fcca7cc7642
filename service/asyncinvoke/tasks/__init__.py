"""Task mode: per-invocation status and history in a store (SPEC section 6)."""

from __future__ import annotations

from typing import Any

from asyncinvoke.errors import ConfigError
from asyncinvoke.tasks.store import TaskStore

SQLITE_SCHEME = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(url: str, **kwargs: Any) -> TaskStore:
    """The store ``url`` names (not yet opened): ``sqlite:///PATH`` or ``postgresql://...``.

    ``sqlite:///./tasks.db`` is a path relative to the working directory,
    ``sqlite:////var/lib/asyncinvoke/tasks.db`` an absolute one.
    """
    # Drivers are imported here so a process only loads the one its store needs.
    if url.startswith(SQLITE_SCHEME) and len(url) > len(SQLITE_SCHEME):
        from asyncinvoke.tasks.sqlite import SqliteTaskStore

        return SqliteTaskStore(url[len(SQLITE_SCHEME):], **kwargs)
    if url.startswith(POSTGRES_SCHEMES):
        from asyncinvoke.tasks.postgres import PostgresTaskStore

        return PostgresTaskStore(url, **kwargs)
    # Only the scheme is shown: the rest of a URL may hold a password.
    shown = url.split("://", 1)[0] + "://..." if "://" in url else "without a scheme"
    raise ConfigError(
        f"task store URL {shown} is not one asyncinvoke accepts: use sqlite:///PATH "
        "(sqlite:///./tasks.db relative, sqlite:////var/lib/asyncinvoke/tasks.db absolute) "
        "or postgresql://USER@HOST[:PORT]/DATABASE",
        key="ASYNCINVOKE_TASK_STORE",
    )
