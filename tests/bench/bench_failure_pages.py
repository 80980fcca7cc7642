"""``python -m tests.bench.bench_failure_pages [--records N] [--rounds N]``: one console
failures page, returned once its browse has ended (as before) against returned once its
records are read (the browse ends after, in the background).

Fills ``{ns}.failed`` with N records (worker-shaped, as bench_dlq does), then reads the
pages at offsets 0, 25 and 100 through ``console.failures.FailureQueue`` in alternating
rounds: "ended" times the page and the end of its browse, "read" times the page alone
(the end is waited for, untimed, before the next page, as the next request does).
Against a node of its own: ``python -m tests.bench.private tests.bench.bench_failure_pages``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from asyncinvoke.console.failures import FailureQueue
from asyncinvoke.settings import Settings
from tests.bench.bench_dlq import cleanup, fill
from tests.bench.common import AMQP_URL, Namespace, say

OFFSETS = (0, 25, 100)


async def _page(failures: FailureQueue, offset: int, *, until_ended: bool) -> float:
    await failures.settled()
    started = time.perf_counter()
    await failures.page(offset, None)  # no depth: never a page read before
    if until_ended:
        await failures.settled()
    return (time.perf_counter() - started) * 1000


async def main(records: int, rounds: int) -> None:
    space = Namespace("failure-pages")
    try:
        say(f"{records:,} records into {space.names.failed}")
        await fill(space.names, records)
        failures = FailureQueue(Settings(amqp_url=AMQP_URL, namespace=space.ns))
        took: dict[tuple[str, int], list[float]] = {}
        for number in range(rounds):
            say(f"round {number + 1} of {rounds}")
            for mode in ("ended", "read"):
                for offset in OFFSETS:
                    took.setdefault((mode, offset), []).append(
                        await _page(failures, offset, until_ended=mode == "ended")
                    )
        await failures.close()
    finally:
        await cleanup(space.names)
    print(f"\n{records:,} records; ms per failures page, {rounds} alternating rounds\n")
    print("| records | browse ended first: median (slowest) | page first: median (slowest) "
          "| ratio of medians |")
    print("|---|---:|---:|---:|")
    for offset in OFFSETS:
        ended, read = took[("ended", offset)], took[("read", offset)]
        print(
            f"| {offset + 1}-{offset + 25} | {statistics.median(ended):.1f} ({max(ended):.1f}) "
            f"| {statistics.median(read):.1f} ({max(read):.1f}) "
            f"| {statistics.median(ended) / statistics.median(read):.2f}x |"
        )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


def run() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_failure_pages")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=10)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.records, arguments.rounds))


if __name__ == "__main__":
    run()
