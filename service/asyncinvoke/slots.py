"""A function's attempts in flight, capped by a limit that can change while they run.

``asyncio.Semaphore`` has a fixed size; live configuration changes a function's
concurrency without a restart. Lowering the limit takes no running attempt away: new
attempts wait until fewer than the new limit run. Waiters are served first come, first
served.
"""

from __future__ import annotations

import asyncio
import collections
from types import TracebackType


class Slots:
    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"a limit of {limit}: at least 1 attempt must be able to run")
        self._limit = limit
        self.running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def limit(self) -> int:
        return self._limit

    def resize(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a limit of {limit}: at least 1 attempt must be able to run")
        self._limit = limit
        self._wake()

    async def __aenter__(self) -> None:
        if self.running < self._limit and not self._waiters:
            self.running += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # the slot is counted for us by _wake
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # woken and cancelled at once: pass the slot on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        self.running -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.running < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.running += 1
                waiter.set_result(None)
