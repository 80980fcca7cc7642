"""Handlers of the poison tests: a poison that kills its worker process, and innocents
that note their runs.

With ``event["marks"]`` set, each run appends a line to that file: ``PID start ID`` and
``PID end ID`` for an innocent, ``PID poison ID`` for the poison. A test in another
process can then tell, for each worker process that died, which innocents were running
in it at its death: those that started there and never ended there.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from asyncinvoke import Context

# Not 1, the command line's exit status for any error: a test must not count an ordinary
# failure of the worker as a death by poison.
POISON_EXIT_STATUS = 86
# The poison lingers this long before it strikes, so that the innocents delivered with it
# are mid-run when it does; an innocent that could start beside it (it should not, once
# the poison is a suspect) has the time to.
POISON_LINGER_S = 0.3


def _mark(event: Any, what: str, context: Context) -> None:
    marks = event.get("marks") if isinstance(event, dict) else None
    if marks:
        with open(marks, "a") as file:
            file.write(f"{os.getpid()} {what} {context.invocation_id}\n")


async def poison_or_sleep(event: Any, context: Context) -> str:
    """Kills the worker (status POISON_EXIT_STATUS) for a poison event, as a segfault
    would; otherwise sleeps ``event["seconds"]`` (0 when absent)."""
    if isinstance(event, dict) and event.get("poison"):
        _mark(event, "poison", context)
        await asyncio.sleep(POISON_LINGER_S)
        os._exit(POISON_EXIT_STATUS)
    _mark(event, "start", context)
    await asyncio.sleep(float(event.get("seconds", 0)) if isinstance(event, dict) else 0)
    _mark(event, "end", context)
    return "fine"
