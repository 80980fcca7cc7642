"""What the worker tells about each attempt: its one log line, and its metrics."""

from __future__ import annotations

from typing import Any

from asyncinvoke import contract, policy, tracing
from asyncinvoke.clock import now_ms
from asyncinvoke.contract import Envelope, Outcome
from asyncinvoke.metrics import Metrics
from asyncinvoke.observability import hot_info

FAILURE_CONDITIONS = frozenset(contract.CONDITIONS) - {contract.SUCCESS}
THROTTLED = "throttled"  # policy.Throttle's result: neither a retry nor a failure


class Journal:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        # The labelled children of each (function, result), looked up once.
        self._counters: dict[tuple[str, str], tuple[Any, ...]] = {}

    def attempt(
        self, envelope: Envelope, result: str, outcome: Outcome | None = None, **extra: Any
    ) -> None:
        """The one log line of an attempt (and its metrics); ``result`` is a condition,
        ``success``, ``retry``, or what happened instead of running it."""
        self._observe(envelope.fn, result, outcome)
        fields: dict[str, object] = {
            "component": "worker",
            "invocation_id": envelope.id,
            "function": envelope.fn,
            "attempt": envelope.attempt,
            "outcome": result,
        }
        if outcome is not None:
            fields["duration_ms"] = round(outcome.duration_ms, 3)
            if not outcome.ok:
                error = outcome.error
                fields["error_type"] = error.error_type if error is not None else None
                fields["error"] = str(error.message if error is not None else None)[:500]
        if extra:
            fields.update(extra)
        hot_info("attempt", fields)
        tracing.end_process(result, outcome)

    def settled(
        self, envelope: Envelope, settlement: policy.Settlement, outcome: Outcome, **extra: Any
    ) -> None:
        """The log line of an attempt that ran and was settled; a throttle says how many
        there were and when it comes back (it is counted apart from failures)."""
        if isinstance(settlement, policy.Throttle):
            self.attempt(
                envelope, settlement.result, outcome,
                throttles=envelope.throttles + 1, retry_in_s=settlement.wait_ms / 1000, **extra,
            )
        else:
            self.attempt(envelope, settlement.result, outcome, **extra)

    def lateness(self, envelope: Envelope) -> None:
        """How late a delayed invocation (or a retry) starts."""
        tracing.started(envelope)
        if envelope.due_at is not None or envelope.delay:
            self.metrics.delay_lateness.observe(max(0, now_ms() - envelope.due_at_ms()) / 1000)

    def failure_record(self, function: str, condition: str) -> None:
        """A record written without an attempt (invalid, unknown function, poison)."""
        self.metrics.count_failure_record(function, condition)

    def _observe(self, function: str, result: str, outcome: Outcome | None) -> None:
        counters = self._counters.get((function, result))
        if counters is None:
            counters = self._counters[(function, result)] = self._children(function, result)
        for counter in counters[1:]:
            counter.inc()
        if outcome is not None:
            counters[0].observe(outcome.duration_ms / 1000)

    def _children(self, function: str, result: str) -> tuple[Any, ...]:
        metrics = self.metrics
        children: list[Any] = [
            metrics.attempt_duration.labels(function),
            metrics.invocations.labels(function, result),
        ]
        if result == "retry":
            children.append(metrics.retries.labels(function))
        elif result == THROTTLED:
            children.append(metrics.throttles.labels(function))
        elif result in FAILURE_CONDITIONS:
            children.append(metrics.failure_records.labels(function, result))
        return tuple(children)
