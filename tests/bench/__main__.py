"""``python -m tests.bench [PART ...] [--n N] [--runs R]``: run the parts, print one table.

Parts: e2e (one worker draining N no-op invocations, against a bare aio-pika
consumer) and producer (Client.invoke latency and Client.invoke_many throughput,
against bare aio-pika publishes with confirms). Default: every part.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tests.bench import bench_e2e, bench_producer
from tests.bench.common import LOADS, Row

PARTS = ("e2e", "producer")
DEFAULT_N = 50_000
DEFAULT_RUNS = 2
DEFAULT_LATENCY_N = 2_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="asyncinvoke side by side with bare aio-pika; prints one table.",
    )
    parser.add_argument(
        "parts", nargs="*", metavar="PART", help=f"{', '.join(PARTS)} (default: all)"
    )
    parser.add_argument(
        "--n", type=int, default=DEFAULT_N, help=f"messages per run (default {DEFAULT_N:,})"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=DEFAULT_RUNS,
        help=f"runs of each side; the best is shown (default {DEFAULT_RUNS})",
    )
    parser.add_argument(
        "--latency-n",
        type=int,
        default=DEFAULT_LATENCY_N,
        help=f"sequential invokes for the latency figures (default {DEFAULT_LATENCY_N:,})",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="e2e: record the consumers of the first run with py-spy (pip install py-spy) "
        "into FILE-bare, FILE-async, FILE-sync (raw collapsed stacks; read them with "
        "python -m tests.bench.profile_report); sampling slows that run down",
    )
    args = parser.parse_args(argv)
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    if args.n < 2 or args.runs < 1 or args.latency_n < 2:
        parser.error("--n and --latency-n must be at least 2, --runs at least 1")
    args.parts = list(dict.fromkeys(args.parts)) or list(PARTS)
    return args


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "msg/s":
        return f"{value:,.0f}"
    return f"{value:.0f}" if unit == "µs" else f"{value:.3f}"


def _runs(values: list[float], unit: str) -> str:
    return " / ".join(_figure(value, unit) for value in values) or "-"


def table(rows: list[Row], args: argparse.Namespace) -> Table:
    result = Table(
        title=f"asyncinvoke vs bare aio-pika (N={args.n:,}, best of {args.runs} runs)",
        title_justify="left",
    )
    result.add_column("part")
    result.add_column("measure")
    result.add_column("unit")
    result.add_column("asyncinvoke", justify="right")
    result.add_column("bare aio-pika", justify="right")
    result.add_column("ours/bare", justify="right")
    result.add_column("target", justify="right")
    result.add_column("runs: ours | bare", justify="right")
    for row in rows:
        ratio = row.ratio
        ratio_text = "-" if ratio is None else f"{ratio:.2f}x"
        if row.meets_target is not None:
            style = "green" if row.meets_target else "bold red"
            ratio_text = f"[{style}]{ratio_text}[/]"
        target = "-" if row.target is None else f">= {row.target:.1f}x"
        result.add_row(
            row.part,
            row.measure,
            row.unit,
            _figure(row.best(row.ours), row.unit),
            _figure(row.best(row.bare), row.unit),
            ratio_text,
            target,
            f"{_runs(row.ours, row.unit)} | {_runs(row.bare, row.unit)}",
        )
    return result


async def run(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    for part in args.parts:
        print(f"{part}:", file=sys.stderr, flush=True)
        if part == "e2e":
            rows += await bench_e2e.run(args.n, args.runs, args.profile)
        elif part == "producer":
            rows += await bench_producer.run(args.n, args.runs, args.latency_n)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rows = asyncio.run(run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    Console(width=160).print(table(rows, args))
    if LOADS:
        print(
            f"1-minute load average at the start of each run: {min(LOADS):.2f} .. "
            f"{max(LOADS):.2f} ({os.cpu_count()} CPUs; the machine is shared)"
        )
    print(
        "msg/s: higher is better. ms and µs: lower is better (ours/bare > 1: ours costs more). "
        "CPU: the consumer process's user+sys time per message while draining.",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
