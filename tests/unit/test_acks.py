"""Batched acknowledgements: never a tag twice, never one not done, gaps respected."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from asyncinvoke.acks import _ChannelAcks, _plan


def test_consecutive_done_tags_go_out_as_one_multiple_ack() -> None:
    state = _ChannelAcks()
    state.done.update({1, 2, 3, 4})
    assert _plan(state) == [(4, True)]
    assert state.floor == 4


def test_tags_above_a_gap_are_acked_one_by_one_and_the_floor_catches_up() -> None:
    state = _ChannelAcks()
    state.done.update({1, 2, 4, 5})  # 3 is still running
    assert _plan(state) == [(2, True), (4, False), (5, False)]
    assert state.floor == 2
    state.done.add(3)
    assert _plan(state) == [(3, False)]
    assert state.floor == 5


@given(st.permutations(list(range(1, 41))), st.integers(min_value=1, max_value=10))
def test_every_tag_is_acknowledged_exactly_once_whatever_the_order(
    order: list[int], batch: int
) -> None:
    state = _ChannelAcks()
    acked: list[int] = []
    done_so_far: set[int] = set()
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        state.done.update(chunk)
        done_so_far.update(chunk)
        for tag, multiple in _plan(state):
            covered = [t for t in range(1, tag + 1) if t not in acked] if multiple else [tag]
            assert all(t in done_so_far for t in covered), "acked a delivery not done"
            assert not set(covered) & set(acked), "acked a delivery twice"
            acked.extend(covered)
    assert sorted(acked) == list(range(1, 41))
