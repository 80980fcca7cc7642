"""The wire contract: envelopes in and out, every way to break them, JSON for people."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncinvoke import contract
from asyncinvoke.contract import Envelope
from asyncinvoke.errors import InvalidMessage

MAX_DELAY_S = 3600
LIMIT = 256 * 1024
RECEIVED_AT = 1_700_000_000_000

IDS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,127}", fullmatch=True)
FUNCTION_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,63}", fullmatch=True)
MSGPACK_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
PAYLOADS = st.recursive(
    st.none() | st.booleans() | MSGPACK_INTS | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
ENVELOPES = st.builds(
    Envelope,
    id=IDS,
    fn=FUNCTION_NAMES,
    payload=PAYLOADS,
    created_at=st.integers(min_value=0, max_value=RECEIVED_AT + contract.MAX_CLOCK_SKEW_MS),
    delay=st.integers(min_value=0, max_value=MAX_DELAY_S),
    attempt=st.integers(min_value=0, max_value=contract.MAX_ATTEMPT),
    task=st.none() | st.booleans(),
    meta=st.none() | st.dictionaries(st.text(), st.text(), min_size=1, max_size=4),
    due_at=st.none()
    | st.integers(min_value=0, max_value=RECEIVED_AT + contract.MAX_DUE_AHEAD_MS),
    reply_by=st.none() | st.integers(min_value=0, max_value=2**53),
    replay=st.booleans(),
)


def decode(body: bytes, *, max_payload_bytes: int = LIMIT) -> Envelope:
    return contract.decode(
        body,
        received_at_ms=RECEIVED_AT,
        max_payload_bytes=max_payload_bytes,
        max_delay_s=MAX_DELAY_S,
    )


def wire(**changes: Any) -> dict[str, Any]:
    """A valid producer envelope with ``changes`` applied (``...`` removes a key)."""
    data: dict[str, Any] = {"v": 1, "id": "inv_1", "fn": "resize", "payload": {"key": "a.png"}}
    data.update(changes)
    return {key: value for key, value in data.items() if value is not ...}


def reason_of(data: Any) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as info:
        decode(contract.pack(data))
    return info.value


# -- round trip ---------------------------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(envelope=ENVELOPES)
def test_decode_inverts_encode_for_every_valid_envelope(envelope: Envelope) -> None:
    assert decode(contract.encode(envelope), max_payload_bytes=10**8) == envelope


def test_a_minimal_producer_envelope_gets_its_defaults() -> None:
    envelope = decode(contract.pack(wire()))
    assert envelope == Envelope(
        id="inv_1", fn="resize", payload={"key": "a.png"}, created_at=RECEIVED_AT
    )
    assert envelope.delay == 0
    assert envelope.attempt == 0
    assert envelope.task is None
    assert envelope.meta is None


def test_a_replay_mark_must_be_a_boolean() -> None:
    assert decode(contract.pack(wire(replay=True))).replay is True
    assert "'replay' must be a boolean" in reason_of(wire(replay=1)).reason


def test_a_nil_payload_is_a_valid_event() -> None:
    assert decode(contract.pack(wire(payload=None))).payload is None


def test_every_optional_key_of_the_contract_is_read() -> None:
    data = wire(created_at=5, delay=3600, attempt=2, task=True, meta={"trace": "t-1"})
    envelope = decode(contract.pack(data))
    assert (envelope.created_at, envelope.delay, envelope.attempt) == (5, 3600, 2)
    assert envelope.task is True
    assert envelope.meta == {"trace": "t-1"}


def test_to_wire_leaves_out_keys_at_their_default() -> None:
    envelope = Envelope(id="a", fn="f", payload=None, created_at=7)
    assert envelope.to_wire() == {"v": 1, "id": "a", "fn": "f", "payload": None, "created_at": 7}


PRODUCER_KEYS = {"v", "id", "fn", "payload", "created_at", "delay", "attempt", "task", "meta"}


def test_for_replay_drops_the_attempt_count_and_internal_keys() -> None:
    envelope = Envelope(
        id="a",
        fn="f",
        payload=1,
        created_at=7,
        delay=3,
        attempt=2,
        task=False,
        meta={"trace": "t"},
        due_at=9,
        reply_by=11,
        replay=True,
    )
    assert envelope.for_replay() == {
        "v": 1,
        "id": "a",
        "fn": "f",
        "payload": 1,
        "created_at": 7,
        "delay": 3,
        "task": False,
        "meta": {"trace": "t"},
    }


@given(envelope=ENVELOPES)
def test_a_replayed_envelope_holds_only_keys_a_producer_may_send(envelope: Envelope) -> None:
    assert set(envelope.for_replay()) <= PRODUCER_KEYS - {"attempt"}


@given(
    created_at=st.integers(min_value=0, max_value=RECEIVED_AT + contract.MAX_CLOCK_SKEW_MS),
    delay=st.integers(min_value=0, max_value=MAX_DELAY_S),
)
def test_due_time_is_creation_plus_delay_in_ms(created_at: int, delay: int) -> None:
    envelope = Envelope(id="a", fn="f", payload=None, created_at=created_at, delay=delay)
    assert envelope.due_at_ms() == created_at + delay * 1000


def test_an_internal_due_time_overrides_creation_plus_delay() -> None:
    envelope = Envelope(id="a", fn="f", payload=None, created_at=1000, delay=5, due_at=1500)
    assert envelope.due_at_ms() == 1500


def test_the_envelope_travels_as_msgpack_with_string_keys() -> None:
    body = contract.encode(Envelope(id="a", fn="f", payload=b"\x00", created_at=1))
    raw = msgpack.unpackb(body, raw=False)
    assert raw["payload"] == b"\x00"
    assert all(isinstance(key, str) for key in raw)


# -- every way to break the contract -----------------------------------------------------


@given(body=st.binary(max_size=256))
def test_random_bytes_decode_or_raise_invalid_message_and_nothing_else(body: bytes) -> None:
    try:
        envelope = decode(body)
    except InvalidMessage as exc:
        assert exc.reason
    else:
        assert contract.ID_RE.match(envelope.id)


def test_a_body_that_is_not_msgpack_is_invalid() -> None:
    with pytest.raises(InvalidMessage, match="not msgpack"):
        decode(b"\xc1")


@pytest.mark.parametrize("value", [[1, 2], "text", 5, None, b"raw"])
def test_an_envelope_that_is_not_a_map_is_invalid(value: Any) -> None:
    exc = reason_of(value)
    assert "map" in exc.reason
    assert exc.partial is None


@pytest.mark.parametrize("key", ["v", "id", "fn", "payload"])
def test_a_missing_required_key_is_named(key: str) -> None:
    exc = reason_of(wire(**{key: ...}))
    assert key in exc.reason


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_an_unknown_version_is_named(version: Any) -> None:
    exc = reason_of(wire(v=version))
    assert "'v'" in exc.reason


@pytest.mark.parametrize("version", [True, 1.0])
def test_the_version_must_be_the_integer_one(version: Any) -> None:
    exc = reason_of(wire(v=version))
    assert "'v'" in exc.reason


WRONG_TYPES = st.one_of(st.text(), st.floats(), st.binary(), st.lists(MSGPACK_INTS, max_size=2))


@pytest.mark.parametrize("key", ["created_at", "delay", "attempt", "due_at", "reply_by"])
@given(value=WRONG_TYPES | st.booleans())
def test_an_integer_key_of_another_type_is_named(key: str, value: Any) -> None:
    exc = reason_of(wire(**{key: value}))
    assert f"'{key}'" in exc.reason


@pytest.mark.parametrize("key", ["created_at", "delay", "attempt"])
def test_a_nil_integer_key_is_named(key: str) -> None:
    assert f"'{key}'" in reason_of(wire(**{key: None})).reason


@given(attempt=st.integers(min_value=contract.MAX_ATTEMPT + 1, max_value=2**64 - 1))
def test_an_attempt_beyond_the_retry_range_is_refused(attempt: int) -> None:
    assert "'attempt'" in reason_of(wire(attempt=attempt)).reason


@given(attempt=st.integers(min_value=-(2**63), max_value=-1))
def test_a_negative_attempt_is_refused(attempt: int) -> None:
    assert "'attempt'" in reason_of(wire(attempt=attempt)).reason


def test_the_attempt_bound_leaves_room_above_every_retry_the_service_writes() -> None:
    from asyncinvoke.functions import MAX_RETRIES_LIMIT

    assert decode(contract.pack(wire(attempt=MAX_RETRIES_LIMIT))).attempt == MAX_RETRIES_LIMIT
    assert contract.MAX_ATTEMPT > MAX_RETRIES_LIMIT


@given(ahead_ms=st.integers(min_value=contract.MAX_DUE_AHEAD_MS + 1, max_value=2**63))
def test_a_due_time_beyond_the_ladders_reach_is_refused(ahead_ms: int) -> None:
    exc = reason_of(wire(due_at=RECEIVED_AT + ahead_ms))
    assert "'due_at'" in exc.reason
    assert "'delay'" in exc.reason  # says what a producer sends instead


@pytest.mark.parametrize("due_at", [2**62, 2**64 - 1, -1, -(2**63)])
def test_an_absurd_due_time_is_refused(due_at: int) -> None:
    assert "'due_at'" in reason_of(wire(due_at=due_at)).reason


def test_a_due_time_a_day_ahead_is_taken() -> None:
    # The longest the service itself writes: a backoff or a task lease of a day.
    due_at = RECEIVED_AT + 86_400_000 + 60_000
    assert decode(contract.pack(wire(due_at=due_at))).due_at == due_at


@given(value=WRONG_TYPES | MSGPACK_INTS)
def test_a_task_flag_that_is_not_a_boolean_is_named(value: Any) -> None:
    assert "'task'" in reason_of(wire(task=value)).reason


@pytest.mark.parametrize(
    "meta", [["a"], "trace=1", 5, {"trace": 1}, {"trace": None}, {"k": b"v"}, {"k": ["v"]}]
)
def test_meta_that_is_not_a_map_of_strings_is_named(meta: Any) -> None:
    assert "'meta'" in reason_of(wire(meta=meta)).reason


@pytest.mark.parametrize("key", ["id", "fn"])
@given(value=MSGPACK_INTS | st.binary() | st.none() | st.lists(st.text(), max_size=2))
def test_an_id_or_function_that_is_not_a_string_is_named(key: str, value: Any) -> None:
    assert f"'{key}'" in reason_of(wire(**{key: value})).reason


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "9starts_with_a_digit",
        "-dash",
        "has space",
        "dotted.id",
        "é",
        "a" * 129,
        pytest.param(
            "trailing_newline\n",
        ),
    ],
)
def test_an_id_off_the_pattern_is_named(bad_id: str) -> None:
    exc = reason_of(wire(id=bad_id))
    assert "'id'" in exc.reason


def test_the_longest_id_is_128_characters() -> None:
    assert decode(contract.pack(wire(id="a" * 128))).id == "a" * 128


@pytest.mark.parametrize(
    "bad_fn",
    [
        "",
        "1resize",
        "re size",
        "re.size",
        "a" * 65,
        pytest.param(
            "resize\n",
        ),
    ],
)
def test_a_function_name_off_the_pattern_is_named(bad_fn: str) -> None:
    assert "'fn'" in reason_of(wire(fn=bad_fn)).reason


@given(
    delay=st.integers(min_value=-(2**63), max_value=-1)
    | st.integers(min_value=MAX_DELAY_S + 1, max_value=2**64 - 1)
)
def test_delay_out_of_range_names_the_range(delay: int) -> None:
    reason = reason_of(wire(delay=delay)).reason
    assert "'delay'" in reason
    assert f"between 0 and {MAX_DELAY_S}" in reason
    assert str(delay) in reason


def test_the_delay_limit_is_the_one_given_to_decode() -> None:
    body = contract.pack(wire(delay=61))
    with pytest.raises(InvalidMessage, match="between 0 and 60"):
        contract.decode(body, received_at_ms=0, max_payload_bytes=LIMIT, max_delay_s=60)


@given(attempt=st.integers(min_value=-(2**63), max_value=-1))
def test_a_negative_attempt_count_is_named(attempt: int) -> None:
    assert "'attempt'" in reason_of(wire(attempt=attempt)).reason


# Every key an envelope can carry on the wire: the contract's, and the service's own.
WIRE_KEYS = {"v"} | {field.name for field in dataclasses.fields(Envelope)}


@given(
    key=st.text(min_size=1, max_size=20).filter(lambda k: k not in WIRE_KEYS and k.isprintable())
)
def test_an_unknown_key_is_named(key: str) -> None:
    exc = reason_of(wire(**{key: 1}))
    assert "unknown" in exc.reason
    assert key in exc.reason


def test_every_unknown_key_is_named_at_once() -> None:
    reason = reason_of(wire(colour="red", size=3)).reason
    assert "colour" in reason
    assert "size" in reason


def test_an_oversize_body_names_its_size_and_the_limit() -> None:
    body = contract.pack(wire(payload=b"x" * 2000))
    with pytest.raises(InvalidMessage) as info:
        decode(body, max_payload_bytes=1000)
    assert str(len(body)) in info.value.reason
    assert "1000" in info.value.reason


def test_a_body_exactly_at_the_limit_is_accepted() -> None:
    body = contract.pack(wire())
    assert decode(body, max_payload_bytes=len(body)).id == "inv_1"


def test_a_broken_envelope_keeps_what_was_decoded() -> None:
    data = wire(delay=99999)
    exc = reason_of(data)
    assert exc.partial == data


# -- records and JSON ---------------------------------------------------------------------


def test_to_json_base64_encodes_bytes() -> None:
    assert orjson.loads(contract.to_json({"body": b"\x00\xff"})) == {"body": "AP8="}


@given(data=st.binary())
def test_to_json_bytes_read_back_through_base64(data: bytes) -> None:
    encoded = orjson.loads(contract.to_json([data, {"nested": bytearray(data)}]))
    assert base64.b64decode(encoded[0]) == data
    assert base64.b64decode(encoded[1]["nested"]) == data


def test_to_json_writes_integer_keys_as_strings() -> None:
    assert orjson.loads(contract.to_json({1: "one"})) == {"1": "one"}


def test_to_json_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(TypeError):
        contract.to_json({"x": object()})


def test_error_payload_names_the_type_message_and_stack() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        payload = contract.ErrorInfo.of(exc).to_wire()
    assert payload["errorType"] == "KeyError"
    assert payload["errorMessage"] == "'missing'"
    assert any("raise KeyError" in line for line in payload["stackTrace"])


def test_a_record_has_the_shape_of_a_destination_record() -> None:
    record = contract.Record(
        request_id="inv_1",
        function="resize",
        condition=contract.SUCCESS,
        attempts=1,
        request_payload={"k": 1},
        status_code=200,
        function_error="",
        response="ok",
        invocation={"v": 1},
        timestamp=42,
    ).to_wire()
    assert record == {
        "v": 1,
        "timestamp": 42,
        "requestContext": {
            "requestId": "inv_1",
            "functionName": "resize",
            "condition": "Success",
            "approximateInvokeCount": 1,
        },
        "requestPayload": {"k": 1},
        "responseContext": {"statusCode": 200, "functionError": ""},
        "responsePayload": "ok",
        "invocation": {"v": 1},
    }


def test_the_conditions_are_those_of_the_spec() -> None:
    assert set(contract.CONDITIONS) == {
        "Success",
        "RetriesExhausted",
        "NonRetryableError",
        "EventAgeExceeded",
        "InvalidMessage",
        "UnknownFunction",
        "DeliveryLimitExceeded",
        "ThrottleExhausted",  # SPEC section 12, throttles
    }
