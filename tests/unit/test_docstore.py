"""The configuration log's pure part: how one logged change moves the state."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncinvoke.docstore import Entry, apply_change, check_key, encode_change
from asyncinvoke.errors import InvalidDocument


def _logged(op: str, kind: str, name: str, doc: dict[str, object] | None, at: int) -> bytes:
    body = msgpack.unpackb(encode_change(op, kind, name, doc))
    body["at"] = at
    return msgpack.packb(body)


def test_a_put_keeps_the_first_created_time_and_moves_the_modified_time() -> None:
    state: dict[tuple[str, str], Entry] = {}
    first = apply_change(state, 1, _logged("put", "async-config", "f", {"a": 1}, 1000))
    second = apply_change(state, 5, _logged("put", "async-config", "f", {"a": 2}, 2000))
    assert first is not None and first.previous is None
    assert second is not None and second.previous == first.entry
    entry = state[("async-config", "f")]
    assert (entry.version, entry.created_ms, entry.modified_ms) == (5, 1000, 2000)
    assert entry.document == {"a": 2}


def test_a_delete_removes_the_key_and_a_put_after_it_starts_a_new_life() -> None:
    state: dict[tuple[str, str], Entry] = {}
    apply_change(state, 1, _logged("put", "trigger", "t", {"x": 1}, 1000))
    deleted = apply_change(state, 2, _logged("delete", "trigger", "t", None, 1500))
    assert deleted is not None and deleted.entry is None and deleted.previous is not None
    assert state == {}
    apply_change(state, 3, _logged("put", "trigger", "t", {"x": 2}, 3000))
    assert state[("trigger", "t")].created_ms == 3000


@pytest.mark.parametrize(
    "body", [b"", b"\xc1", msgpack.packb({"op": "sync", "v": 1}), msgpack.packb([1, 2])]
)
def test_markers_and_garbage_change_nothing(body: bytes) -> None:
    state: dict[tuple[str, str], Entry] = {}
    assert apply_change(state, 1, body) is None
    assert state == {}


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 9)), max_size=30))
def test_the_state_holds_the_last_logged_write_of_every_key(writes: list[tuple[str, int]]) -> None:
    state: dict[tuple[str, str], Entry] = {}
    for version, (name, value) in enumerate(writes, start=1):
        apply_change(state, version, _logged("put", "k", name, {"v": value}, version))
    last = {name: value for name, value in writes}
    assert {name: entry.document["v"] for (_, name), entry in state.items()} == last


@pytest.mark.parametrize(
    ("kind", "name"), [("Async", "f"), ("k", ""), ("k", "a/b"), ("", "f"), ("k", "x" * 129)]
)
def test_keys_out_of_form_are_refused_with_the_form(kind: str, name: str) -> None:
    with pytest.raises(InvalidDocument, match=r"must match|not a store kind"):
        check_key(kind, name)


def test_a_document_too_large_is_refused_before_it_is_written() -> None:
    with pytest.raises(InvalidDocument, match="bytes, over"):
        encode_change("put", "k", "n", {"blob": "x" * 70_000})
