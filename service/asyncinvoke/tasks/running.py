"""Task-mode attempts running in this worker, so that a stop can reach them (SPEC
section 6: a running async handler is cancelled).

A sync handler's thread cannot be interrupted: it runs to its end, and its result is
discarded, because the stop was asked for while it ran (or, if the request came too
late, because its task is Stopping by then: ``TaskTracker.settled``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from asyncinvoke.contract import Outcome


class RunningAttempts:
    def __init__(self) -> None:
        # By task id: the attempt, and whether cancelling it stops it.
        self._running: dict[str, tuple[asyncio.Task[Outcome], bool]] = {}
        self._stop_asked: set[str] = set()

    async def run(
        self, task_id: str, attempt: Coroutine[Any, Any, Outcome], *, cancellable: bool
    ) -> tuple[Outcome | None, bool]:
        """Run ``attempt`` in a task of its own: its outcome (None if a stop cancelled it)
        and whether a stop was asked for while it ran."""
        task = asyncio.create_task(attempt)
        self._running[task_id] = (task, cancellable)
        try:
            outcome = await task
            return outcome, task_id in self._stop_asked
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task_id in self._stop_asked and not (current and current.cancelling()):
                return None, True
            raise  # the worker is shutting down
        finally:
            self._running.pop(task_id, None)
            self._stop_asked.discard(task_id)

    def stop(self, task_id: str) -> bool:
        """Stop the attempt of ``task_id`` if it runs here; whether it was here."""
        running = self._running.get(task_id)
        if running is None:
            return False
        task, cancellable = running
        self._stop_asked.add(task_id)
        if cancellable:
            task.cancel()
        return True
