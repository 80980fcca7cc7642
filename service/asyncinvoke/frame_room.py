"""Send a frame on an aiormq channel only while the broker can still take it.

aiormq writes every frame through one small queue per connection (10 frames). A send
that finds it full waits, and while it waits the broker may close the channel (a
channel error). aiormq answers the close with ``channel.close-ok`` put straight into
the queue, ahead of the waiting frames, so the waiting ack or publish reaches the
broker *after* the close-ok, on a channel it no longer knows: RabbitMQ then closes the
whole connection with ``CHANNEL_ERROR - expected 'channel.open'`` (reproduced on
3.10.8 with aiormq 7.2: a bad ack closes a channel while 3,000 publishes fill the
queue). And should the queue be full at the moment the close arrives, aiormq drops
the close-ok, the broker keeps the channel closing with its deliveries held, and the
channel reopened with the same number waits for an answer that never comes.

So a frame is sent only when the queue has room to spare: the put then completes
without yielding, right after the check that the channel is open, and the queue keeps
room for aiormq's own close-ok.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq

# Free slots left for aiormq's own frames (a close-ok, a heartbeat) in its 10-frame queue.
SPARE_SLOTS = 3
_SPIN_TURNS = 20  # loop turns the writer normally needs to empty the queue


async def wait_for_room(channel: Any) -> None:
    """Return once ``channel``'s connection can queue a frame without waiting; raise
    ChannelInvalidStateError if the channel or its connection is closed (or closing)."""
    turns = 0
    while True:
        if channel.is_closed or channel.connection.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
        queue: asyncio.Queue[Any] = channel.connection.write_queue
        if queue.maxsize <= 0 or queue.qsize() + SPARE_SLOTS < queue.maxsize:
            return
        turns += 1
        # The writer empties the queue within a loop turn or two; past that it waits
        # for the socket, and a short sleep spares the CPU.
        await asyncio.sleep(0 if turns < _SPIN_TURNS else 0.002)
