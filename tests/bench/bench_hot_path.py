"""The worker's own CPU per no-op delivery, without a broker: the pipeline alone.

    .venv/bin/python -m tests.bench.bench_hot_path [--n 40000] [--rounds 3]

Deliveries as the frame filter makes them (``FastDelivery``) go through
``Pipeline.consumer`` exactly as a worker runs them: a task each, the decode, admit,
runner, settle, the attempt's log line (JSON, to /dev/null) and metrics, and the
batched acks, written to a stand-in channel (the one thing not real here: no broker, no
socket). 200 deliveries a loop turn, as with a full prefetch. ``time.process_time()``
over the run, so the machine's load moves it little.

Variants, alternating in each round, each in a process of its own: as shipped; on
uvloop; without the metrics (``Journal._observe`` a no-op); without the attempt's log
line (``journal.hot_info`` a no-op). The last two say what sampling or batching either
could save at most; the product keeps both.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
from typing import Any

VARIANTS = ("shipped", "uvloop", "no-metrics", "no-log-line")
BATCH = 200


class _Connection:
    is_closed = False

    def __init__(self) -> None:
        self.write_queue: asyncio.Queue[Any] = asyncio.Queue()


class _Channel:
    """What acks touch of an aiormq channel."""

    is_closed = False
    number = 1

    def __init__(self) -> None:
        self.connection = _Connection()

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        return None


async def _noop(event: Any, context: Any) -> None:
    return None


async def _measure(n: int) -> float:
    from asyncinvoke import contract, observability
    from asyncinvoke.acks import Acks
    from asyncinvoke.clock import now_ms
    from asyncinvoke.frame_filter import FastDelivery
    from asyncinvoke.functions import FunctionSpec
    from asyncinvoke.journal import Journal
    from asyncinvoke.metrics import Metrics
    from asyncinvoke.pipeline import Function, Pipeline
    from asyncinvoke.runners import PythonRunner, Watchdog
    from asyncinvoke.settings import Settings
    from asyncinvoke.slots import Slots
    from asyncinvoke.tasks.mode import NO_TASKS
    from asyncinvoke.topology import Names

    observability.configure_logging("json")
    writer = observability._json_writer
    assert writer is not None
    devnull = open(os.devnull, "wb")  # noqa: SIM115 - lives as long as the process
    writer._write = devnull.write
    writer._flush = devnull.flush
    spec = FunctionSpec("noop", handler="bench:noop", concurrency=BATCH, timeout_s=60)
    pipeline = Pipeline(
        Settings(), Names("bench"), None, None, NO_TASKS, Journal(Metrics(["noop"])),  # type: ignore[arg-type]
        Acks(), None,  # type: ignore[arg-type]
    )  # fmt: skip
    function = Function(spec, PythonRunner(spec, _noop, Watchdog()), Slots(BATCH))
    callback = pipeline.consumer(function, "bench.fn.noop")
    body = contract.pack(
        {"v": 1, "id": "i" + "a" * 31, "fn": "noop", "payload": 0, "created_at": now_ms()}
    )
    loop = asyncio.get_running_loop()

    async def run(count: int) -> None:
        channel = _Channel()
        tag = 0
        for _ in range(count // BATCH):
            tasks = []
            for _ in range(BATCH):
                tag += 1
                delivery = FastDelivery()
                delivery.body, delivery.channel, delivery.delivery_tag = body, channel, tag
                delivery.redelivered, delivery.routing_key = False, "noop"
                delivery.message_id, delivery.reply_to, delivery.correlation_id = "m", None, None
                tasks.append(loop.create_task(callback(delivery)))
            await asyncio.wait(tasks)
            await asyncio.sleep(0)  # the turn's acks go out

    await run(2000)  # warm up: metric children, caches
    gc.freeze()
    started = time.process_time()
    await run(n)
    return (time.process_time() - started) / n * 1e6


def _child(variant: str, n: int) -> None:
    if variant == "no-metrics":
        from asyncinvoke.journal import Journal

        Journal._observe = lambda self, *args: None  # type: ignore[method-assign]
    if variant == "no-log-line":
        from asyncinvoke import journal

        journal.hot_info = lambda *args: None  # type: ignore[assignment]
    if variant == "uvloop":
        import uvloop

        print(f"{uvloop.run(_measure(n)):.2f}")
        return
    print(f"{asyncio.run(_measure(n)):.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_hot_path")
    parser.add_argument("--n", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.n)
        return 0
    results: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for index in range(args.rounds):
        order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            out = subprocess.run(
                [sys.executable, "-m", "tests.bench.bench_hot_path", "--child", variant,
                 "--n", str(args.n)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            results[variant].append(float(out.stdout.strip().splitlines()[-1]))
    print(f"bench_hot_path: the pipeline alone, N = {args.n:,} x {args.rounds} rounds, "
          f"load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print("| variant | CPU µs per delivery (median) | every round |")
    print("|---|---:|---|")
    for variant, values in results.items():
        rounds = " / ".join(f"{value:.1f}" for value in values)
        print(f"| {variant} | {statistics.median(values):.1f} | {rounds} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
