"""Handlers the benchmarks configure: no-ops, so only the framework's cost is measured."""

from __future__ import annotations

from typing import Any


async def noop(event: Any, context: Any) -> None:
    return None


def sync_noop(event: Any, context: Any) -> None:
    return None
