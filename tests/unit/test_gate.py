"""The gate that runs suspects alone."""

from __future__ import annotations

import asyncio

from asyncinvoke.gate import Gate


async def test_shared_entries_run_side_by_side() -> None:
    gate = Gate()
    inside = 0
    most = 0

    async def shared() -> None:
        nonlocal inside, most
        async with gate.shared():
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.wait_for(asyncio.gather(*(shared() for _ in range(10))), 5)
    assert most == 10


async def test_an_exclusive_entry_waits_for_shared_ones_and_runs_alone() -> None:
    gate = Gate()
    log: list[str] = []

    async def shared(name: str, seconds: float) -> None:
        async with gate.shared():
            log.append(f"{name} in")
            await asyncio.sleep(seconds)
            log.append(f"{name} out")

    async def exclusive() -> None:
        async with gate.exclusive():
            log.append("x in")
            await asyncio.sleep(0.02)
            log.append("x out")

    first = asyncio.create_task(shared("a", 0.05))
    await asyncio.sleep(0.01)
    suspect = asyncio.create_task(exclusive())
    await asyncio.sleep(0.01)
    # Arrives while the suspect waits: it must not overtake it.
    late = asyncio.create_task(shared("b", 0.01))
    await asyncio.wait_for(asyncio.gather(first, suspect, late), 5)
    assert log == ["a in", "a out", "x in", "x out", "b in", "b out"]


async def test_exclusive_entries_run_one_at_a_time() -> None:
    gate = Gate()
    inside = 0
    most = 0

    async def exclusive() -> None:
        nonlocal inside, most
        async with gate.exclusive():
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.005)
            inside -= 1

    await asyncio.wait_for(asyncio.gather(*(exclusive() for _ in range(5))), 5)
    assert most == 1
