"""Handlers the console tests serve. ``mend`` fails until the file its payload names exists."""

from __future__ import annotations

import os
from typing import Any


def mend(event: Any, context: Any) -> dict[str, str]:
    if not os.path.exists(event["fixed_when"]):
        raise RuntimeError(f"not fixed yet: {event['note']}")
    return {"mended": event["note"]}


def hello(event: Any, context: Any) -> str:
    return "hello"
