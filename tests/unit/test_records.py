"""Each way an invocation ends builds a record of the shape of SPEC section 5."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncinvoke import contract, records
from asyncinvoke.contract import Envelope, ErrorInfo, Outcome
from asyncinvoke.errors import InvalidMessage

NOW = 1_700_000_000_000
TOP_KEYS = {
    "v",
    "timestamp",
    "requestContext",
    "requestPayload",
    "responseContext",
    "responsePayload",
    "invocation",
}
REQUEST_CONTEXT_KEYS = {"requestId", "functionName", "condition", "approximateInvokeCount"}
FUNCTION_ERRORS = {"", contract.HANDLED, contract.UNHANDLED, contract.TIMEOUT}
ERROR_KEYS = {"errorType", "errorMessage", "stackTrace"}


def envelope(**changes: Any) -> Envelope:
    fields: dict[str, Any] = {
        "id": "inv_1",
        "fn": "resize",
        "payload": {"key": b"a.png"},
        "created_at": NOW - 5000,
        "delay": 2,
        "attempt": 2,
        "task": True,
        "meta": {"trace": "t-1"},
        "due_at": NOW - 100,
        "reply_by": NOW + 30_000,
    }
    fields.update(changes)
    return Envelope(**fields)


def assert_record_shape(record: dict[str, Any], condition: str) -> None:
    """The keys and types every record has, whatever its condition."""
    assert set(record) == TOP_KEYS
    assert record["v"] == 1
    assert record["timestamp"] == NOW
    context = record["requestContext"]
    assert set(context) == REQUEST_CONTEXT_KEYS
    assert context["condition"] == condition
    assert condition in contract.CONDITIONS
    assert isinstance(context["approximateInvokeCount"], int)
    assert set(record["responseContext"]) == {"statusCode", "functionError"}
    assert isinstance(record["responseContext"]["statusCode"], int)
    assert record["responseContext"]["functionError"] in FUNCTION_ERRORS
    if condition != contract.SUCCESS:
        error = record["responsePayload"]
        assert set(error) == ERROR_KEYS
        assert isinstance(error["stackTrace"], list)
    assert contract.unpack(contract.pack(record)) == record
    orjson.loads(contract.to_json(record))


def assert_replayable(record: dict[str, Any], original: Envelope) -> None:
    """The record carries the envelope as its producer sent it."""
    invocation = record["invocation"]
    assert invocation == original.for_replay()
    assert not {"attempt", "due_at", "reply_by"} & set(invocation)
    again = contract.from_wire(invocation, received_at_ms=NOW, max_delay_s=3600)
    assert (again.id, again.fn, again.payload, again.attempt) == (
        original.id,
        original.fn,
        original.payload,
        0,
    )


# -- attempts that end the invocation -----------------------------------------------------


def test_a_success_record_carries_the_result() -> None:
    original = envelope()
    outcome = Outcome(ok=True, result={"size": 10}, status_code=200)
    record = records.of_outcome(original, outcome, contract.SUCCESS, NOW).to_wire()
    assert_record_shape(record, contract.SUCCESS)
    assert record["requestContext"]["requestId"] == "inv_1"
    assert record["requestContext"]["functionName"] == "resize"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["requestPayload"] == {"key": b"a.png"}
    assert record["responseContext"] == {"statusCode": 200, "functionError": ""}
    assert record["responsePayload"] == {"size": 10}
    assert_replayable(record, original)


@pytest.mark.parametrize(
    ("condition", "function_error"),
    [
        (contract.RETRIES_EXHAUSTED, contract.UNHANDLED),
        (contract.RETRIES_EXHAUSTED, contract.TIMEOUT),
        (contract.NON_RETRYABLE, contract.HANDLED),
        (contract.EVENT_AGE_EXCEEDED, contract.UNHANDLED),
    ],
)
def test_a_failure_record_carries_the_error(condition: str, function_error: str) -> None:
    original = envelope()
    error = {"errorType": "ValueError", "errorMessage": "bad", "stackTrace": ["line 1\n"]}
    outcome = Outcome(
        ok=False,
        result="ignored",
        error=ErrorInfo("ValueError", "bad", ("line 1\n",)),
        function_error=function_error,
        status_code=500,
    )
    record = records.of_outcome(original, outcome, condition, NOW).to_wire()
    assert_record_shape(record, condition)
    assert record["responsePayload"] == error
    assert record["responseContext"] == {"statusCode": 500, "functionError": function_error}
    assert_replayable(record, original)


@given(attempt=st.integers(min_value=0, max_value=8))
def test_an_attempt_record_counts_the_attempt_that_just_ran(attempt: int) -> None:
    record = records.of_outcome(
        envelope(attempt=attempt), Outcome(ok=True), contract.SUCCESS, NOW
    ).to_wire()
    assert record["requestContext"]["approximateInvokeCount"] == attempt + 1


# -- invocations that never ran ------------------------------------------------------------


@given(attempt=st.integers(min_value=0, max_value=8))
def test_an_expired_record_counts_only_attempts_already_made(attempt: int) -> None:
    original = envelope(attempt=attempt)
    record = records.expired(original, age_ms=90_500, max_age_s=60, now_ms=NOW).to_wire()
    assert_record_shape(record, contract.EVENT_AGE_EXCEEDED)
    assert record["requestContext"]["approximateInvokeCount"] == attempt
    assert record["responseContext"] == {"statusCode": 410, "functionError": ""}
    message = record["responsePayload"]["errorMessage"]
    assert "90.5 s" in message
    assert "60 s" in message
    assert record["responsePayload"]["errorType"] == "EventAgeExceeded"
    assert_replayable(record, original)


def test_an_unknown_function_record_names_the_function_and_the_fix() -> None:
    original = envelope(fn="resise", attempt=0)
    record = records.unknown_function(original, NOW).to_wire()
    assert_record_shape(record, contract.UNKNOWN_FUNCTION)
    assert record["requestContext"]["functionName"] == "resise"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert record["responseContext"]["statusCode"] == 404
    message = record["responsePayload"]["errorMessage"]
    assert "'resise'" in message
    assert "functions file" in message
    assert_replayable(record, original)


@pytest.mark.parametrize(("deliveries", "said"), [(6, "6 times"), (None, "too many times")])
def test_a_delivery_limit_record_says_how_often_it_was_delivered(
    deliveries: int | None, said: str
) -> None:
    original = envelope(attempt=1)
    record = records.delivery_limit(original, deliveries, NOW).to_wire()
    assert_record_shape(record, contract.DELIVERY_LIMIT_EXCEEDED)
    # The earlier attempt, then each delivery of this one (one when the count is unknown).
    assert record["requestContext"]["approximateInvokeCount"] == 1 + (deliveries or 1)
    assert record["responseContext"] == {
        "statusCode": 500,
        "functionError": contract.UNHANDLED,
    }
    assert said in record["responsePayload"]["errorMessage"]
    assert_replayable(record, original)


# -- messages that break the contract ------------------------------------------------------


def invalid_from(body: bytes, **kwargs: Any) -> tuple[dict[str, Any], InvalidMessage]:
    with pytest.raises(InvalidMessage) as info:
        contract.decode(body, received_at_ms=NOW, max_payload_bytes=1024, max_delay_s=3600)
    arguments: dict[str, Any] = {"function": "resize", "message_id": None, "now_ms": NOW}
    arguments.update(kwargs)
    return records.invalid(body, info.value, **arguments).to_wire(), info.value


@pytest.mark.parametrize("body", [b"\xc1 not msgpack", contract.pack([1, 2]), b"x" * 2000])
def test_an_undecodable_message_keeps_the_raw_body(body: bytes) -> None:
    record, exc = invalid_from(body, message_id="msg-7")
    assert_record_shape(record, contract.INVALID_MESSAGE)
    assert record["invocation"] == body
    assert record["requestPayload"] is None
    assert record["requestContext"]["requestId"] == "msg-7"
    assert record["requestContext"]["functionName"] == "resize"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert record["responseContext"] == {"statusCode": 400, "functionError": ""}
    assert record["responsePayload"]["errorMessage"] == exc.reason


def test_an_invalid_message_without_a_message_id_gets_a_valid_generated_id() -> None:
    first, _ = invalid_from(b"\xc1")
    second, _ = invalid_from(b"\xc1")
    first_id = first["requestContext"]["requestId"]
    assert contract.ID_RE.fullmatch(first_id)
    assert first_id.startswith("invalid_")
    assert first_id != second["requestContext"]["requestId"]


def test_an_envelope_that_breaks_one_rule_keeps_its_decoded_map() -> None:
    data = {"v": 1, "id": "inv_9", "fn": "notify", "payload": [1, 2], "delay": 99999}
    record, _ = invalid_from(contract.pack(data), function="resize", message_id="msg-7")
    assert_record_shape(record, contract.INVALID_MESSAGE)
    assert record["invocation"] == data
    assert record["requestPayload"] == [1, 2]
    assert record["requestContext"]["requestId"] == "inv_9"
    assert record["requestContext"]["functionName"] == "notify"
    assert "'delay'" in record["responsePayload"]["errorMessage"]


def test_an_invalid_id_or_function_in_the_map_is_not_trusted() -> None:
    data = {"v": 1, "id": "bad id", "fn": 5, "payload": None}
    record, _ = invalid_from(contract.pack(data), function="resize", message_id="msg-7")
    assert record["requestContext"]["requestId"] == "msg-7"
    assert record["requestContext"]["functionName"] == "resize"
    assert record["invocation"] == data


def test_a_record_for_an_http_destination_base64_encodes_bytes() -> None:
    record = records.of_outcome(
        envelope(payload=b"\x00\x01"), Outcome(ok=True, result=b"\xff"), contract.SUCCESS, NOW
    ).to_wire()
    as_json = orjson.loads(contract.to_json(record))
    assert as_json["requestPayload"] == "AAE="
    assert as_json["responsePayload"] == "/w=="
    assert as_json["invocation"]["payload"] == "AAE="


# -- records that cannot carry everything -------------------------------------------------


def test_a_payload_too_large_record_keeps_only_the_start_of_the_body_and_its_size() -> None:
    body = contract.pack({"v": 1, "id": "big", "fn": "resize", "payload": "x" * 100_000})
    with pytest.raises(InvalidMessage) as info:
        contract.decode(body, received_at_ms=NOW, max_payload_bytes=1024, max_delay_s=3600)
    record = records.invalid(
        body, info.value, function="resize", message_id="big", now_ms=NOW
    ).to_wire()
    assert record["invocation"] == body[: records.OVERSIZE_KEPT_BYTES]
    assert record[contract.INVOCATION_BYTES] == len(body)
    assert f"first {records.OVERSIZE_KEPT_BYTES} bytes" in record["responsePayload"]["errorMessage"]
    assert len(contract.pack(record)) < records.OVERSIZE_KEPT_BYTES + 1024


def test_a_payload_too_large_record_under_the_kept_size_keeps_the_body_whole() -> None:
    body = b"x" * 2000
    record, _ = invalid_from(body)
    assert record["invocation"] == body
    assert contract.INVOCATION_BYTES not in record


@pytest.mark.parametrize(
    "reason", ["plain", "lone surrogate \udc80 in it", "x" * 10_000, "[/markup] and\nlines"]
)
def test_a_last_resort_record_always_encodes_and_carries_the_message(reason: str) -> None:
    body = contract.pack({"v": 1, "id": "inv_1", "fn": "resize", "payload": {b"k": 1}})
    record = records.last_resort(
        body,
        condition=contract.DELIVERY_LIMIT_EXCEEDED,
        reason=reason,
        request_id="inv_1",
        function="resize",
        now_ms=NOW,
        max_body_bytes=1 << 20,
    ).to_wire()
    orjson.loads(contract.to_json(record))
    assert contract.unpack(contract.pack(record)) == record
    assert record["requestContext"]["requestId"] == "inv_1"
    assert record["requestContext"]["condition"] == contract.DELIVERY_LIMIT_EXCEEDED
    assert record["responsePayload"]["errorType"] == "RecordNotWritten"
    assert len(record["responsePayload"]["errorMessage"]) < records.LAST_RESORT_REASON_CHARS + 200
    assert base64.b64decode(record[contract.INVOCATION_BASE64]) == body
    assert contract.INVOCATION_BYTES not in record


def test_a_last_resort_record_distrusts_ids_and_cuts_a_huge_body() -> None:
    body = b"\xc1" * 5000
    record = records.last_resort(
        body,
        condition=contract.UNKNOWN_FUNCTION,
        reason="boom",
        request_id="bad id!",
        function="a.b",
        now_ms=NOW,
        max_body_bytes=100,
    ).to_wire()
    assert record["requestContext"]["requestId"].startswith("unrecorded_")
    assert contract.ID_RE.fullmatch(record["requestContext"]["requestId"])
    assert record["requestContext"]["functionName"] == "unknown"
    assert base64.b64decode(record[contract.INVOCATION_BASE64]) == body[:100]
    assert record[contract.INVOCATION_BYTES] == 5000
