"""Shared or exclusive running, for isolating suspects.

Ordinary attempts run side by side (shared). A suspect, a delivery whose worker
died while it was in flight, runs alone (exclusive): if it kills the process
again, no innocent attempt dies with it. A waiting suspect holds back new shared
entries, so a busy queue cannot starve it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Gate:
    def __init__(self) -> None:
        self._shared = 0
        self._exclusive_waiting = 0
        self._exclusive_running = False
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        if self._exclusive_waiting or self._exclusive_running:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: not (self._exclusive_waiting or self._exclusive_running)
                )
        self._shared += 1  # the fast path takes no lock: the event loop runs one task at a time
        try:
            yield
        finally:
            self._shared -= 1
            if self._shared == 0 and self._exclusive_waiting:
                async with self._changed:
                    self._changed.notify_all()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._changed:
            self._exclusive_waiting += 1
            try:
                await self._changed.wait_for(
                    lambda: self._shared == 0 and not self._exclusive_running
                )
            finally:
                self._exclusive_waiting -= 1
            self._exclusive_running = True
        try:
            yield
        finally:
            async with self._changed:
                self._exclusive_running = False
                self._changed.notify_all()
