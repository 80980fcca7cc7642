"""Handlers the console tests serve. ``mend`` fails until the file its payload names
exists; ``choke`` is throttled once (it leaves the file its payload names), then succeeds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from asyncinvoke import Throttled


def mend(event: Any, context: Any) -> dict[str, str]:
    if not os.path.exists(event["fixed_when"]):
        raise RuntimeError(f"not fixed yet: {event['note']}")
    return {"mended": event["note"]}


def choke(event: Any, context: Any) -> str:
    mark = Path(event["mark"])
    if not mark.exists():
        mark.touch()
        raise Throttled("busy: come back in a second", retry_after=1)
    return "through"


def hello(event: Any, context: Any) -> str:
    return "hello"
