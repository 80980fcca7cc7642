"""Dropping a test's own connections on the shared broker.

``rabbitmqctl close_all_connections`` would drop every other test's connection too (the
chaos suite does it on a private node). Here only the connections whose client-provided
name is the one given are closed: give the process under test a name of its own.
"""

from __future__ import annotations

import asyncio
import subprocess

from tests.support.infrastructure import require_tool

CTL_TIMEOUT_S = 60.0


def _ctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=CTL_TIMEOUT_S
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


async def close_connections_named(name: str, reason: str) -> int:
    """Close the broker's connections named ``name`` (client property ``connection_name``,
    matched whole); how many were closed."""
    require_tool("rabbitmqctl")
    listing = await asyncio.to_thread(_ctl, "list_connections", "pid", "client_properties")
    mark = f'{{"connection_name","{name}"}}'
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if mark in line]
    for pid in pids:
        await asyncio.to_thread(_ctl, "close_connection", pid, reason)
    return len(pids)
