"""The process executor's pipeline on its own: how long a handler process idles between
two tasks, with one attempt per process at a time (depth 1, as before) or the next one
queued behind it (depth 2, the default). No broker: the executor is driven as the
worker drives it (one task per attempt, as many as its slots), so only the hand-over
between the worker process and its handler processes is measured.

    .venv/bin/python -m tests.bench.bench_pipeline [--n 2000] [--rounds 3]

The handler burns 2 ms of CPU and returns how long its process waited since it
returned the task before (the first task of each process is left out). Rounds alternate
the depths. On a loaded machine the rate is the CPU the machine leaves over; the idle
gap is what the pipeline removes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

from asyncinvoke.contract import Envelope
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.process_executor import ProcessExecutor
from asyncinvoke.runners import Watchdog, make_context
from tests.bench.common import LOADS, note_load, say
from tests.bench.peers import probe

_returned: float | None = None


def burn(event: Any, context: Any) -> float | None:
    """2 ms of CPU; the wait since this process returned its previous task (ms)."""
    global _returned
    began = time.perf_counter()
    gap = None if _returned is None else (began - _returned) * 1000
    probe.burn()
    _returned = time.perf_counter()
    return gap


async def one_round(depth: int, n: int) -> tuple[float, float, float]:
    """(tasks/s, median idle gap ms, the worker process's CPU µs per attempt)."""
    spec = FunctionSpec("burn", handler="tests.bench.bench_pipeline:burn", executor="process",
                        concurrency=2, timeout_s=60)  # fmt: skip
    executor, watchdog = ProcessExecutor(spec, handler_is_async=False), Watchdog()
    executor.pool.depth = depth
    slots = asyncio.Semaphore(executor.slots)
    gaps: list[float] = []

    async def attempt(index: int) -> None:
        async with slots:
            envelope = Envelope(id=str(index), fn="burn", payload=None, created_at=0)
            outcome = await executor.run(envelope, make_context(envelope, spec), watchdog)
            assert outcome.ok, outcome
            if outcome.result is not None:
                gaps.append(outcome.result)

    try:
        await asyncio.gather(*(attempt(-i) for i in range(1, 5)))  # both processes up
        gaps.clear()
        began, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(attempt(i) for i in range(n)))
        seconds = time.perf_counter() - began
        return n / seconds, statistics.median(gaps), (time.process_time() - cpu) / n * 1e6
    finally:
        executor.close()
        watchdog.close()


async def run(args: argparse.Namespace) -> dict[int, list[tuple[float, float, float]]]:
    results: dict[int, list[tuple[float, float, float]]] = {1: [], 2: []}
    for index in range(args.rounds):
        order = [1, 2] if index % 2 == 0 else [2, 1]
        say(f"round {index + 1}/{args.rounds}: depths {order}; load {note_load():.2f}")
        for depth in order:
            rate, gap, cpu = await one_round(depth, args.n)
            say(f"depth {depth}: {rate:,.0f}/s, handler idle between tasks {gap:.2f} ms "
                f"(median), worker CPU {cpu:.0f} µs/attempt")  # fmt: skip
            results[depth].append((rate, gap, cpu))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_pipeline")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    print("| depth | tasks/s (median) | handler idle between tasks, ms (median) "
          "| worker CPU µs/attempt | every round: tasks/s, idle ms |")  # fmt: skip
    print("|---|---:|---:|---:|---|")
    for depth, rows in results.items():
        rounds = " / ".join(f"{rate:,.0f}, {gap:.2f}" for rate, gap, _ in rows)
        print(
            f"| {depth} | {statistics.median(r[0] for r in rows):,.0f} "
            f"| {statistics.median(r[1] for r in rows):.2f} "
            f"| {statistics.median(r[2] for r in rows):.0f} | {rounds} |"
        )
    if LOADS:
        print(f"1-minute load at the start of each round: {min(LOADS):.2f} .. {max(LOADS):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
