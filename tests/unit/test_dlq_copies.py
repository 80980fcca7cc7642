"""Which failure records are copies of one failure: the key the dead-letter tool
collapses them by, and the tally that tells a first copy from the rest."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from asyncinvoke import contract
from asyncinvoke.dlq import Copies, failure_key
from asyncinvoke.dlq.operations import export_line

NOW = 1_700_000_000_000


def record(
    request_id: Any = "inv_1",
    *,
    function: Any = "resize",
    condition: Any = contract.RETRIES_EXHAUSTED,
    attempts: Any = 4,
    now_ms: int = NOW,
    error: str = "disk full",
) -> dict[str, Any]:
    return contract.Record(
        request_id=request_id,
        function=function,
        condition=condition,
        attempts=attempts,
        request_payload={"key": "a.png"},
        status_code=500,
        function_error=contract.UNHANDLED,
        response={"errorType": "OSError", "errorMessage": error, "stackTrace": [error]},
        invocation={"v": 1, "id": request_id, "fn": function, "payload": None},
        timestamp=now_ms,
    ).to_wire()


def test_a_record_made_again_later_with_other_words_is_a_copy_of_the_same_failure() -> None:
    first = record()
    again = record(now_ms=NOW + 1234, error="disk full (errno 28)")
    assert failure_key(first) == failure_key(again) is not None


def test_each_part_of_the_key_tells_two_failures_apart() -> None:
    base = failure_key(record())
    for other in (
        record("inv_2"),
        record(function="convert"),
        record(condition=contract.NON_RETRYABLE),
        record(attempts=5),
    ):
        assert failure_key(other) != base, other["requestContext"]


def test_a_record_without_a_request_id_has_no_key_and_is_never_a_copy() -> None:
    for keyless in (
        record(None),
        record(""),
        record(b"inv_1"),
        {"requestContext": "not a map"},
        {"v": 1},
        b"not a record at all",
        None,
    ):
        assert failure_key(keyless) is None, keyless
    copies = Copies()
    assert copies.first(None) and copies.first(None)
    assert copies.duplicates == 0


def test_odd_values_in_the_other_parts_still_give_a_key() -> None:
    # A producer may publish anything to {ns}.failed: such parts count as absent.
    odd = failure_key(record(function=b"resize", condition=7, attempts=True))
    absent = failure_key(record(function=None, condition=None, attempts=None))
    assert odd == absent is not None


def test_the_tally_counts_each_failure_once_and_every_further_copy() -> None:
    copies = Copies()
    keys = [failure_key(record(f"inv_{n % 3}")) for n in range(7)]  # 0 1 2 0 1 2 0
    firsts = [copies.first(key) for key in keys]
    assert firsts == [True, True, True, False, False, False, False]
    assert copies.duplicates == 4
    assert keys[0] in copies and failure_key(record("inv_9")) not in copies


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "", None]),
            st.sampled_from(["f", "g"]),
            st.sampled_from([contract.RETRIES_EXHAUSTED, contract.NON_RETRYABLE]),
            st.integers(min_value=1, max_value=3),
        ),
        max_size=40,
    )
)
def test_firsts_are_the_distinct_failures_plus_every_keyless_record(
    parts: list[tuple[str | None, str, str, int]],
) -> None:
    copies = Copies()
    firsts = sum(
        copies.first(failure_key(record(i, function=f, condition=c, attempts=n)))
        for i, f, c, n in parts
    )
    keyless = sum(1 for i, *_ in parts if not i)
    distinct = len({p for p in parts if p[0]})
    assert firsts == distinct + keyless
    assert copies.duplicates == len(parts) - firsts


def test_an_export_line_marks_a_duplicate_copy_and_keeps_its_bytes() -> None:
    copy = record(now_ms=NOW + 1)
    body = contract.pack(copy)
    marked = orjson.loads(export_line(copy, body, duplicate=True))
    plain = orjson.loads(export_line(copy, body))
    assert marked["duplicate"] is True and "duplicate" not in plain
    assert marked["msgpack"] == plain["msgpack"] and marked["record"] == plain["record"]
