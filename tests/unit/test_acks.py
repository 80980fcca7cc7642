"""Batched acknowledgements: never a tag twice, never one not done, gaps respected."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncinvoke import acks as acks_module
from asyncinvoke.acks import Acks, _ChannelAcks, _plan


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


class _Connection:
    def __init__(self, write_queue: asyncio.Queue[tuple[int, bool]]) -> None:
        self.is_closed = False
        self.write_queue = write_queue


class _Channel:
    """The part of an aiormq channel that acks touch: a bounded frame queue that a
    connection's writer drains (or, once the connection died, nobody does)."""

    def __init__(self, frames: int) -> None:
        self.is_closed = False
        self.queue: asyncio.Queue[tuple[int, bool]] = asyncio.Queue(maxsize=frames)
        self.connection = _Connection(self.queue)

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        await self.queue.put((tag, multiple))


class _Message:
    def __init__(self, channel: _Channel, tag: int) -> None:
        self.channel = channel
        self.delivery_tag = tag


async def test_a_dead_connection_with_a_full_frame_queue_does_not_hold_back_other_acks() -> None:
    # The old connection's writer is gone and its queue is full; its channel is only
    # marked closed a moment later (as after a broker drop).
    dead = _Channel(frames=1)
    dead.queue.put_nowait((0, False))
    live = _Channel(frames=100)
    acks = Acks()
    acks.ack(_Message(dead, 1))
    acks.ack(_Message(dead, 3))  # two frames: the second cannot be queued
    acks.ack(_Message(live, 1))

    async def connection_noticed_dead() -> None:
        await asyncio.sleep(0.2)
        dead.connection.is_closed = True

    marker = asyncio.create_task(connection_noticed_dead())
    async with asyncio.timeout(5):  # before: waited for ever
        await acks.flush()
    await marker
    assert live.queue.get_nowait() == (1, False)


async def test_a_second_ack_of_one_delivery_is_not_sent_and_does_not_close_the_channel() -> None:
    channel = _Channel(frames=100)
    acks = Acks()
    acks.ack(_Message(channel, 1))
    acks.ack(_Message(channel, 1))  # twice in one turn
    await acks.flush()
    acks.ack(_Message(channel, 1))  # again, after its ack went out
    acks.ack(_Message(channel, 3))
    await acks.flush()
    sent = [channel.queue.get_nowait() for _ in range(channel.queue.qsize())]
    assert sent == [(1, False), (3, False)]


async def test_an_ack_after_a_nack_of_the_same_delivery_is_not_sent() -> None:
    channel = _Channel(frames=100)
    acks = Acks()
    acks.settled_elsewhere(_Message(channel, 1))  # as a nack does once it is written
    acks.ack(_Message(channel, 1))
    acks.ack(_Message(channel, 2))
    await acks.flush()
    assert [channel.queue.get_nowait() for _ in range(channel.queue.qsize())] == [(2, False)]


class _Broker:
    """RabbitMQ's rule for acks on a channel: the tag acknowledged must be outstanding,
    with ``multiple`` too (a later frame for a tag already covered closes the channel
    with PRECONDITION_FAILED, unknown delivery tag)."""

    def __init__(self, delivered: int) -> None:
        self.outstanding = set(range(1, delivered + 1))
        self.unknown: list[int] = []

    def receive(self, tag: int, multiple: bool) -> None:
        if tag not in self.outstanding:
            self.unknown.append(tag)
            return
        covered = {t for t in self.outstanding if t <= tag} if multiple else {tag}
        self.outstanding -= covered


async def test_acks_of_several_turns_reach_the_broker_in_the_order_they_were_planned() -> None:
    """A full frame queue makes a flush wait between two frames; the flush of the next
    turn must not write a multiple ack past single acks planned before it (it would
    cover them, and their own frames then name unknown tags: the channel closes and
    every delivery in flight runs again). Seen with 400 deliveries in flight and
    handlers that end out of order (a sync handler's threads)."""
    channel = _Channel(frames=10)  # aiormq's write queue: 10 frames
    broker = _Broker(delivered=400)
    acks = Acks()

    async def writer() -> None:  # aiormq's: one frame per loop turn
        while True:
            broker.receive(*await channel.queue.get())
            await asyncio.sleep(0)

    writing = asyncio.create_task(writer())
    # Turn 1: delivery 1 is still running, 2..120 are done: 119 single acks, more than
    # the queue holds, so that flush waits for room between frames.
    for tag in range(2, 121):
        acks.ack(_Message(channel, tag))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # Later turns: 1 ends, then the rest, in runs: multiple acks.
    acks.ack(_Message(channel, 1))
    for start in range(121, 401, 40):
        await asyncio.sleep(0)
        for tag in range(start, start + 40):
            acks.ack(_Message(channel, tag))
    async with asyncio.timeout(10):
        await acks.flush()
        while not channel.queue.empty():
            await asyncio.sleep(0)
    writing.cancel()
    assert broker.unknown == []
    assert broker.outstanding == set()


def _sent(channel: _Channel) -> list[tuple[int, bool]]:
    return [channel.queue.get_nowait() for _ in range(channel.queue.qsize())]


async def _turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_lingering_acks_share_one_frame_within_the_linger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Long enough that a loaded machine cannot pass it between two turns of this test.
    monkeypatch.setattr(acks_module, "LINGER_S", 0.3)
    channel = _Channel(frames=100)
    acks = Acks()
    started = asyncio.get_running_loop().time()
    acks.ack(_Message(channel, 1), linger_below=3)
    await _turns(5)
    assert _sent(channel) == []  # a turn later: still waiting for company
    acks.ack(_Message(channel, 2), linger_below=3)
    async with asyncio.timeout(5):
        frame = await channel.queue.get()
    assert frame == (2, True)  # both in one multiple ack
    assert asyncio.get_running_loop().time() - started >= 0.25


async def test_an_ack_that_would_leave_too_few_deliveries_goes_out_at_the_end_of_the_turn() -> None:
    channel = _Channel(frames=100)
    acks = Acks()
    acks.ack(_Message(channel, 1), linger_below=2)
    acks.ack(_Message(channel, 2), linger_below=2)  # 2 waiting: no more lingering
    await _turns(5)
    assert _sent(channel) == [(2, True)]


async def test_an_ack_that_may_not_linger_takes_the_lingering_ones_along() -> None:
    channel = _Channel(frames=100)
    acks = Acks()
    acks.ack(_Message(channel, 1), linger_below=10)
    acks.ack(_Message(channel, 2))  # the default: this turn
    await _turns(5)
    assert _sent(channel) == [(2, True)]


async def test_flush_sends_lingering_acks_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acks_module, "LINGER_S", 0.05)
    channel = _Channel(frames=100)
    acks = Acks()
    acks.ack(_Message(channel, 1), linger_below=10)
    await acks.flush()
    assert _sent(channel) == [(1, False)]
    await asyncio.sleep(0.15)  # past the linger: cancelled, it sends nothing more
    assert _sent(channel) == []
