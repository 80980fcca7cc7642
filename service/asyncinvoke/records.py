"""Build the record of each way an invocation can end (SPEC section 5). Pure."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from asyncinvoke import contract
from asyncinvoke.contract import Envelope
from asyncinvoke.errors import InvalidMessage
from asyncinvoke.policy import Outcome


def _error(error_type: str, message: str) -> dict[str, Any]:
    return {"errorType": error_type, "errorMessage": message, "stackTrace": []}


def of_outcome(envelope: Envelope, outcome: Outcome, condition: str, now_ms: int) -> dict[str, Any]:
    """The record of an attempt that ended the invocation, successful or not."""
    return contract.record(
        request_id=envelope.id,
        function=envelope.fn,
        condition=condition,
        attempts=envelope.attempt + 1,
        request_payload=envelope.payload,
        status_code=outcome.status_code,
        function_error=outcome.function_error,
        response=outcome.result if outcome.ok else outcome.error,
        invocation=envelope.for_replay(),
        now_ms=now_ms,
    )


def expired(envelope: Envelope, age_ms: int, max_age_s: int, now_ms: int) -> dict[str, Any]:
    return contract.record(
        request_id=envelope.id,
        function=envelope.fn,
        condition=contract.EVENT_AGE_EXCEEDED,
        attempts=envelope.attempt,
        request_payload=envelope.payload,
        status_code=410,
        function_error="",
        response=_error(
            "EventAgeExceeded",
            f"invocation is {age_ms / 1000:.1f} s old, older than the function's "
            f"max_event_age of {max_age_s} s; it was not started",
        ),
        invocation=envelope.for_replay(),
        now_ms=now_ms,
    )


def unknown_function(envelope: Envelope, now_ms: int) -> dict[str, Any]:
    return contract.record(
        request_id=envelope.id,
        function=envelope.fn,
        condition=contract.UNKNOWN_FUNCTION,
        attempts=envelope.attempt,
        request_payload=envelope.payload,
        status_code=404,
        function_error="",
        response=_error(
            "UnknownFunction",
            f"no queue serves function {envelope.fn!r}: add it to the functions file and "
            "start a worker (or run 'asyncinvoke topology declare'), then replay this record",
        ),
        invocation=envelope.for_replay(),
        now_ms=now_ms,
    )


def delivery_limit(envelope: Envelope, deliveries: int | None, now_ms: int) -> dict[str, Any]:
    times = f"{deliveries} times" if deliveries else "too many times"
    return contract.record(
        request_id=envelope.id,
        function=envelope.fn,
        condition=contract.DELIVERY_LIMIT_EXCEEDED,
        attempts=envelope.attempt + (deliveries or 1),
        request_payload=envelope.payload,
        status_code=500,
        function_error=contract.UNHANDLED,
        response=_error(
            "DeliveryLimitExceeded",
            f"delivered {times} without being settled: the worker running it died "
            "(a crash, an out-of-memory kill, os._exit) or was stopped each time",
        ),
        invocation=envelope.for_replay(),
        now_ms=now_ms,
    )


def invalid(
    body: bytes,
    exc: InvalidMessage,
    *,
    function: str,
    message_id: str | None,
    now_ms: int,
) -> dict[str, Any]:
    """A message that breaks the contract. The original is kept whole, for replay."""
    partial = exc.partial or {}
    request_id = partial.get("id")
    if not (isinstance(request_id, str) and contract.ID_RE.fullmatch(request_id)):
        request_id = message_id or f"invalid_{uuid4().hex}"
    fn = partial.get("fn")
    if not (isinstance(fn, str) and contract.FUNCTION_RE.fullmatch(fn)):
        fn = function
    return contract.record(
        request_id=request_id,
        function=fn,
        condition=contract.INVALID_MESSAGE,
        attempts=0,
        request_payload=partial.get("payload"),
        status_code=400,
        function_error="",
        response=_error("InvalidMessage", exc.reason),
        invocation=partial if partial else body,
        now_ms=now_ms,
    )
