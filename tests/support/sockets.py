"""Which process holds which TCP connection, read from /proc (no management plugin, no
psutil): a socket shared through fork() shows up under every process holding it."""

from __future__ import annotations

import os
import subprocess
from collections import defaultdict
from pathlib import Path

import orjson


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _tcp_local_ports(remote_port: int) -> dict[int, int]:
    """inode → local port of every established IPv4/IPv6 TCP socket to ``remote_port``."""
    ports = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        lines = Path(table).read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                ports[inode] = int(local.rsplit(":", 1)[1], 16)
    return ports


def holders_of_connections(pids: list[int], remote_port: int) -> dict[int, set[int]]:
    """Local port of each connection to ``remote_port`` held by any of ``pids`` → the
    pids holding it."""
    ports = _tcp_local_ports(remote_port)
    holders: dict[int, set[int]] = defaultdict(set)
    for pid in pids:
        for inode in _socket_inodes(pid) & set(ports):
            holders[ports[inode]].add(pid)
    return dict(holders)


def broker_peer_ports(*ctl_args: str) -> set[int]:
    """The client ports of every connection the broker lists (``rabbitmqctl``)."""
    listing = subprocess.run(
        ["rabbitmqctl", *ctl_args, "list_connections", "-q", "--formatter", "json", "peer_port"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return {row["peer_port"] for row in orjson.loads(listing.stdout or "[]")}
