"""The ``publish`` command the peer modules share: arguments and pacing."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
QUEUE = os.environ.get("BENCH_QUEUE", "bench-peer")
PREFETCH = int(os.environ.get("BENCH_PREFETCH", "200"))
TASK = os.environ.get("BENCH_TASK", "noop")  # or "burn": BENCH_BURN_MS of CPU (probe.burn)


def parse(prog: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    publish = sub.add_parser("publish", help="hand over tasks with this peer's producer API")
    publish.add_argument("--n", type=int, default=1)
    publish.add_argument(
        "--rate", type=float, default=0.0, help="tasks per second; 0: flat out (throughput)"
    )
    publish.add_argument("--delay-s", type=float, default=0.0, help="delay each task this long")
    publish.add_argument("--warm", action="store_true", help="one warm-up task (sent_ns -1)")
    args = parser.parse_args(argv)
    if args.warm:
        args.n = 1
    return args


def argument(args: argparse.Namespace) -> int:
    """The task's one argument (see probe.hit): -1 warm-up, send time when paced, else 0."""
    if args.warm:
        return -1
    return time.time_ns() if args.rate > 0 else 0


def paced(n: int, rate: float) -> Iterator[int]:
    """Yield 0..n-1, each no earlier than its slot at ``rate`` per second (0: at once)."""
    started = time.perf_counter()
    for index in range(n):
        if rate > 0:
            wait = started + index / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        yield index


def report(n: int, started: float) -> None:
    print(json.dumps({"published": n, "seconds": time.perf_counter() - started}), flush=True)
    sys.stdout.flush()
