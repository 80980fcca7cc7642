"""sync client: ``SyncClient.invoke`` against the async ``Client``, in the same run.

    .venv/bin/python -m tests.bench.bench_sync_client [--n N] [--latency-n N] [--runs R]

A fresh namespace with one function queue (declared as a worker would; no worker runs).

- Latency: ``--latency-n`` sequential ``invoke`` calls after a warm-up, p50 and p99, of
  ``Client.invoke`` (awaited on its loop) and of ``SyncClient.invoke`` (from one thread:
  each call crosses to the client's loop thread and back).
- Throughput: N invocations by 8 threads sharing one ``SyncClient`` (each thread calls
  ``invoke`` one at a time, as WSGI request threads do), against ``Client.invoke_many``
  of N (its default window, 1000 in flight): N / wall time.

The two sides alternate within each run; the best of ``--runs`` is shown.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from dataclasses import dataclass, field

import aio_pika
from rich.console import Console
from rich.table import Table

from asyncinvoke import Client, SyncClient, functions
from tests.bench.common import AMQP_URL, FUNCTION, Namespace, note_load, percentile, say

WARM_UP = 50
THREADS = 8


@dataclass
class Results:
    async_latency: list[tuple[float, float]] = field(default_factory=list)  # (p50, p99) ms
    sync_latency: list[tuple[float, float]] = field(default_factory=list)
    async_many: list[float] = field(default_factory=list)  # msg/s
    sync_threads: list[float] = field(default_factory=list)

    @staticmethod
    def best_latency(values: list[tuple[float, float]]) -> tuple[float, float]:
        return min(values)

    def summary(self) -> dict[str, float]:
        async_p50, async_p99 = self.best_latency(self.async_latency)
        sync_p50, sync_p99 = self.best_latency(self.sync_latency)
        return {
            "async_p50": async_p50,
            "async_p99": async_p99,
            "sync_p50": sync_p50,
            "sync_p99": sync_p99,
            "async_many": max(self.async_many),
            "sync_threads": max(self.sync_threads),
        }


def _p50_p99(samples: list[float]) -> tuple[float, float]:
    millis = [sample * 1000 for sample in samples]
    return percentile(millis, 50), percentile(millis, 99)


Side = tuple[tuple[float, float], float]  # (p50, p99) ms, msg/s


async def _async_side(space: Namespace, n: int, latency_n: int) -> Side:
    async with Client(settings=space.settings) as client:
        for _ in range(WARM_UP):
            await client.invoke(FUNCTION, None)
        samples = []
        for _ in range(latency_n):
            started = time.perf_counter()
            await client.invoke(FUNCTION, None)
            samples.append(time.perf_counter() - started)
        started = time.perf_counter()
        await client.invoke_many([(FUNCTION, None)] * n)
        rate = n / (time.perf_counter() - started)
    return _p50_p99(samples), rate


def _sync_side(space: Namespace, n: int, latency_n: int) -> Side:
    with SyncClient(settings=space.settings) as client:
        for _ in range(WARM_UP):
            client.invoke(FUNCTION, None)
        samples = []
        for _ in range(latency_n):
            started = time.perf_counter()
            client.invoke(FUNCTION, None)
            samples.append(time.perf_counter() - started)
        per_thread = n // THREADS
        go = threading.Event()

        def invoke_many_times() -> None:
            go.wait()
            for _ in range(per_thread):
                client.invoke(FUNCTION, None)

        threads = [threading.Thread(target=invoke_many_times) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        go.set()
        for thread in threads:
            thread.join()
        rate = per_thread * THREADS / (time.perf_counter() - started)
    return _p50_p99(samples), rate


async def _purge(space: Namespace) -> None:
    """Empty the function queue, so that each side publishes into the same short queue."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(space.names.function_queue(FUNCTION), ensure=False)
        await queue.purge()
    finally:
        await connection.close()


def measure(n: int, latency_n: int, runs: int) -> Results:
    """Both sides, alternating, ``runs`` times, on one namespace (purged between runs)."""
    results = Results()
    space = Namespace("sync-client")
    asyncio.run(space.declare([functions.FunctionSpec(FUNCTION, handler="x:y")]))
    try:
        for run in range(runs):
            note_load()
            # Each side goes first in every other run: neither always meets a warmer broker.
            sides = ["async", "sync"] if run % 2 == 0 else ["sync", "async"]
            for side in sides:
                asyncio.run(_purge(space))
                if side == "async":
                    latency, rate = asyncio.run(_async_side(space, n, latency_n))
                    results.async_latency.append(latency)
                    results.async_many.append(rate)
                    what = f"Client.invoke ... invoke_many {rate:,.0f} msg/s"
                else:
                    latency, rate = _sync_side(space, n, latency_n)
                    results.sync_latency.append(latency)
                    results.sync_threads.append(rate)
                    what = f"SyncClient.invoke ... {THREADS} threads {rate:,.0f} msg/s"
                say(f"run {run + 1}: {what}; p50 {latency[0]:.3f} ms, p99 {latency[1]:.3f} ms")
    finally:
        asyncio.run(space.cleanup())
    return results


def table(results: Results, n: int, latency_n: int) -> Table:
    best = results.summary()
    out = Table(
        title=f"SyncClient against the async Client ({latency_n:,} sequential calls; "
        f"{n:,} invocations for throughput; best of {len(results.async_many)})",
        title_justify="left",
    )
    for column in ("measure", "SyncClient", "async Client", "SyncClient ÷ async"):
        out.add_column(column, justify="left" if column == "measure" else "right")
    out.add_row(
        "invoke latency p50 (ms)",
        f"{best['sync_p50']:.3f}",
        f"{best['async_p50']:.3f}",
        f"{best['sync_p50'] / best['async_p50']:.2f}x",
    )
    out.add_row(
        "invoke latency p99 (ms)",
        f"{best['sync_p99']:.3f}",
        f"{best['async_p99']:.3f}",
        f"{best['sync_p99'] / best['async_p99']:.2f}x",
    )
    out.add_row(
        f"throughput (msg/s): SyncClient from {THREADS} threads / async invoke_many",
        f"{best['sync_threads']:,.0f}",
        f"{best['async_many']:,.0f}",
        f"{best['sync_threads'] / best['async_many']:.2f}x",
    )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_sync_client")
    parser.add_argument("--n", type=int, default=20_000, help="invocations for throughput")
    parser.add_argument("--latency-n", type=int, default=2_000, help="sequential calls")
    parser.add_argument("--runs", type=int, default=2, help="runs, the best shown")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = measure(args.n, args.latency_n, args.runs)
    Console(width=200).print(table(results, args.n, args.latency_n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
