"""Named points where a worker stops, for the crash tests; inert in every other run.

The crash tests (tests/reliability/test_kill_points.py) kill a worker with SIGKILL
after a handler returned and before its delivery is acknowledged, at each follow-up:
a retry, a forward into the ladder, a record. To land the kill at that moment for
certain, a worker started with ``ASYNCINVOKE_TESTPOINT=NAME`` stops every delivery
that reaches point NAME: it logs ``testpoint_reached`` and waits there until it is
killed. The rest of the process goes on as usual (acknowledgements of other
deliveries included), so what the broker holds at the kill is what it would hold
after a crash at that point.

The variable is read once, at import (a test sets it for the worker it starts).
Without it, ``pause`` returns after one comparison with None, a cost lost in that of
a delivery. A success with a queue destination, or none, never calls it; every other
path calls it once.
"""

from __future__ import annotations

import asyncio
import os

from asyncinvoke.errors import ConfigError
from asyncinvoke.observability import get_logger

ENV = "ASYNCINVOKE_TESTPOINT"

# Each point sits where a delivery's attempt is over and a follow-up is about to be
# published (or, for "hold", where a delivery waits out the last fraction of its delay):
# the delivery is unacknowledged, and nothing that follows from it is confirmed yet.
POINTS = (
    "retry",  # pipeline: a retry is about to be scheduled
    "forward",  # pipeline: a plain producer's delayed invocation goes into the ladder
    "hold",  # pipeline: a delivery due within the second is held in the worker
    "failure_record",  # destinations: a record is about to go to the failure queue
    "function_destination",  # destinations: a record is about to invoke a function
    "http_destination",  # destinations: a record is about to be POSTed
)

_armed: str | None = os.environ.get(ENV) or None
if _armed is not None and _armed not in POINTS:
    raise ConfigError(f"{ENV}={_armed!r} names no test point; known: {', '.join(POINTS)}")


async def pause(point: str) -> None:
    """Stop here for good if ``point`` is the armed one; return at once otherwise."""
    if _armed is None or point != _armed:
        return
    get_logger(component="testpoints").warning("testpoint_reached", point=point)
    await asyncio.Event().wait()  # until the test kills the process
