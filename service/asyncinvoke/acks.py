"""Acknowledgements, batched per channel and per turn of the event loop.

An ack frame per delivery is a fifth of a no-op invocation's cost. Here a delivery
that is done is only noted; once per loop turn each channel gets one
``basic.ack(multiple=True)`` for the run of consecutive delivery tags that are all
done, and single acks for done tags above a gap (a slow attempt never holds back
the acks, and so the prefetch window, of the fast ones behind it). Nothing is
acknowledged earlier than before: a delivery is noted only once everything that
follows from it was confirmed.

**A short linger where the caller allows it.** At a few hundred attempts a second each
delivery is alone in its loop turn, so each gets an ack frame of its own, and on a
quorum queue each ack is a command through the queue's Raft log. An attempt of a
function whose runner queues attempts of its own (the process executor's pipeline)
lets its ack wait up to ``LINGER_S`` for others to share a frame, as long as fewer
than ``linger_below`` of its channel's acks wait: the deliveries the worker holds
(its prefetch, less the acks not sent) then still cover every slot, so nothing waits
for the broker because of it. Measured in docs/benchmarks.md (issue 18): at 2 ms
CPU-bound attempts, 2 ms and fewer waiting acks than slots took a third off the broker's
CPU per attempt; 5 ms and up to twice the slots (the prefetch four times the slots)
another third, and 4-8 % more attempts a second. The price: a worker killed with -9 may
run again the attempts that ended in its last 5 ms (at least once, as always).
"""

from __future__ import annotations

import asyncio
import traceback
import weakref
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import aiormq

from asyncinvoke.frame_room import wait_for_room
from asyncinvoke.observability import get_logger

log = get_logger(component="acks")

# How long an ack may wait for others to share its frame (``Acks.ack``'s linger_below).
LINGER_S = 0.005


def lingering_acks(slots: int) -> int:
    """How many of a function's acks may wait to share a frame, where its runner allows
    it: twice its slots. Its consumer's prefetch holds that many more deliveries
    (``worker.prefetch_for``), so the ones held still cover every slot."""
    return 2 * slots


class _ChannelAcks:
    __slots__ = ("done", "floor", "sent_above")

    def __init__(self) -> None:
        self.done: set[int] = set()  # noted, not yet sent
        self.floor = 0  # every tag up to here is settled and sent
        self.sent_above: set[int] = set()  # settled and sent above the floor


class Acks:
    def __init__(self) -> None:
        self._channels: weakref.WeakKeyDictionary[Any, _ChannelAcks] = (
            weakref.WeakKeyDictionary()
        )
        self._scheduled = False  # a flush at the end of this loop turn
        self._lingering: asyncio.TimerHandle | None = None  # a flush after LINGER_S
        self._sending: set[asyncio.Task[None]] = set()
        # One flush writes at a time, and plans only once the one before it has
        # written: a flush can wait between two frames (the connection's frame queue
        # full), and a later flush's multiple ack written meanwhile would cover tags
        # planned as single acks before it, whose frames the broker then refuses as
        # unknown (PRECONDITION_FAILED closes the channel; all in flight run again).
        self._writing = asyncio.Lock()

    def ack(self, message: Any, *, linger_below: int = 0) -> None:
        """Note ``message`` as done; its ack goes out at the end of this loop turn or,
        while fewer than ``linger_below`` acks of its channel wait, within LINGER_S."""
        state = self._channels.get(message.channel)
        if state is None:
            state = self._channels[message.channel] = _ChannelAcks()
        tag = message.delivery_tag
        if tag <= state.floor or tag in state.sent_above or tag in state.done:
            # A second ack (or an ack after a nack) of one delivery is a channel error
            # for the broker: it would close the channel, and every other delivery in
            # flight on it would be redelivered and run again. It is a bug in the
            # caller, so it is logged loudly, with where it came from, and not sent.
            log.error(
                "ack_twice",
                delivery_tag=tag,
                message_id=getattr(message, "message_id", None),
                caller="".join(traceback.format_stack(limit=8)[:-1]),
            )
            return
        state.done.add(tag)
        if self._scheduled:
            return
        if len(state.done) < linger_below:
            if self._lingering is None:
                self._lingering = asyncio.get_running_loop().call_later(
                    LINGER_S, self._flush_soon
                )
            return
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._flush_soon)

    async def nack(self, message: Any) -> None:
        """Return ``message`` to its queue now (requeue); raise if its channel is gone."""
        channel = message.channel
        await _write(
            channel,
            partial(channel.basic_nack, message.delivery_tag, requeue=True, wait=False),
        )
        self.settled_elsewhere(message)

    def settled_elsewhere(self, message: Any) -> None:
        """A delivery settled by other means (a nack): the batches must skip its tag."""
        state = self._channels.get(message.channel)
        if state is None:
            state = self._channels[message.channel] = _ChannelAcks()
        state.sent_above.add(message.delivery_tag)
        _advance(state)

    def _stop_lingering(self) -> None:
        self._scheduled = False
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None

    def _flush_soon(self) -> None:
        self._stop_lingering()
        task = asyncio.get_running_loop().create_task(self._send_all())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def flush(self) -> None:
        """Send every noted ack now and wait until they are written."""
        self._stop_lingering()
        await self._send_all()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def _send_all(self) -> None:
        async with self._writing:
            await self._send_planned()

    async def _send_planned(self) -> None:
        for channel, state in list(self._channels.items()):
            if not state.done:
                continue
            frames = _plan(state)
            try:
                for tag, multiple in frames:
                    await _write(
                        channel, partial(channel.basic_ack, tag, multiple=multiple, wait=False)
                    )
            except (aiormq.exceptions.AMQPError, RuntimeError) as exc:
                # The channel is gone: the broker redelivers these (at least once).
                log.warning("ack_failed", count=len(frames), error=str(exc))
                self._channels.pop(channel, None)


async def _write(channel: Any, send: Callable[[], Awaitable[None]]) -> None:
    """Queue one frame (``send``) for the connection's writer.

    Only once the connection's frame queue has room (``frame_room``): a frame that
    waited in a full queue could reach the broker after the close-ok of a channel it
    closed meanwhile, and cost the whole connection. Once a connection died, its writer
    is gone and a channel of it may not be marked closed yet: the wait then ends when
    the channel or its connection is marked closed, and the frame is given up.
    """
    await wait_for_room(channel)
    await send()  # a put into a queue with room: no yield between the check and it


def _plan(state: _ChannelAcks) -> list[tuple[int, bool]]:
    """The frames that acknowledge ``state.done``: one multiple ack for the run just
    above the floor, single acks for the rest. Updates the state as if sent."""
    tags = sorted(state.done)
    state.done.clear()
    frames: list[tuple[int, bool]] = []
    index = 0
    if tags[0] == state.floor + 1:
        while index + 1 < len(tags) and tags[index + 1] == tags[index] + 1:
            index += 1
        frames.append((tags[index], index > 0))
        state.floor = tags[index]
        index += 1
    for tag in tags[index:]:
        frames.append((tag, False))
        state.sent_above.add(tag)
    _advance(state)
    return frames


def _advance(state: _ChannelAcks) -> None:
    while state.floor + 1 in state.sent_above:
        state.floor += 1
        state.sent_above.discard(state.floor)
