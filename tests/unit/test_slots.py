"""A function's slots: the cap holds, and a new limit applies to attempts not yet started."""

from __future__ import annotations

import asyncio

import pytest

from asyncinvoke.slots import Slots


async def _run(slots: Slots, peak: list[int], release: asyncio.Event) -> None:
    async with slots:
        peak.append(slots.running)
        await release.wait()


async def test_no_more_than_the_limit_run_at_once_and_raising_it_lets_waiters_in() -> None:
    slots, peak, release = Slots(2), [], asyncio.Event()
    tasks = [asyncio.create_task(_run(slots, peak, release)) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert slots.running == 2
    slots.resize(4)
    await asyncio.sleep(0.01)
    assert slots.running == 4
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert max(peak) == 4 and slots.running == 0


async def test_lowering_the_limit_stops_no_running_attempt_but_holds_new_ones() -> None:
    slots, peak, release = Slots(3), [], asyncio.Event()
    first = [asyncio.create_task(_run(slots, peak, release)) for _ in range(3)]
    await asyncio.sleep(0.01)
    slots.resize(1)
    second = asyncio.create_task(_run(slots, [], asyncio.Event()))
    await asyncio.sleep(0.01)
    assert slots.running == 3 and not second.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(*first), 5)
    await asyncio.sleep(0.01)
    assert slots.running == 1  # the waiter got in alone
    second.cancel()


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    slots, release = Slots(1), asyncio.Event()
    holder = asyncio.create_task(_run(slots, [], release))
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(_run(slots, [], asyncio.Event()))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await holder
    assert slots.running == 0
    async with slots:
        assert slots.running == 1


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Slots(0)
