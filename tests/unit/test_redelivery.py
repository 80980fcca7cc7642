"""Redeliveries a worker can vouch for: remembered only when their channel is gone,
bounded, and the attempt still running is waited for."""

from __future__ import annotations

import asyncio
import tracemalloc
from dataclasses import dataclass, field

from asyncinvoke.redelivery import Redeliveries


@dataclass
class _Channel:
    is_closed: bool = False


@dataclass
class _Message:
    message_id: str | None
    body: bytes
    channel: _Channel = field(default_factory=_Channel)


def test_an_attempt_that_ended_on_a_live_channel_is_not_remembered() -> None:
    async def scenario() -> bool | None:
        redeliveries = Redeliveries()
        redeliveries.ended(_Message("i1", b"a"), settled=True)  # its ack goes through
        return await redeliveries.outcome(_Message("i1", b"a"), [])

    assert asyncio.run(scenario()) is None  # unknown: a suspect


def test_an_attempt_that_ended_after_its_channel_closed_vouches_for_its_redelivery() -> None:
    async def scenario() -> tuple[bool | None, bool | None, bool | None]:
        redeliveries = Redeliveries()
        closed = _Channel(is_closed=True)
        redeliveries.ended(_Message("i1", b"attempt 0", closed), settled=True)
        redeliveries.ended(_Message("i2", b"attempt 0", closed), settled=False)
        # Same id, another body: a retry, which this process never handled.
        other_attempt = await redeliveries.outcome(_Message("i1", b"attempt 1"), [])
        settled = await redeliveries.outcome(_Message("i1", b"attempt 0"), [])
        unsettled = await redeliveries.outcome(_Message("i2", b"attempt 0"), [])
        return other_attempt, settled, unsettled

    assert asyncio.run(scenario()) == (None, True, False)


def test_a_redelivery_waits_for_the_attempt_still_running_and_takes_its_outcome() -> None:
    async def scenario() -> tuple[bool | None, float]:
        redeliveries = Redeliveries()
        original = _Message("i1", b"x", _Channel(is_closed=True))
        loop = asyncio.get_running_loop()

        async def attempt() -> None:
            await asyncio.sleep(0.2)
            redeliveries.ended(original, settled=True)

        task = asyncio.create_task(attempt())
        started = loop.time()
        outcome = await redeliveries.outcome(_Message("i1", b"x"), [(task, original)])
        return outcome, loop.time() - started

    outcome, waited = asyncio.run(scenario())
    assert outcome is True
    assert waited >= 0.15


def test_memory_is_bounded() -> None:
    async def scenario() -> tuple[bool | None, bool | None]:
        redeliveries = Redeliveries(limit=3)
        closed = _Channel(is_closed=True)
        for n in range(5):
            redeliveries.ended(_Message(f"i{n}", b"x", closed), settled=True)
        oldest = await redeliveries.outcome(_Message("i0", b"x"), [])
        newest = await redeliveries.outcome(_Message("i4", b"x"), [])
        return oldest, newest

    assert asyncio.run(scenario()) == (None, True)


def test_remembered_deliveries_keep_no_body() -> None:
    """10,000 remembered 256 KiB deliveries were 2.5 GiB of bodies; a digest is enough."""
    closed = _Channel(is_closed=True)
    redeliveries = Redeliveries(limit=100)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for n in range(100):
            body = n.to_bytes(4, "big") * (64 * 1024)  # 256 KiB, made here and dropped
            redeliveries.ended(_Message(f"i{n}", body, closed), settled=True)
            del body
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1024 * 1024, f"{kept} bytes kept for 100 deliveries of 256 KiB"

    async def scenario() -> tuple[bool | None, bool | None]:
        same = await redeliveries.outcome(_Message("i7", (7).to_bytes(4, "big") * 65536), [])
        other_body = await redeliveries.outcome(_Message("i8", b"another body"), [])
        return same, other_body

    assert asyncio.run(scenario()) == (True, None)


def test_what_ended_on_a_closed_channel_is_told_once_and_retold_if_the_send_failed() -> None:
    redeliveries = Redeliveries()
    closed = _Channel(is_closed=True)
    redeliveries.ended(_Message("i1", b"a", closed), settled=True)
    redeliveries.ended(_Message("i2", b"b", _Channel()), settled=True)  # its ack went out
    redeliveries.ended(_Message("i3", b"c", closed), settled=False)
    assert redeliveries.untold.is_set()
    told = redeliveries.to_tell()
    assert [(message_id, settled) for message_id, _, settled in told] == [
        ("i1", True), ("i3", False)
    ]
    assert not redeliveries.untold.is_set() and redeliveries.to_tell() == []
    redeliveries.retell(told)
    assert redeliveries.to_tell() == told


def test_another_workers_voucher_answers_a_redelivery_waiting_for_it() -> None:
    async def scenario() -> tuple[bool | None, bool | None, bool | None, float]:
        teller, listener = Redeliveries(), Redeliveries()
        closed = _Channel(is_closed=True)
        teller.ended(_Message("i1", b"a", closed), settled=True)
        teller.ended(_Message("i2", b"b", closed), settled=False)
        vouchers = teller.to_tell()
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = asyncio.create_task(listener.wait_for_voucher(_Message("i1", b"a"), 5))
        await asyncio.sleep(0.01)
        assert listener.vouch(vouchers) == 2  # i1 answers the wait, i2 is kept
        first = await waiting
        waited = loop.time() - started
        # Kept for one that comes later (after its move to the suspect queue), once.
        second = listener.vouched(_Message("i2", b"b"))
        again = listener.vouched(_Message("i2", b"b"))
        return first, second, again, waited

    first, second, again, waited = asyncio.run(scenario())
    assert (first, second, again) == (True, False, None)
    assert waited < 1


def test_with_no_voucher_in_time_a_redelivery_stays_unknown() -> None:
    async def scenario() -> tuple[bool | None, float]:
        redeliveries = Redeliveries()
        loop = asyncio.get_running_loop()
        started = loop.time()
        known = await redeliveries.wait_for_voucher(_Message("i1", b"a"), 0.05)
        return known, loop.time() - started

    known, waited = asyncio.run(scenario())
    assert known is None and waited >= 0.05


def test_a_malformed_voucher_is_skipped_and_the_rest_taken() -> None:
    redeliveries = Redeliveries()
    digest = b"\x00" * 16
    taken = redeliveries.vouch(
        [["i1", digest, True], ["i2", "not bytes", True], ["i3"], "junk", [3, digest, True],
         ["i4", digest, "yes"], [None, digest, False]]
    )
    assert taken == 2
    assert redeliveries.vouch("not a list") == 0


def test_a_worker_takes_other_workers_vouchers_and_skips_its_own() -> None:
    """vouching.Vouching.take: what the worker's control dispatcher hands it."""
    from asyncinvoke.vouching import Vouching

    teller = Redeliveries()
    closed = _Channel(is_closed=True)
    teller.ended(_Message("i1", b"a", closed), settled=True)
    vouchers = teller.to_tell()
    listener = Redeliveries()
    vouching = Vouching(listener, broker=None, exchange="ns.control")  # type: ignore[arg-type]
    vouching.take({"vouch": vouchers, "from": vouching.sender})  # its own, come back
    assert listener.vouched(_Message("i1", b"a")) is None
    vouching.take({"vouch": vouchers, "from": "another worker"})
    assert listener.vouched(_Message("i1", b"a")) is True
