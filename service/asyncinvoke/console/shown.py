"""Values as the console shows them: records, payloads, times, charts. Pure.

Everything here returns plain text; the templates escape it (Jinja2 autoescape), so a
payload like ``<img src=x onerror=alert(1)>`` is shown as the text it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from asyncinvoke import contract, record_codec
from asyncinvoke.dlq.records import error_line, facts_of_record

MAX_SHOWN_CHARS = 20_000  # of one payload, result or record on a page
CHART_WIDTH = 120
CHART_HEIGHT = 24


def when(ms: int | None) -> str:
    """UTC time of an epoch in ms, to the second; "-" for none."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def parse_when(text: str | None) -> int | None:
    """An ``<input type=datetime-local>`` value, read as UTC, in ms; None if empty or bad."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def value_text(value: Any) -> str:
    """A decoded value as readable text: JSON when it can be, text bytes as text."""
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return _bounded(f"({len(value)} bytes, not UTF-8) {value.hex()}")
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            return _bounded(text)
    if isinstance(value, str):
        return _bounded(value)
    try:
        dumped = contract.to_json(value)
        return _bounded(orjson.dumps(orjson.loads(dumped), option=orjson.OPT_INDENT_2).decode())
    except record_codec.ENCODE_ERRORS:
        return _bounded(record_codec.render(value))


def packed_text(packed: bytes | None) -> str:
    """msgpack bytes (a task's payload or result) as text."""
    if packed is None:
        return ""
    try:
        return value_text(contract.unpack(packed))
    except Exception:
        return value_text(packed)


def _bounded(text: str) -> str:
    if len(text) <= MAX_SHOWN_CHARS:
        return text
    return text[:MAX_SHOWN_CHARS] + f"\n… ({len(text):,} characters; shown in part)"


@dataclass(frozen=True, slots=True)
class RecordView:
    """One failure record, as the failures page shows it."""

    id: str | None
    function: str | None
    condition: str | None
    attempts: int | None
    timestamp_ms: int | None
    error: str  # first line
    error_type: str
    error_message: str
    stack_trace: str
    payload: str
    record: str  # the whole record


def record_view(record: Any, header_facts: Any) -> RecordView:
    facts = facts_of_record(record)
    context = record.get("requestContext") if isinstance(record, dict) else None
    context = context if isinstance(context, dict) else {}
    response = record.get("responsePayload") if isinstance(record, dict) else None
    response = response if isinstance(response, dict) else {}
    trace = response.get("stackTrace")
    if isinstance(trace, list):
        stack = "".join(line if str(line).endswith("\n") else f"{line}\n" for line in trace)
    else:
        stack = "" if trace is None else str(trace)
    attempts = context.get("approximateInvokeCount")
    return RecordView(
        id=facts.id or header_facts.id,
        function=facts.function or header_facts.function,
        condition=facts.condition or header_facts.condition,
        attempts=attempts if type(attempts) is int else None,
        timestamp_ms=facts.timestamp_ms,
        error=error_line(record),
        error_type=str(response.get("errorType") or ""),
        error_message=_bounded(str(response.get("errorMessage") or "")),
        stack_trace=_bounded(stack),
        payload=value_text(record.get("requestPayload")) if isinstance(record, dict) else "",
        record=value_text(record),
    )


@dataclass(frozen=True, slots=True)
class Bar:
    x: int
    y: int
    height: int
    title: str


def bars(counts: list[int], label: str) -> list[Bar]:
    """A bar per minute, oldest first, scaled to the chart's height (the largest fills it)."""
    if not counts:
        return []
    top = max(counts) or 1
    width = CHART_WIDTH // len(counts) or 1
    shown = []
    for index, count in enumerate(counts):
        height = 0 if count == 0 else max(1, round(count * CHART_HEIGHT / top))
        minutes_ago = len(counts) - 1 - index
        ago = f"{minutes_ago} min ago" if minutes_ago else "this minute"
        title = f"{count} {label}, {ago}"
        shown.append(Bar(index * width, CHART_HEIGHT - height, height, title))
    return shown
