"""Host tools that some tests need. Missing on a developer's machine, a test skips and
says which; under CI (``CI=true``) a skip fails the run instead (tests/conftest.py),
since a green CI must mean every test ran."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def require_tool(name: str) -> str:
    """The path of command ``name``; skips the test (fails it under CI) if it is missing."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not on this host"
        if in_ci():
            pytest.fail(f"{reason}: CI must have it (.ci/run installs what the tests need)")
        pytest.skip(reason)
    return path


async def until_unacknowledged(queue: str, count: int, timeout: float = 30.0) -> None:
    """Wait until the broker counts ``count`` deliveries of ``queue`` unacknowledged.

    Its counts are statistics, refreshed every few seconds (collect_statistics_interval,
    5 s by default), so a count is waited for, not read once.
    """
    seen: list[int] = []
    try:
        async with asyncio.timeout(timeout):
            while not seen or seen[-1] != count:
                if seen:
                    await asyncio.sleep(0.5)
                seen.append(await unacknowledged(queue))
    except TimeoutError:
        counts = f"{queue}: unacknowledged {seen} within {timeout} s, never {count}"
        raise AssertionError(counts) from None


async def unacknowledged(queue: str) -> int:
    """Deliveries of ``queue`` that consumers hold unacknowledged, as the broker counts
    them (``rabbitmqctl list_queues``: AMQP itself only tells the ready ones)."""
    command = require_tool("rabbitmqctl")
    result = await asyncio.to_thread(
        subprocess.run,
        [command, "-q", "list_queues", "--no-table-headers", "name", "messages_unacknowledged"],
        capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        name, _, count = line.rpartition("\t")
        if name == queue:
            return int(count)
    raise AssertionError(f"rabbitmqctl does not list queue {queue!r}")
