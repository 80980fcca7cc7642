"""The task store seen by traces: each write is a span, a child of the span current where
it is made (an attempt's process span in a worker, the publish span in a client). Reads
pass straight through. Only built where ``opentelemetry-api`` is installed.

Which methods are writes, and what their spans are called, the protocol says
(``@write`` in tasks/store.py): a write added there is traced without a word here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from asyncinvoke import tracing
from asyncinvoke.tasks.store import Operation, TaskStore, writes


class TracedTaskStore:
    """``store``, with a ``tasks.<operation>`` span around each write."""

    def __init__(self, store: TaskStore, system: str):
        self.store = store
        self.system = system  # db.system.name: sqlite or postgresql
        for name, operation in writes().items():
            setattr(self, name, self._spanned(getattr(store, name), operation))

    def __getattr__(self, name: str) -> Any:
        # The reads, and what the store offers beyond the protocol (``outage`` of the
        # retrying store).
        return getattr(self.store, name)

    def _spanned(
        self, method: Callable[..., Awaitable[Any]], operation: Operation
    ) -> Callable[..., Awaitable[Any]]:
        async def spanned(task_id: str, *args: Any, **kwargs: Any) -> Any:
            named = operation(task_id, *args, **kwargs)
            with tracing.store_write(named, task_id, self.system):
                return await method(task_id, *args, **kwargs)

        return spanned


def traced(store: TaskStore, url: str) -> TaskStore:
    """``store`` with spans around its writes, where tracing is installed."""
    if not tracing.AVAILABLE:
        return store
    system = "postgresql" if url.startswith("postgres") else "sqlite"
    # Every method of the protocol is there: the writes set in __init__, the rest
    # passed through by __getattr__ (which the type checker does not follow).
    return cast(TaskStore, TracedTaskStore(store, system))
