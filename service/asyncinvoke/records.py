"""Build the record of each way an invocation can end (SPEC section 5). Pure."""

from __future__ import annotations

import base64
from typing import Any
from uuid import uuid4

from asyncinvoke import contract
from asyncinvoke.contract import Envelope, ErrorInfo, Outcome, Record
from asyncinvoke.errors import InvalidMessage, PayloadTooLarge
from asyncinvoke.text import escape_surrogates

# What a PayloadTooLarge record keeps of the message: enough to recognise it. The
# whole body could be as big as the broker allows, and a record is no place for it.
OVERSIZE_KEPT_BYTES = 16 * 1024
# The longest error text a last-resort record carries.
LAST_RESORT_REASON_CHARS = 2000


def of_outcome(envelope: Envelope, outcome: Outcome, condition: str, now_ms: int) -> Record:
    """The record of an attempt that ended the invocation, successful or not. Its
    approximateInvokeCount counts the throttled attempts too: the function was called."""
    return Record(
        request_id=envelope.id,
        function=envelope.fn,
        condition=condition,
        attempts=envelope.attempt + envelope.throttles + 1,
        request_payload=envelope.payload,
        status_code=outcome.status_code,
        function_error=outcome.function_error,
        response=outcome.result if outcome.ok else outcome.error,
        invocation=envelope.for_replay(),
        timestamp=now_ms,
    )


def expired(envelope: Envelope, age_ms: int, max_age_s: int, now_ms: int) -> Record:
    return Record(
        request_id=envelope.id,
        function=envelope.fn,
        condition=contract.EVENT_AGE_EXCEEDED,
        attempts=envelope.attempt,
        request_payload=envelope.payload,
        status_code=410,
        function_error="",
        response=ErrorInfo(
            "EventAgeExceeded",
            f"invocation is {age_ms / 1000:.1f} s old, older than the function's "
            f"max_event_age of {max_age_s} s; it was not started",
        ),
        invocation=envelope.for_replay(),
        timestamp=now_ms,
    )


def unknown_function(envelope: Envelope, now_ms: int) -> Record:
    return Record(
        request_id=envelope.id,
        function=envelope.fn,
        condition=contract.UNKNOWN_FUNCTION,
        attempts=envelope.attempt,
        request_payload=envelope.payload,
        status_code=404,
        function_error="",
        response=ErrorInfo(
            "UnknownFunction",
            f"no queue serves function {envelope.fn!r}: add it to the functions file and "
            "start a worker (or run 'asyncinvoke topology declare'), then replay this record",
        ),
        invocation=envelope.for_replay(),
        timestamp=now_ms,
    )


def delivery_limit(envelope: Envelope, deliveries: int | None, now_ms: int) -> Record:
    times = f"{deliveries} times" if deliveries else "too many times"
    return Record(
        request_id=envelope.id,
        function=envelope.fn,
        condition=contract.DELIVERY_LIMIT_EXCEEDED,
        attempts=envelope.attempt + (deliveries or 1),
        request_payload=envelope.payload,
        status_code=500,
        function_error=contract.UNHANDLED,
        response=ErrorInfo(
            "DeliveryLimitExceeded",
            f"delivered {times} without being settled: the worker running it died "
            "(a crash, an out-of-memory kill, os._exit) or was stopped each time",
        ),
        invocation=envelope.for_replay(),
        timestamp=now_ms,
    )


def invalid(
    body: bytes,
    exc: InvalidMessage,
    *,
    function: str,
    message_id: str | None,
    now_ms: int,
) -> Record:
    """A message that breaks the contract. The original is kept whole, for replay."""
    partial = exc.partial or {}
    request_id = partial.get("id")
    if not (isinstance(request_id, str) and contract.ID_RE.fullmatch(request_id)):
        request_id = message_id or f"invalid_{uuid4().hex}"
    fn = partial.get("fn")
    if not (isinstance(fn, str) and contract.FUNCTION_RE.fullmatch(fn)):
        fn = function
    reason = exc.reason
    invocation: Any = partial if partial else body
    if isinstance(exc, PayloadTooLarge) and len(body) > OVERSIZE_KEPT_BYTES:
        invocation = body[:OVERSIZE_KEPT_BYTES]
        reason += f"; the record keeps its first {OVERSIZE_KEPT_BYTES} bytes"
    return Record(
        request_id=request_id,
        function=fn,
        condition=contract.INVALID_MESSAGE,
        attempts=0,
        request_payload=partial.get("payload"),
        status_code=400,
        function_error="",
        response=ErrorInfo("InvalidMessage", reason),
        invocation=invocation,
        timestamp=now_ms,
        invocation_bytes=len(body) if invocation is not body and not partial else None,
    )


def last_resort(
    body: bytes,
    *,
    condition: str,
    reason: str,
    request_id: str | None,
    function: str | None,
    now_ms: int,
    max_body_bytes: int,
) -> Record:
    """The record of a message whose own record could not be written, again and again.

    Every value in it is a plain string or integer, so it always encodes: the message
    travels whole (or its start, when too big), base64 under ``invocationBase64``.
    """
    if not (isinstance(request_id, str) and contract.ID_RE.fullmatch(request_id)):
        request_id = f"unrecorded_{uuid4().hex}"
    if not (isinstance(function, str) and contract.FUNCTION_RE.fullmatch(function)):
        function = "unknown"
    kept = body[:max_body_bytes]
    message = (
        f"no {condition} record could be written for this message, so this minimal one "
        f"stands in for it: {escape_surrogates(reason)[:LAST_RESORT_REASON_CHARS]}"
    )
    return Record(
        request_id=request_id,
        function=function,
        condition=condition,
        attempts=0,
        request_payload=None,
        status_code=500,
        function_error="",
        response=ErrorInfo("RecordNotWritten", message),
        invocation=None,
        timestamp=now_ms,
        invocation_base64=base64.b64encode(kept).decode("ascii"),
        invocation_bytes=len(body) if len(kept) < len(body) else None,
    )
