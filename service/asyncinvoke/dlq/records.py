"""What the dead-letter tool reads in a failure record: selection, summaries, replay.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asyncinvoke import contract, ladder
from asyncinvoke.contract import Envelope
from asyncinvoke.errors import InvalidMessage

# -- selection and record views (pure) ---------------------------------------------------

_DURATION_RE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now_ms: int) -> int:
    """``90s``/``15m``/``2h``/``7d``/``1w`` back from now, or an ISO 8601 time → ms.

    An ISO time without an offset is local time.
    """
    match = _DURATION_RE.match(text.strip())
    if match:
        return now_ms - int(match.group(1)) * _UNIT_S[match.group(2)] * 1000
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (90s, 15m, 2h, 7d) nor an ISO 8601 time "
            "(2024-05-01T12:00, 2024-05-01T12:00:00+02:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Facts:
    """What selection looks at: taken from AMQP properties, else from the record."""

    id: str | None
    function: str | None
    condition: str | None
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Selector:
    """Which records a command acts on; every given criterion must hold."""

    ids: frozenset[str] = frozenset()
    function: str | None = None
    condition: str | None = None
    since_ms: int | None = None

    @property
    def needs_timestamp(self) -> bool:
        return self.since_ms is not None

    def matches(self, facts: Facts) -> bool:
        return (
            (not self.ids or facts.id in self.ids)
            and (self.function is None or facts.function == self.function)
            and (self.condition is None or facts.condition == self.condition)
            and (
                self.since_ms is None
                or (facts.timestamp_ms is not None and facts.timestamp_ms >= self.since_ms)
            )
        )

    def describe(self) -> str:
        parts = [f"--id {i}" for i in sorted(self.ids)]
        if self.function is not None:
            parts.append(f"--function {self.function}")
        if self.condition is not None:
            parts.append(f"--condition {self.condition}")
        if self.since_ms is not None:
            since = datetime.fromtimestamp(self.since_ms / 1000).astimezone()
            parts.append(f"--since {since.isoformat(timespec='seconds')}")
        return " ".join(parts) if parts else "--all"


ALL = Selector()


def _context(record: Any) -> Mapping[str, Any]:
    context = record.get("requestContext") if isinstance(record, dict) else None
    return context if isinstance(context, dict) else {}


def _str_or_none(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def facts_of_record(record: Any) -> Facts:
    context = _context(record)
    return Facts(
        id=_str_or_none(context.get("requestId")),
        function=_str_or_none(context.get("functionName")),
        condition=_str_or_none(context.get("condition")),
        timestamp_ms=_int_or_none(record.get("timestamp")) if isinstance(record, dict) else None,
    )


def error_line(record: Any) -> str:
    """The first line of the record's error, for a table."""
    if not isinstance(record, dict):
        return "(the message is not a record)"
    response = record.get("responsePayload")
    text = ""
    if isinstance(response, dict) and ("errorType" in response or "errorMessage" in response):
        kind, message = response.get("errorType"), response.get("errorMessage")
        text = ": ".join(str(part) for part in (kind, message) if part not in (None, ""))
    delivery = record.get("deliveryError")
    if not text and isinstance(delivery, dict):
        text = f"destination {delivery.get('destination')}: {delivery.get('error')}"
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


@dataclass(frozen=True, slots=True)
class Summary:
    """One line of ``dlq list``."""

    id: str | None
    function: str | None
    condition: str | None
    attempts: int | None
    timestamp_ms: int | None
    error: str

    def to_dict(self, now_ms: int) -> dict[str, Any]:
        age = None if self.timestamp_ms is None else (now_ms - self.timestamp_ms) / 1000
        return {
            "id": self.id,
            "function": self.function,
            "condition": self.condition,
            "attempts": self.attempts,
            "timestamp": self.timestamp_ms,
            "age_s": age,
            "error": self.error,
        }


def summarize(record: Any, fallback: Facts) -> Summary:
    facts = facts_of_record(record)
    return Summary(
        id=facts.id or fallback.id,
        function=facts.function or fallback.function,
        condition=facts.condition or fallback.condition,
        attempts=_int_or_none(_context(record).get("approximateInvokeCount")),
        timestamp_ms=facts.timestamp_ms,
        error=error_line(record),
    )


class NotReplayable(Exception):
    """A record whose original invocation cannot be sent again; it stays in the queue."""


def _carried_invocation(record: dict[str, Any]) -> Any:
    """The invocation a degraded record carries as msgpack in base64 (record_codec.py)."""
    carried = record.get(contract.INVOCATION_BASE64)
    if not isinstance(carried, str):
        return None
    try:
        return contract.unpack(base64.b64decode(carried, validate=True))
    except Exception as exc:
        raise NotReplayable(
            f"'{contract.INVOCATION_BASE64}' is not msgpack in base64: {exc}"
        ) from None


def replay_envelope(record: Any, *, now_ms: int, fresh_id: str | None = None) -> Envelope:
    """The record's original invocation as a new acceptance: now, no delay, attempt 0.

    Under its own id it is marked a replay: a task-mode worker then runs the task again
    if it failed, where a plain duplicate of a finished task is not run.
    """
    invocation = record.get("invocation") if isinstance(record, dict) else None
    if isinstance(record, dict) and isinstance(record.get(contract.INVOCATION_BYTES), int):
        raise NotReplayable(
            f"the record keeps only the start of the original message "
            f"({record[contract.INVOCATION_BYTES]} bytes); it cannot be sent again"
        )
    if invocation is None and isinstance(record, dict):
        invocation = _carried_invocation(record)
    if isinstance(invocation, bytes | bytearray):
        raise NotReplayable(
            "the original message could not be decoded (the record keeps its raw bytes); "
            "fix it and publish it by hand"
        )
    if not isinstance(invocation, dict):
        raise NotReplayable("the record carries no original invocation")
    try:
        original = contract.from_wire(
            invocation, received_at_ms=now_ms, max_delay_s=ladder.MAX_DELAY_S
        )
    except InvalidMessage as exc:
        raise NotReplayable(f"the original invocation breaks the contract: {exc}") from None
    return dataclasses.replace(
        original,
        id=fresh_id or original.id,
        created_at=now_ms,
        delay=0,
        attempt=0,
        due_at=None,
        replay=fresh_id is None,
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


