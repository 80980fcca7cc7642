"""sd_notify: tell systemd (Type=notify) when we are ready, alive and stopping.

Written by hand: the protocol is one datagram of ``KEY=VALUE`` lines to the unix
socket in NOTIFY_SOCKET, and the libraries for it pull in C bindings.
Without NOTIFY_SOCKET every call does nothing.

The worker, the gateway and ``asyncinvoke serve`` tell it the same sequence, READY once
up, WATCHDOG heartbeats while running, STOPPING when winding down: ``Supervision`` says
it once, and ``supervised`` wraps it around a block.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        # An address starting with "@" is in the abstract namespace.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s: float | None = None
        if watchdog_usec.isdigit() and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            self.watchdog_s = int(watchdog_usec) / 1_000_000

    def notify(self, *lines: str) -> None:
        if not self.address:
            return
        # OSError: systemd went away; there is nothing to tell.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, suppress(OSError):
            sock.sendto("\n".join(lines).encode(), self.address)

    async def watchdog(self, status: Callable[[], str]) -> None:
        """Heartbeats from the event loop itself: a stuck loop stops them, and systemd acts."""
        if self.watchdog_s is None:
            return
        while True:
            self.notify("WATCHDOG=1", f"STATUS={status()}")
            await asyncio.sleep(self.watchdog_s / 2)


class Supervision:
    """One service's READY, heartbeats and STOPPING; ``status`` is the heartbeats' STATUS."""

    def __init__(self, notifier: Notifier, status: Callable[[], str]):
        self.notifier = notifier
        self.status = status
        self._watchdog: asyncio.Task[None] | None = None

    def ready(self, status: str) -> None:
        """Tell systemd the service is up, and start the heartbeats."""
        self.notifier.notify("READY=1", f"STATUS={status}")
        self._watchdog = asyncio.create_task(self.notifier.watchdog(self.status))

    def stopping(self, status: str | None = None) -> None:
        """Tell systemd the service is winding down, and end the heartbeats."""
        self.notifier.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))
        if self._watchdog is not None:
            self._watchdog.cancel()


@asynccontextmanager
async def supervised(notifier: Notifier, status: Callable[[], str]) -> AsyncIterator[Supervision]:
    """A block that calls ``ready`` once the service is up; STOPPING is told however it ends
    (an exception at start-up too), before the code after the block stops the service."""
    supervision = Supervision(notifier, status)
    try:
        yield supervision
    finally:
        supervision.stopping()
