"""Shared or exclusive running, for isolating suspects.

Ordinary attempts run side by side (shared). A suspect, a delivery whose worker
died while it was in flight, runs alone (exclusive): if it kills the process
again, no innocent attempt dies with it. A waiting suspect holds back new shared
entries, so a busy queue cannot starve it.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Gate:
    def __init__(self) -> None:
        self._shared_count = 0
        self._exclusive_waiting = 0
        self._exclusive_running = False
        self._changed = asyncio.Condition()
        self._shared = _Shared(self)
        self._exclusive = _Exclusive(self)

    def shared(self) -> _Shared:
        return self._shared

    def exclusive(self) -> _Exclusive:
        return self._exclusive

    def _blocked(self) -> bool:
        return bool(self._exclusive_waiting or self._exclusive_running)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


class _Shared:
    """On the hot path: no lock unless a suspect waits or runs (one event loop, no races)."""

    __slots__ = ("gate",)

    def __init__(self, gate: Gate):
        self.gate = gate

    async def __aenter__(self) -> None:
        gate = self.gate
        if gate._blocked():
            async with gate._changed:
                await gate._changed.wait_for(lambda: not gate._blocked())
        gate._shared_count += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        gate = self.gate
        gate._shared_count -= 1
        if gate._shared_count == 0 and gate._exclusive_waiting:
            await gate._notify()


class _Exclusive:
    __slots__ = ("gate",)

    def __init__(self, gate: Gate):
        self.gate = gate

    async def __aenter__(self) -> None:
        gate = self.gate
        async with gate._changed:
            gate._exclusive_waiting += 1
            try:
                await gate._changed.wait_for(
                    lambda: gate._shared_count == 0 and not gate._exclusive_running
                )
            finally:
                gate._exclusive_waiting -= 1
            gate._exclusive_running = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        gate = self.gate
        gate._exclusive_running = False
        await gate._notify()
