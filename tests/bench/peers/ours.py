"""asyncinvoke's side: the handlers its benchmark workers are configured with."""

from __future__ import annotations

import time
from typing import Any

from tests.bench.peers import probe


async def noop(event: Any, context: Any) -> None:
    """The no-op every system runs: ``event`` is the send time (see probe.hit)."""
    probe.hit(event)


async def stamp(event: Any, context: Any) -> int:
    """Its start time, ms since the epoch: the result that the success record carries."""
    return time.time_ns() // 1_000_000


def burn(event: Any, context: Any) -> None:
    """The CPU-bound task (a sync handler, for ``executor = "process"``)."""
    probe.hit(event)
    probe.burn()
