"""Dropping a test's own connections on the shared broker.

``rabbitmqctl close_all_connections`` would drop every other test's connection too (the
chaos suite does it on a private node). Here only the connections whose client-provided
name is the one given are closed: give the process under test a name of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from tests.support.infrastructure import require_tool

if TYPE_CHECKING:
    from asyncinvoke.functions import FunctionsFile
    from asyncinvoke.worker import Worker
    from tests.conftest import Namespace

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


@contextlib.asynccontextmanager
async def named_worker(
    space: Namespace, functions_file: FunctionsFile, name: str = "worker"
) -> AsyncIterator[Worker]:
    """A worker in this process whose connection has a name no other test's has (for
    ``close_connections_named``)."""
    from asyncinvoke.worker import Worker

    worker = Worker(space.settings, functions_file)
    worker.broker.name = f"asyncinvoke-test-{space.ns}-{name}"
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()
