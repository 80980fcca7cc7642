"""Typed records, errors and sync replies: one to_wire and one from_wire each, which
give back what they were given, in the map layout of SPEC section 5."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncinvoke import contract, records
from asyncinvoke.contract import DeliveryError, Envelope, ErrorInfo, Outcome, Record, Reply
from asyncinvoke.errors import InvalidMessage

NOW = 1_700_000_000_000
MSGPACK_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
TEXT = st.text(max_size=12)
# Values a record carries from users, as msgpack gives them back (no NaN: it is not
# equal to itself; keys shorter than "errorType", so no result passes for an error).
VALUES = st.recursive(
    st.none() | st.booleans() | MSGPACK_INTS | st.floats(allow_nan=False) | TEXT | st.binary(),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
# Nested values are slow to draw on a loaded machine: fewer examples, no deadline.
LOADED_MACHINE = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
ERRORS = st.builds(ErrorInfo, TEXT, TEXT, st.lists(TEXT, max_size=3).map(tuple))
DELIVERY_ERRORS = st.builds(DeliveryError, TEXT, TEXT)


@st.composite
def record_values(draw: st.DrawFn) -> Record:
    condition = draw(st.sampled_from(contract.CONDITIONS))
    # A failure carries an error, or what stands for it in a degraded record.
    failure = ERRORS | st.none() | TEXT
    response = draw(VALUES if condition == contract.SUCCESS else failure)
    return Record(
        request_id=draw(TEXT),
        function=draw(TEXT),
        condition=condition,
        attempts=draw(st.none() | MSGPACK_INTS),
        request_payload=draw(VALUES),
        status_code=draw(st.none() | MSGPACK_INTS),
        function_error=draw(st.sampled_from(["", contract.HANDLED, contract.UNHANDLED])),
        response=response,
        invocation=draw(VALUES),
        timestamp=draw(st.none() | MSGPACK_INTS),
        invocation_base64=draw(st.none() | TEXT),
        invocation_bytes=draw(st.none() | MSGPACK_INTS),
        delivery_error=draw(st.none() | DELIVERY_ERRORS),
        encoding_error=draw(st.none() | TEXT),
    )


def envelope(**changes: Any) -> Envelope:
    fields: dict[str, Any] = {
        "id": "inv_1",
        "fn": "resize",
        "payload": {"key": b"a.png"},
        "created_at": NOW - 5000,
        "attempt": 2,
        "meta": {"trace": "t-1"},
        "due_at": NOW - 100,
    }
    fields.update(changes)
    return Envelope(**fields)


def invalid_record(body: bytes) -> Record:
    with pytest.raises(InvalidMessage) as info:
        contract.decode(body, received_at_ms=NOW, max_payload_bytes=1024, max_delay_s=3600)
    return records.invalid(body, info.value, function="resize", message_id="msg-1", now_ms=NOW)


FAILED = Outcome(
    ok=False,
    error=ErrorInfo("ValueError", "bad", ("line 1\n",)),
    function_error=contract.UNHANDLED,
    status_code=500,
)
BUILT = {
    "success": records.of_outcome(envelope(), Outcome(ok=True, result=[1]), contract.SUCCESS, NOW),
    "failure": records.of_outcome(envelope(), FAILED, contract.RETRIES_EXHAUSTED, NOW),
    "expired": records.expired(envelope(), 90_500, 60, NOW),
    "unknown": records.unknown_function(envelope(), NOW),
    "poison": records.delivery_limit(envelope(), 6, NOW),
    "undecodable": invalid_record(b"\xc1 not msgpack"),
    "oversize": invalid_record(b"x" * 40_000),
    "last resort": records.last_resort(
        b"\xc1" * 500,
        condition=contract.UNKNOWN_FUNCTION,
        reason="boom",
        request_id="inv_1",
        function="resize",
        now_ms=NOW,
        max_body_bytes=100,
    ),
}


# -- records -------------------------------------------------------------------------------


@pytest.mark.parametrize("record", BUILT.values(), ids=BUILT.keys())
def test_every_record_the_service_builds_reads_back_as_itself(record: Record) -> None:
    assert Record.from_wire(record.to_wire()) == record
    assert Record.from_wire(contract.unpack(contract.pack(record.to_wire()))) == record


@LOADED_MACHINE
@given(record=record_values())
def test_any_record_survives_to_wire_msgpack_and_from_wire(record: Record) -> None:
    sent = contract.pack(record.to_wire())
    assert Record.from_wire(contract.unpack(sent)) == record


@LOADED_MACHINE
@given(record=record_values())
def test_a_record_read_and_written_again_is_the_same_bytes(record: Record) -> None:
    wire = contract.unpack(contract.pack(record.to_wire()))
    assert contract.pack(Record.from_wire(wire).to_wire()) == contract.pack(wire)


def test_a_record_keeps_the_key_order_of_spec_section_5_and_its_extras_after() -> None:
    record = replace(
        BUILT["oversize"], delivery_error=DeliveryError("queue:results", "NOT_FOUND")
    )
    expected = {
        "v": 1,
        "timestamp": NOW,
        "requestContext": {
            "requestId": "msg-1",
            "functionName": "resize",
            "condition": contract.INVALID_MESSAGE,
            "approximateInvokeCount": 0,
        },
        "requestPayload": None,
        "responseContext": {"statusCode": 400, "functionError": ""},
        "responsePayload": {
            "errorType": "InvalidMessage",
            "errorMessage": record.response.message,
            "stackTrace": [],
        },
        "invocation": b"x" * records.OVERSIZE_KEPT_BYTES,
        "invocationBytes": 40_000,
        "deliveryError": {"destination": "queue:results", "error": "NOT_FOUND"},
    }
    # msgpack keeps the order of a map's keys: equal bytes mean equal order too.
    assert contract.pack(record.to_wire()) == contract.pack(expected)
    last_resort = BUILT["last resort"].to_wire()
    assert list(last_resort)[-2:] == [contract.INVOCATION_BASE64, contract.INVOCATION_BYTES]


def test_a_failure_record_reads_its_error_typed_and_a_success_its_result_as_it_is() -> None:
    failure = Record.from_wire(BUILT["failure"].to_wire())
    assert failure.error == ErrorInfo("ValueError", "bad", ("line 1\n",))
    result = {"errorType": "looks like one", "errorMessage": "but is a result"}
    success = replace(BUILT["success"], response=result)
    assert Record.from_wire(success.to_wire()).response == result
    assert Record.from_wire(success.to_wire()).error is None


def test_a_degraded_failure_record_keeps_its_rendering() -> None:
    degraded = replace(BUILT["failure"], response="{'errorType': ...}").to_wire()
    assert Record.from_wire(degraded).response == "{'errorType': ...}"


@LOADED_MACHINE
@given(
    data=st.dictionaries(
        st.sampled_from(
            [
                "v",
                "timestamp",
                "requestContext",
                "requestPayload",
                "responseContext",
                "responsePayload",
                "invocation",
                contract.INVOCATION_BASE64,
                contract.INVOCATION_BYTES,
                contract.ENCODING_ERROR,
                "deliveryError",
            ]
        ),
        VALUES
        | st.dictionaries(
            st.sampled_from(
                ["requestId", "functionName", "condition", "approximateInvokeCount",
                 "statusCode", "functionError", "errorType", "errorMessage", "stackTrace",
                 "destination", "error"]
            ),
            VALUES,
        ),
    )
)
def test_reading_whatever_was_published_to_the_failure_queue_never_raises(
    data: dict[str, Any],
) -> None:
    read = Record.from_wire(data)
    assert isinstance(read.request_id, str) and isinstance(read.function, str)
    assert read.attempts is None or type(read.attempts) is int
    contract.pack(read.to_wire())


def test_a_foreign_record_reads_odd_parts_as_absent_and_bytes_names_as_text() -> None:
    read = Record.from_wire(
        {
            "timestamp": "yesterday",
            "requestContext": {"requestId": b"inv_1", "functionName": 7},
            "responseContext": "not a map",
            "responsePayload": {"errorMessage": "disk full", "stackTrace": "not a list"},
        }
    )
    assert (read.request_id, read.function, read.condition) == ("inv_1", "", "")
    assert (read.timestamp, read.attempts, read.status_code) == (None, None, None)
    assert read.error == ErrorInfo("", "disk full")


def test_is_record_tells_a_record_from_other_messages() -> None:
    assert contract.is_record(BUILT["success"].to_wire())
    assert not contract.is_record({"v": 1})
    assert not contract.is_record(b"requestContext")


# -- errors --------------------------------------------------------------------------------


def test_an_error_of_an_exception_names_its_type_message_and_stack() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        error = ErrorInfo.of(exc)
    assert (error.error_type, error.message) == ("KeyError", "'missing'")
    assert any("raise KeyError" in line for line in error.stack_trace)
    assert ErrorInfo.from_wire(error.to_wire()) == error
    assert error.summary() == "KeyError: 'missing'"


@given(error=ERRORS)
def test_any_error_survives_to_wire_msgpack_and_from_wire(error: ErrorInfo) -> None:
    assert ErrorInfo.from_wire(contract.unpack(contract.pack(error.to_wire()))) == error


@pytest.mark.parametrize("value", [None, "text", [1], {}, {"stackTrace": []}, {"size": 1}])
def test_a_value_that_is_no_error_map_reads_as_no_error(value: Any) -> None:
    assert ErrorInfo.from_wire(value) is None


def test_a_result_that_cannot_travel_has_one_error_type() -> None:
    error = ErrorInfo.result_not_serializable("returned a set")
    assert error.to_wire() == {
        "errorType": "ResultNotSerializable",
        "errorMessage": "returned a set",
        "stackTrace": [],
    }


# -- sync replies and outcomes -------------------------------------------------------------


@LOADED_MACHINE
@given(ok=st.booleans(), result=VALUES, error=st.none() | ERRORS, status=MSGPACK_INTS)
def test_a_reply_carries_a_result_or_an_error_never_both(
    ok: bool, result: Any, error: ErrorInfo | None, status: int
) -> None:
    outcome = Outcome(ok=ok, result=result, error=error, function_error="", status_code=status)
    wire = contract.unpack(contract.pack(Reply.of(outcome).to_wire()))
    assert list(wire) == ["v", "ok", "result", "error", "functionError", "statusCode"]
    read = Reply.from_wire(wire)
    assert read.ok is ok
    assert read.result == (result if ok else None)
    assert read.error == (None if ok else error)
    assert read.status_code == (status or 500)  # 0 is no status a worker sends


def test_a_reply_missing_its_parts_reads_as_a_failure() -> None:
    assert Reply.from_wire({}) == Reply(ok=False, status_code=500)
