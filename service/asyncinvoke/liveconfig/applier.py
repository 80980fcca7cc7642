"""A worker's side of live configuration: each change applied to its functions and their
consumers, without a restart.

What changes at once (on the event loop, in the store's callback): the function's spec
and version, which the next attempt takes when it starts, its pause flag, and its
slots' limit. What follows in a task, one function at a time and always to the latest
state: its consumers cancelled (paused) or started again, with the prefetch that goes
with its concurrency. ``applied`` holds, per function, the store's version (``log_version``)
up to which its consumers are in place: a pause is acknowledged by this worker once that
reaches the pause's version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from asyncinvoke.consumer import Consumers
from asyncinvoke.liveconfig.model import Effective
from asyncinvoke.observability import get_logger
from asyncinvoke.pipeline import Function
from asyncinvoke.topology import Names

log = get_logger(component="liveconfig")


class Applier:
    def __init__(
        self,
        functions: dict[str, Function],
        consumers: Consumers,
        names: Names,
        prefetch_for: Callable[[str, int], int],
        slots_for: Callable[[str, int], int],
        log_version: Callable[[], int],
    ):
        self.functions = functions
        self.consumers = consumers
        self.names = names
        self.prefetch_for = prefetch_for  # (function, concurrency) → its consumer's prefetch
        self.slots_for = slots_for  # (function, concurrency) → its attempts at once
        self.log_version = log_version
        self.applied: dict[str, int] = {name: log_version() for name in functions}
        self._heard: dict[str, int] = dict(self.applied)
        self._prefetch = {
            name: prefetch_for(name, f.spec.concurrency) for name, f in functions.items()
        }
        self._locks = {name: asyncio.Lock() for name in functions}
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()

    def on_change(self, name: str, live: Effective) -> None:
        """LiveConfig's listener: the function takes the new configuration now."""
        function = self.functions.get(name)
        if function is None:
            return  # not run by this worker (--function)
        function.spec = live.spec
        function.version = live.version
        function.paused = live.paused
        function.slots.resize(self.slots_for(name, live.spec.concurrency))
        self._heard[name] = self.log_version()
        task = asyncio.get_running_loop().create_task(self._follow(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow(self, name: str) -> None:
        function = self.functions[name]
        async with self._locks[name]:
            version, paused, heard = function.version, function.paused, self._heard[name]
            queue = self.names.function_queue(name)
            suspects = self.names.suspect_queue(name)
            try:
                if paused:
                    await self.consumers.pause(queue)
                    await self.consumers.pause(suspects)
                else:
                    prefetch = self.prefetch_for(name, function.spec.concurrency)
                    if prefetch != self._prefetch[name]:
                        await self.consumers.set_prefetch(queue, prefetch)
                        self._prefetch[name] = prefetch
                    await self.consumers.resume(queue)
                    await self.consumers.resume(suspects)
            except Exception as exc:  # the channel is being reopened: it consumes as before
                log.error("config_apply_failed", function=name, version=version, error=str(exc))
                return
        log.info(
            "config_applied",
            function=name,
            version=version,
            store_version=heard,
            paused=paused,
            concurrency=function.spec.concurrency,
            max_retries=function.spec.max_retries,
        )
        async with self._changed:
            self.applied[name] = max(self.applied.get(name, 0), heard)
            self._changed.notify_all()

    async def wait_applied(self, name: str, version: int, timeout_s: float) -> None:
        """Return once ``name``'s consumers follow the store's ``version`` or a later one
        (TimeoutError)."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: self.applied.get(name, 0) >= version)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
