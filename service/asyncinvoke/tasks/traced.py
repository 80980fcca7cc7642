"""The task store seen by traces: each write is a span, a child of the span current where
it is made (an attempt's process span in a worker, the publish span in a client). Reads
pass straight through. Only built where ``opentelemetry-api`` is installed.
"""

from __future__ import annotations

from typing import Any

from asyncinvoke import tracing
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import ClaimResult, Page, Task, TaskStore


class TracedTaskStore:
    """``store``, with a ``tasks.<operation>`` span around each write."""

    def __init__(self, store: TaskStore, system: str):
        self.store = store
        self.system = system  # db.system.name: sqlite or postgresql

    def __getattr__(self, name: str) -> Any:
        # What the store offers beyond the protocol (``outage`` of the retrying store).
        return getattr(self.store, name)

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()

    async def create(
        self, task_id: str, function: str, payload: bytes | None, now_ms: int, detail: str = ""
    ) -> Task:
        with tracing.store_write("create", task_id, self.system):
            return await self.store.create(task_id, function, payload, now_ms, detail)

    async def ensure(
        self, task_id: str, function: str, payload: bytes | None, now_ms: int
    ) -> Task:
        with tracing.store_write("ensure", task_id, self.system):
            return await self.store.ensure(task_id, function, payload, now_ms)

    async def claim(self, task_id: str, attempt: int, now_ms: int, lease_ms: int) -> ClaimResult:
        with tracing.store_write("claim", task_id, self.system):
            return await self.store.claim(task_id, attempt, now_ms, lease_ms)

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
        with tracing.store_write(f"transition.{target.value}", task_id, self.system):
            return await self.store.transition(
                task_id, target, now_ms, detail, result=result, error=error
            )

    async def request_stop(self, task_id: str, now_ms: int) -> Task:
        with tracing.store_write("request_stop", task_id, self.system):
            return await self.store.request_stop(task_id, now_ms)

    async def get(self, task_id: str) -> Task | None:
        return await self.store.get(task_id)

    async def ping(self) -> None:
        await self.store.ping()

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
        return await self.store.list(
            function=function, status=status, prefix=prefix, started_from=started_from,
            started_to=started_to, limit=limit, next_token=next_token,
            newest_first=newest_first,
        )

    async def purge(self, older_than_ms: int) -> int:
        return await self.store.purge(older_than_ms)

    async def remember_nonce(self, nonce: str, expires_at_ms: int, now_ms: int) -> bool:
        return await self.store.remember_nonce(nonce, expires_at_ms, now_ms)

    async def reopen(self, task_id: str, now_ms: int, detail: str) -> Task | None:
        with tracing.store_write("reopen", task_id, self.system):
            return await self.store.reopen(task_id, now_ms, detail)

    async def rerun(self, task_id: str, now_ms: int, detail: str) -> Task:
        with tracing.store_write("rerun", task_id, self.system):
            return await self.store.rerun(task_id, now_ms, detail)


def traced(store: TaskStore, url: str) -> TaskStore:
    """``store`` with spans around its writes, where tracing is installed."""
    if not tracing.AVAILABLE:
        return store
    return TracedTaskStore(store, "postgresql" if url.startswith("postgres") else "sqlite")
