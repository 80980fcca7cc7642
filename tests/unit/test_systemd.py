"""systemd.supervised: READY, heartbeats and STOPPING, in order, to a real unix socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncinvoke.systemd import Notifier, Supervision, supervised


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    yield sock, address
    sock.close()


def _drain(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


async def test_supervised_tells_ready_then_heartbeats_then_stopping(
    listener: tuple[socket.socket, str],
) -> None:
    sock, address = listener
    notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "20000"})
    loop = asyncio.get_running_loop()
    async with supervised(notifier, lambda: "busy") as supervision:
        supervision.ready("up on :9000")
        async with asyncio.timeout(10):
            first = (await loop.sock_recv(sock, 4096)).decode()
            heartbeat = (await loop.sock_recv(sock, 4096)).decode()
    await asyncio.sleep(0.05)  # a heartbeat that outlived the block would come now
    after = _drain(sock)

    assert first == "READY=1\nSTATUS=up on :9000"
    assert heartbeat == "WATCHDOG=1\nSTATUS=busy"
    stopping = [i for i, message in enumerate(after) if message == "STOPPING=1"]
    assert stopping, after
    assert all("WATCHDOG" not in message for message in after[stopping[0]:])


async def test_a_start_that_fails_still_tells_stopping_and_never_ready(
    listener: tuple[socket.socket, str],
) -> None:
    sock, address = listener
    notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "20000"})
    with pytest.raises(ConnectionRefusedError):
        async with supervised(notifier, lambda: "busy"):
            raise ConnectionRefusedError("broker down")

    assert _drain(sock) == ["STOPPING=1"]


async def test_a_supervision_split_over_start_and_stop_tells_stopping_with_its_status(
    listener: tuple[socket.socket, str],
) -> None:
    sock, address = listener
    supervision = Supervision(Notifier({"NOTIFY_SOCKET": address}), lambda: "busy")
    supervision.ready("up")
    supervision.stopping("stopping; 2 in flight")
    await asyncio.sleep(0)  # the heartbeat task ends cancelled, having sent nothing

    assert _drain(sock) == ["READY=1\nSTATUS=up", "STOPPING=1\nSTATUS=stopping; 2 in flight"]
