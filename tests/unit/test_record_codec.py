"""Records always encode: whole when they can, degraded (and saying so) when not."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncinvoke import contract, record_codec, records
from asyncinvoke.contract import Envelope
from asyncinvoke.dlq.operations import export_line
from asyncinvoke.dlq.records import NotReplayable, replay_envelope
from asyncinvoke.errors import InvalidMessage
from asyncinvoke.policy import Outcome
from asyncinvoke.tasks import views
from tests.support.hostile import PAYLOADS, nested

NOW = 1_700_000_000_000


def success_record(payload: Any, result: Any = "done") -> dict[str, Any]:
    envelope = Envelope(id="inv_1", fn="resize", payload=payload, created_at=NOW)
    return records.of_outcome(envelope, Outcome(ok=True, result=result), contract.SUCCESS, NOW)


def carried(record: dict[str, Any]) -> Any:
    return contract.unpack(base64.b64decode(record[contract.INVOCATION_BASE64]))


# Every value msgpack can decode into, map keys of every hashable kind included.
MSGPACK_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
KEYS = st.text(max_size=4) | st.binary(max_size=4) | MSGPACK_INTS | st.booleans() | st.none()
DECODED = st.recursive(
    st.none()
    | st.booleans()
    | MSGPACK_INTS
    | st.floats()
    | st.text()
    | st.binary(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=10,
)


def test_a_record_that_encodes_is_sent_unchanged() -> None:
    record = success_record({"key": b"a.png"})
    assert record_codec.pack_record(record) == contract.pack(record)
    assert record_codec.record_json(record) == contract.to_json(record)


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_a_record_json_cannot_carry_is_degraded_and_keeps_the_invocation(payload: Any) -> None:
    record = success_record(payload)
    sent = orjson.loads(record_codec.record_json(record))
    assert sent["requestContext"] == record["requestContext"]
    assert sent["responsePayload"] == "done"  # the parts that encode stay as they are
    assert sent["invocation"] is None
    assert carried(sent) == record["invocation"]
    assert isinstance(sent["requestPayload"], str)
    assert "requestPayload" in sent[contract.ENCODING_ERROR]
    assert "invocation" in sent[contract.ENCODING_ERROR]


def test_the_rendering_of_a_degraded_part_is_readable() -> None:
    sent = orjson.loads(record_codec.record_json(success_record({b"key": "value"})))
    assert sent["requestPayload"] == "{b'key': 'value'}"


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(payload=DECODED, result=DECODED)
def test_every_decodable_value_makes_a_record_that_encodes(payload: Any, result: Any) -> None:
    record = success_record(payload, result)
    sent = orjson.loads(record_codec.record_json(record))
    if sent["invocation"] is None:
        # Compared as bytes: a NaN in the payload is carried, and NaN != NaN.
        assert base64.b64decode(sent[contract.INVOCATION_BASE64]) == contract.pack(
            record["invocation"]
        )
    assert contract.unpack(record_codec.pack_record(record)) is not None


def test_a_record_over_the_limit_gives_up_the_result_first() -> None:
    record = success_record({"key": "a"}, result="r" * 100_000)
    sent = contract.unpack(record_codec.pack_record(record, max_bytes=20_000))
    assert len(record_codec.pack_record(record, max_bytes=20_000)) <= 20_000
    assert sent["invocation"] == record["invocation"]  # still replayable as it was
    assert sent["requestPayload"] == {"key": "a"}
    assert sent["responsePayload"].startswith("'rrrr")
    assert "over the limit of 20000" in sent[contract.ENCODING_ERROR]


def test_an_invocation_over_the_limit_is_cut_and_says_so() -> None:
    record = success_record("p" * 100_000)
    body = record_codec.pack_record(record, max_bytes=20_000)
    sent = contract.unpack(body)
    assert len(body) <= 20_000
    whole = contract.pack(record["invocation"])
    assert sent[contract.INVOCATION_BYTES] == len(whole)
    assert whole.startswith(base64.b64decode(sent[contract.INVOCATION_BASE64]))
    with pytest.raises(NotReplayable, match="only the start"):
        replay_envelope(sent, now_ms=NOW)


def test_a_degraded_record_replays_its_original_invocation() -> None:
    payload = {b"k": [1, 2], "text": "v"}
    sent = orjson.loads(record_codec.record_json(success_record(payload)))
    again = replay_envelope(sent, now_ms=NOW + 5)
    assert (again.id, again.fn, again.payload, again.created_at) == (
        "inv_1",
        "resize",
        payload,
        NOW + 5,
    )


def test_a_last_resort_record_replays_the_message_it_carries() -> None:
    wire = {"v": 1, "id": "inv_2", "fn": "resize", "payload": {b"k": 1}, "attempt": 3}
    record = records.last_resort(
        contract.pack(wire),
        condition=contract.DELIVERY_LIMIT_EXCEEDED,
        reason="boom",
        request_id="inv_2",
        function="resize",
        now_ms=NOW,
        max_body_bytes=1 << 20,
    )
    again = replay_envelope(record, now_ms=NOW)
    assert (again.id, again.payload, again.attempt) == ("inv_2", {b"k": 1}, 0)


def test_a_rendering_is_bounded() -> None:
    text = record_codec.render({b"k" * 10_000: ["x" * 10_000] * 1000, "deep": nested(900)})
    assert len(text) <= record_codec.RENDERING_MAX_CHARS + 100


def test_an_export_line_of_a_record_json_cannot_carry_keeps_its_exact_bytes() -> None:
    record = success_record({b"k": 1})
    body = contract.pack(record)
    line = orjson.loads(export_line(record, body))
    assert base64.b64decode(line["msgpack"]) == body
    assert line["record"]["requestContext"] == record["requestContext"]
    assert contract.ENCODING_ERROR in line["record"]


def test_an_export_line_of_a_message_that_is_no_record_shows_a_rendering() -> None:
    not_a_record = {"requestContext": nested(300)}  # anyone may publish to {ns}.failed
    body = contract.pack(not_a_record)
    line = orjson.loads(export_line(not_a_record, body))
    assert base64.b64decode(line["msgpack"]) == body
    assert line["record"].startswith("(the record cannot be shown as JSON")


def test_a_task_payload_json_cannot_carry_shows_as_a_rendering() -> None:
    text = views._text(contract.pack({b"k": 1}))
    assert text is not None
    assert text.startswith('"(not JSON:')
    assert "b'k'" in text
    assert views._text(contract.pack({"k": 1})) == '{"k":1}'


def test_a_lone_surrogate_in_an_error_is_escaped_and_the_error_keeps_its_shape() -> None:
    envelope = Envelope(id="inv_1", fn="resize", payload=None, created_at=NOW)
    error = {"errorType": "RuntimeError", "errorMessage": "bad \udc80 text", "stackTrace": []}
    record = records.of_outcome(
        envelope, Outcome(ok=False, error=error), contract.RETRIES_EXHAUSTED, NOW
    )
    for encoded in (record_codec.pack_record(record), record_codec.record_json(record)):
        sent = contract.unpack(encoded) if encoded[:1] != b"{" else orjson.loads(encoded)
        assert sent["responsePayload"]["errorType"] == "RuntimeError"
        assert sent["responsePayload"]["errorMessage"] == "bad \\udc80 text"
        assert sent["invocation"] == record["invocation"]
        assert "surrogates escaped in: responsePayload" in sent[contract.ENCODING_ERROR]


def test_a_part_nested_deeper_than_python_recurses_is_rendered() -> None:
    record = success_record(None, result=nested(1100))  # msgpack packs 1024 levels at most
    sent = contract.unpack(record_codec.pack_record(record))
    assert isinstance(sent["responsePayload"], str)


def test_a_payload_too_large_record_is_not_replayable_and_says_why() -> None:
    body = contract.pack({"v": 1, "id": "big", "fn": "resize", "payload": "x" * 100_000})
    with pytest.raises(InvalidMessage) as info:
        contract.decode(body, received_at_ms=NOW, max_payload_bytes=1024, max_delay_s=3600)
    record = records.invalid(body, info.value, function="resize", message_id="big", now_ms=NOW)
    with pytest.raises(NotReplayable, match=f"only the start.*{len(body)} bytes"):
        replay_envelope(record, now_ms=NOW)
