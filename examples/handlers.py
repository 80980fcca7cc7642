"""Example handlers for examples/functions.toml. A handler is handler(event, context)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from asyncinvoke import Context, NonRetryableError


def _json(event: Any) -> Any:
    """Over HTTP the event arrives as the request's bytes, as Function Compute hands it."""
    if isinstance(event, bytes | str):
        try:
            return json.loads(event)
        except ValueError:
            return event
    return event


async def hello(event: Any, context: Context) -> dict[str, Any]:
    """Greets whoever the event names: {"name": "Ada"}."""
    event = _json(event)
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    context.logger.info("greeting", name=name)
    return {"greeting": f"hello, {name}"}


def checksum(event: Any, context: Context) -> str:
    """A sync handler (runs in the thread pool): sha256 of the event's bytes or JSON text."""
    data = event if isinstance(event, bytes) else repr(event).encode()
    return hashlib.sha256(data).hexdigest()


async def flaky(event: Any, context: Context) -> str:
    """Fails on the first attempts, to show retries: {"fail_times": 2}."""
    fail_times = int(event.get("fail_times", 1)) if isinstance(event, dict) else 1
    if context.attempt < fail_times:
        raise RuntimeError(f"attempt {context.attempt} fails on purpose")
    return f"succeeded on attempt {context.attempt}"


def validate(event: Any, context: Context) -> str:
    """Refuses events without an "email" key, without retrying."""
    if not isinstance(event, dict) or "email" not in event:
        raise NonRetryableError("event has no 'email' key; retrying will not help")
    return "ok"


async def slow(event: Any, context: Context) -> str:
    """Sleeps {"seconds": S}; with the 2 s timeout below, longer sleeps time out."""
    seconds = float(event.get("seconds", 1)) if isinstance(event, dict) else 1.0
    await asyncio.sleep(seconds)
    return f"slept {seconds} s"


async def record(event: Any, context: Context) -> None:
    """A destination function: logs each record it is given."""
    context_ = event.get("requestContext", {}) if isinstance(event, dict) else {}
    condition = context_.get("condition")
    context.logger.info("record_received", condition=condition)
