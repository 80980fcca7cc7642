"""Invocations, failures and throttles per function over the last hour, from this
process's metrics.

The counters are the worker's own (``metrics.Metrics``): in ``serve`` they count what the
worker in this process ran. A gateway alone runs no worker, so its history is empty and
the page says so; the workers' ``/metrics`` have the numbers then.

A snapshot of the cumulative counters is kept per minute (61 at most), so the history
costs a few kilobytes whatever the traffic; a minute's count is the difference between
the snapshots that end it and the one before.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry

MINUTES = 60
INVOCATIONS = "invocations"
FAILURES = "failures"
THROTTLES = "throttles"
_COUNTERS = {
    "asyncinvoke_invocations": INVOCATIONS,
    "asyncinvoke_failure_records": FAILURES,
    "asyncinvoke_throttles": THROTTLES,
}

Totals = dict[tuple[str, str], float]  # (function, kind) → cumulative count


def read_totals(registry: CollectorRegistry) -> Totals:
    totals: Totals = {}
    for family in registry.collect():
        kind = _COUNTERS.get(family.name)
        if kind is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = (sample.labels.get("function", ""), kind)
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


class History:
    def __init__(self, read: Callable[[], Totals]):
        self._read = read
        self._snapshots: deque[tuple[int, Totals]] = deque(maxlen=MINUTES + 1)

    def sample(self, now_s: float) -> None:
        minute = int(now_s // 60)
        totals = self._read()
        if self._snapshots and self._snapshots[-1][0] == minute:
            self._snapshots[-1] = (minute, totals)
        else:
            self._snapshots.append((minute, totals))

    def per_minute(self, function: str, kind: str, now_s: float) -> list[int]:
        """Counts of the last MINUTES minutes, oldest first (this minute last)."""
        now_minute = int(now_s // 60)
        key = (function, kind)
        cumulative = []
        snapshots = list(self._snapshots)
        index = 0
        # Before the first snapshot nothing was counted here (the counters start at zero
        # with the process, and the first snapshot is taken at start).
        last = 0.0
        for minute in range(now_minute - MINUTES, now_minute + 1):
            while index < len(snapshots) and snapshots[index][0] <= minute:
                last = snapshots[index][1].get(key, 0.0)
                index += 1
            cumulative.append(last)
        return [int(b - a) for a, b in itertools.pairwise(cumulative)]
