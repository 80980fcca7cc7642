"""What the dead-letter tool reads in a failure record: selection, summaries, replay.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asyncinvoke import contract, ladder
from asyncinvoke.contract import Envelope, Record
from asyncinvoke.errors import InvalidMessage, NotReplayable

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


def _read(record: Any) -> Record | None:
    """A decoded message as a record; None when it is not even a map."""
    return Record.from_wire(record) if isinstance(record, dict) else None


def _facts(read: Record | None) -> Facts:
    if read is None:
        return Facts(id=None, function=None, condition=None)
    return Facts(
        id=read.request_id or None,
        function=read.function or None,
        condition=read.condition or None,
        timestamp_ms=read.timestamp,
    )


def facts_of_record(record: Any) -> Facts:
    return _facts(_read(record))


def _error_line(read: Record | None) -> str:
    if read is None:
        return "(the message is not a record)"
    text = ""
    if read.error is not None:
        parts = (read.error.error_type, read.error.message)
        text = ": ".join(part for part in parts if part)
    if not text and read.delivery_error is not None:
        text = f"destination {read.delivery_error.destination}: {read.delivery_error.error}"
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def error_line(record: Any) -> str:
    """The first line of the record's error, for a table."""
    return _error_line(_read(record))


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
    read = _read(record)
    facts = _facts(read)
    return Summary(
        id=facts.id or fallback.id,
        function=facts.function or fallback.function,
        condition=facts.condition or fallback.condition,
        attempts=read.attempts if read is not None else None,
        timestamp_ms=facts.timestamp_ms,
        error=_error_line(read),
    )


def _carried_invocation(carried: str | None) -> Any:
    """The invocation a degraded record carries as msgpack in base64 (record_codec.py)."""
    if carried is None:
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
    read = _read(record)
    invocation = read.invocation if read is not None else None
    if read is not None and read.invocation_bytes is not None:
        raise NotReplayable(
            f"the record keeps only the start of the original message "
            f"({read.invocation_bytes} bytes); it cannot be sent again"
        )
    if invocation is None and read is not None:
        invocation = _carried_invocation(read.invocation_base64)
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


