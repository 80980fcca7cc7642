"""sd_notify: tell systemd (Type=notify) when we are ready, alive and stopping.

Written by hand: the protocol is one datagram of ``KEY=VALUE`` lines to the unix
socket in NOTIFY_SOCKET, and the libraries for it pull in C bindings.
Without NOTIFY_SOCKET every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping
from contextlib import suppress


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

    @property
    def enabled(self) -> bool:
        return bool(self.address)

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
