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
- unknown here (another worker had it): ask the fleet, below; else a suspect.

A worker also tells every other worker what it remembers (``vouch``: a broadcast on the
namespace's control exchange, once its connection is back; ``vouching.py`` sends and
takes them, this module only keeps them). After a broker node dies,
the deliveries its connections held come back to whichever worker consumes next, and
that is rarely the worker that held them. Such a redelivery, unknown here, waits up to
``VOUCH_WAIT_S`` for a voucher: settled elsewhere, it is acknowledged without running;
handled elsewhere without settling, it runs as an ordinary delivery; with no voucher in
time (its worker really died, or is still cut off), it is a suspect, as before. A lost
broadcast only leaves a redelivery a suspect, which is safe.

Only deliveries whose channel is closed when they end are remembered, so the hot path
pays one attribute read. An attempt that ended just before the drop, with its ack sent
but lost, is not remembered: its redelivery is a suspect, which is safe, only slower.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from asyncinvoke.consumer import Message

REMEMBERED = 10_000  # ended deliveries kept; a drop strands at most the prefetch windows
# How long a redelivery unknown here waits for another worker's voucher before it becomes
# a suspect: above the time a worker needs to reconnect to another node (a failover
# measured 1-3 s on the local cluster).
VOUCH_WAIT_S = 5.0
VOUCHES_PER_BROADCAST = 2_000  # a broadcast of 2,000 keys is about 80 KB

Key = tuple[str | None, bytes]


def key_of(message: Message) -> Key:
    # 128 bits of BLAKE2b: two bodies under one message id do not collide by chance, and
    # making them collide on purpose is beyond any publisher.
    return (message.message_id, hashlib.blake2b(message.body, digest_size=16).digest())


class Redeliveries:
    def __init__(self, limit: int = REMEMBERED):
        self._ended: OrderedDict[Key, bool] = OrderedDict()
        self._limit = limit
        # What other workers vouched for, and the redeliveries waiting for a voucher.
        self._vouched: OrderedDict[Key, bool] = OrderedDict()
        self._waiting: dict[Key, asyncio.Future[bool]] = {}
        # What this worker has yet to tell the others, and the event that wakes the teller.
        self._untold: OrderedDict[Key, bool] = OrderedDict()
        self.untold = asyncio.Event()

    def ended(self, message: Message, settled: bool) -> None:
        """A delivery's handling ended; remembered only if its channel is gone."""
        if not message.channel.is_closed:
            return
        key = key_of(message)
        self._ended[key] = settled
        self._ended.move_to_end(key)
        if len(self._ended) > self._limit:
            self._ended.popitem(last=False)
        self._untold[key] = settled
        if len(self._untold) > self._limit:
            self._untold.popitem(last=False)
        self.untold.set()

    # -- what the workers tell each other ----------------------------------------------

    def to_tell(self) -> list[list[Any]]:
        """Up to ``VOUCHES_PER_BROADCAST`` vouchers not told yet, as sent: [message id,
        body digest, settled]; taken (``retell`` puts them back if the send failed)."""
        taken = list(itertools.islice(self._untold.items(), VOUCHES_PER_BROADCAST))
        for key, _ in taken:
            del self._untold[key]
        if not self._untold:
            self.untold.clear()
        return [[message_id, digest, settled] for (message_id, digest), settled in taken]

    def retell(self, vouchers: list[list[Any]]) -> None:
        for message_id, digest, settled in vouchers:
            self._untold[(message_id, digest)] = settled
        self.untold.set()

    def vouch(self, vouchers: Any) -> int:
        """Another worker's broadcast (``to_tell``'s list); how many were taken. Anything
        malformed in it is skipped: the redelivery it was for stays a suspect."""
        taken = 0
        for voucher in vouchers if isinstance(vouchers, list) else ():
            if not (isinstance(voucher, list) and len(voucher) == 3):
                continue
            message_id, digest, settled = voucher
            if not (isinstance(message_id, str | None) and isinstance(digest, bytes)
                    and isinstance(settled, bool)):
                continue
            key = (message_id, digest)
            waiting = self._waiting.pop(key, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(settled)
            else:
                self._vouched[key] = settled
                self._vouched.move_to_end(key)
                if len(self._vouched) > self._limit:
                    self._vouched.popitem(last=False)
            taken += 1
        return taken

    def vouched(self, message: Message) -> bool | None:
        """What another worker vouched for ``message`` so far (True: settled there;
        False: handled there without settling), or None."""
        return self._vouched.pop(key_of(message), None)

    async def wait_for_voucher(self, message: Message, timeout: float) -> bool | None:
        """``vouched``, waiting up to ``timeout`` s for a voucher to come."""
        key = key_of(message)
        if (known := self._vouched.pop(key, None)) is not None:
            return known
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), timeout)
        except TimeoutError:
            return self._vouched.pop(key, None)
        finally:
            if self._waiting.get(key) is waiting:
                del self._waiting[key]

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
