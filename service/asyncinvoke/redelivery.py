"""Redeliveries this process can vouch for.

A redelivered message is treated as a suspect: its worker may have died of it, so it
runs alone (``gate.py``). But most redeliveries have a duller cause. The connection
dropped (a broker restart, a network blip) while this very process was handling the
message, and its ack could not reach the broker. This process is alive, so the message
did not kill it. Sending every delivery that was in flight through the one-at-a-time
suspect path would crawl for long functions, and would run each of them a second time.

So a worker remembers the deliveries it was handling when their channel went away,
keyed by message id and a digest of the body (a retry has the same id and another
body; the digest, not the body, so that 10,000 remembered deliveries of 256 KiB cost
kilobytes, not 2.5 GiB). When one comes back:

- its attempt is still running here: wait for it to end;
- its attempt ended here and settled (every follow-up confirmed): acknowledge the
  redelivery without running it again;
- its attempt ended here without settling: run it again as an ordinary delivery, since
  this process is alive and so the message is no suspect;
- unknown here (another worker had it): a suspect, as before.

Only deliveries whose channel is closed when they end are remembered, so the hot path
pays one attribute read. An attempt that ended just before the drop, with its ack sent
but lost, is not remembered: its redelivery is a suspect, which is safe, only slower.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from asyncinvoke.consumer import Message

REMEMBERED = 10_000  # ended deliveries kept; a drop strands at most the prefetch windows

Key = tuple[str | None, bytes]


def key_of(message: Message) -> Key:
    # 128 bits of BLAKE2b: two bodies under one message id do not collide by chance, and
    # making them collide on purpose is beyond any publisher.
    return (message.message_id, hashlib.blake2b(message.body, digest_size=16).digest())


class Redeliveries:
    def __init__(self, limit: int = REMEMBERED):
        self._ended: OrderedDict[Key, bool] = OrderedDict()
        self._limit = limit

    def ended(self, message: Message, settled: bool) -> None:
        """A delivery's handling ended; remembered only if its channel is gone."""
        if not message.channel.is_closed:
            return
        key = key_of(message)
        self._ended[key] = settled
        self._ended.move_to_end(key)
        if len(self._ended) > self._limit:
            self._ended.popitem(last=False)

    async def outcome(
        self, message: Message, running: Iterable[tuple[asyncio.Task[Any], Message]]
    ) -> bool | None:
        """For a redelivery: True if this process settled it already, False if it
        handled it without settling, None if it is unknown here (a suspect)."""
        key = key_of(message)
        for task, other in list(running):
            if (
                other is not message
                and other.message_id == message.message_id
                and other.channel.is_closed
                and key_of(other) == key
            ):
                # Not cancelled with us: the wait ends when that attempt ends.
                await asyncio.wait({task})
                break
        return self._ended.pop(key, None)
