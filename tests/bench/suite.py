"""The whole benchmark suite in one run, summed up in one table (``make bench``).

    .venv/bin/python -m tests.bench.suite [--quick] [--runs N] [--markdown FILE]

Runs, one after the other, on the same broker (the peers part twice by default, the best
of each shown):

1. end-to-end drain of no-op invocations by one worker process, against bare aio-pika and
   bare aiormq consume-and-ack, Dramatiq, Celery and taskiq-aio-pika (``bench_peers``);
5. task-mode throughput on SQLite, and 6. publish-to-start latency at a fixed moderate
   rate, in the same ``bench_peers`` run;
2. the producer: ``invoke`` latency and ``invoke_many`` throughput against bare aio-pika
   publishes with confirms (``bench_producer``);
3. delay lateness and 4. worker memory with 100,000 pending delays, against Celery and
   Dramatiq (``bench_delay``);
7. the blocking ``SyncClient``: ``invoke`` latency and 8-thread throughput against the
   async ``Client`` (``bench_sync_client``).

Each part's detailed table is printed as it comes; the summary with every target and its
verdict comes last. Each part also runs alone: ``python -m tests.bench.bench_peers``,
``python -m tests.bench producer``, ``python -m tests.bench.bench_delay``. ``--quick``
runs small sizes (a smoke test of the whole suite, about 4 minutes; its figures are not
the ones to record). ``--markdown FILE`` also writes the summary as a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tests.bench import bench_delay, bench_peers, bench_producer, bench_sync_client
from tests.bench.bench_delay import LATENESS_TARGET_MS
from tests.bench.bench_peers import TASK_MODE_TARGET, Measure
from tests.bench.common import LOADS, Row, say

E2E_BARE_TARGET = 0.8  # ours / bare aio-pika consume-and-ack
E2E_PEER_TARGET = 2.0  # ours / the fastest peer
INVOKE_MANY_TARGET = 0.8  # ours / bare aio-pika publish with confirms
MEMORY_TARGET_MB = 10.0
PEERS = ("dramatiq", "celery", "taskiq")
COLUMNS = ("ours", "bare", "aiormq", "dramatiq", "celery", "taskiq")

SIZES = {  # full, quick
    "peers_n": (20_000, 3_000),
    "peers_seconds": (10.0, 3.0),
    "producer_n": (30_000, 3_000),
    "producer_runs": (2, 1),
    "latency_n": (2_000, 300),
    "delay_n": (1_000, 100),
    "pending": (100_000, 10_000),
    "sync_n": (20_000, 2_000),
    "sync_latency_n": (2_000, 300),
}


@dataclass
class Line:
    part: str
    measure: str
    cells: dict[str, str] = field(default_factory=dict)  # by column key
    ratio: str = "-"
    target: str = "-"
    met: bool | None = None  # None: no target, or not measured

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "-"}[self.met]


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


# -- from each part's results to summary lines ---------------------------------------------


def peer_lines(measures: dict[str, Measure], rate: float) -> list[Line]:
    def rate_of(key: str) -> float | None:
        measure = measures.get(key)
        return measure.rate if measure else None

    ours = rate_of("ours")
    drain = Line("1 e2e", "drain, 1 worker process (tasks/s)")
    for key in COLUMNS:
        drain.cells[key] = _n(rate_of(key)) if key in measures else "-"
    bare = rate_of("bare")
    if ours and bare:
        drain.ratio = f"{ours / bare:.2f}x bare aio-pika"
        drain.met = ours / bare >= E2E_BARE_TARGET
    drain.target = f">= {E2E_BARE_TARGET}x bare aio-pika"

    versus = Line("1 e2e", "ours ÷ fastest peer")
    peers = {key: rate_of(key) for key in PEERS}
    measured = {key: value for key, value in peers.items() if value}
    for key, value in measured.items():
        if ours:
            versus.cells[key] = f"{ours / value:.2f}x"
    if ours and measured:
        fastest = max(measured, key=lambda key: measured[key])
        ratio = ours / measured[fastest]
        versus.ratio = f"{ratio:.2f}x {measures[fastest].name.split()[0]}"
        versus.met = ratio >= E2E_PEER_TARGET
    aiormq = rate_of("aiormq")
    if aiormq and measured:
        versus.cells["aiormq"] = f"{aiormq / max(measured.values()):.2f}x"
    versus.target = f">= {E2E_PEER_TARGET:g}x fastest peer"

    task = Line("5 task mode", "SQLite store (tasks/s)")
    task_rate = rate_of("task")
    task.cells["ours"] = _n(task_rate)
    if task_rate:
        task.ratio = f"{task_rate / ours:.2f} of no task mode" if ours else "-"
        task.met = task_rate >= TASK_MODE_TARGET
    task.target = f">= {TASK_MODE_TARGET:,.0f}/s"

    latency = Line("6 latency", f"publish → start at {rate:g}/s, p50 / p99 (ms)")
    for key in ("ours", *PEERS):
        measure = measures.get(key)
        if measure is not None and measure.latencies:
            latency.cells[key] = f"{_n(measure.latency(50), 1)} / {_n(measure.latency(99), 1)}"
    return [drain, versus, task, latency]


def producer_lines(rows: list[Row]) -> list[Line]:
    p50, p99, many = rows
    latency = Line("2 producer", "invoke latency p50 / p99 (ms)")

    def pair(values: tuple[float | None, float | None]) -> str:
        return " / ".join(_n(value, 2) for value in values)

    latency.cells["ours"] = pair((p50.best(p50.ours), p99.best(p99.ours)))
    latency.cells["bare"] = pair((p50.best(p50.bare), p99.best(p99.bare)))
    if p50.ratio is not None and p99.ratio is not None:
        latency.ratio = f"{p50.ratio:.2f}x / {p99.ratio:.2f}x bare"
    throughput = Line("2 producer", "invoke_many, 1000 in flight (msg/s)")
    throughput.cells["ours"] = _n(many.best(many.ours))
    throughput.cells["bare"] = _n(many.best(many.bare))
    if many.ratio is not None:
        throughput.ratio = f"{many.ratio:.2f}x bare aio-pika"
        throughput.met = many.ratio >= INVOKE_MANY_TARGET
    throughput.target = f">= {INVOKE_MANY_TARGET}x bare aio-pika"
    return [latency, throughput]


def sync_client_lines(results: bench_sync_client.Results) -> list[Line]:
    best = results.summary()
    latency = Line("7 sync client", "SyncClient.invoke p50 / p99 (ms)")
    latency.cells["ours"] = f"{best['sync_p50']:.2f} / {best['sync_p99']:.2f}"
    latency.ratio = (
        f"{best['sync_p50'] / best['async_p50']:.2f}x / {best['sync_p99'] / best['async_p99']:.2f}x"
        f" async ({best['async_p50']:.2f} / {best['async_p99']:.2f})"
    )
    threads = Line("7 sync client", f"SyncClient, {bench_sync_client.THREADS} threads (msg/s)")
    threads.cells["ours"] = _n(best["sync_threads"])
    threads.ratio = (
        f"{best['sync_threads'] / best['async_many']:.2f}x async invoke_many "
        f"({_n(best['async_many'])})"
    )
    return [latency, threads]


def delay_lines(results: bench_delay.Results, pending: int) -> list[Line]:
    lines: list[Line] = []
    for result in results.lateness:
        line = Line("3 delays", f"lateness p99, {result.mode} (ms)")
        line.cells["ours"] = f"{result.p99:.0f} (max {result.max:.0f}, early {result.early})"
        line.target = f"<= {LATENESS_TARGET_MS:g} ms, never early"
        line.met = (
            result.p99 <= LATENESS_TARGET_MS and result.early == 0 and result.received == result.n
        )
        lines.append(line)
    if results.lateness_error:
        lines.append(Line("3 delays", "lateness", {"ours": "failed"}, results.lateness_error))
    memory = Line("4 memory", f"worker RSS growth, {pending:,} pending delays (MB)")
    keys = {"asyncinvoke": "ours", "Celery": "celery", "Dramatiq": "dramatiq"}
    for result in results.memory:
        key = keys.get(result.name.split()[0])
        growth = result.growth_mb
        if key is None:
            continue
        memory.cells[key] = "failed" if growth is None else f"{growth:+.1f}"
        if key == "ours" and growth is not None:
            memory.met = growth < MEMORY_TARGET_MB
            memory.ratio = "held in the broker" if not result.held else f"{result.held:,} held"
    memory.cells["taskiq"] = "n/a"  # its delays are per-message TTLs in the broker
    memory.target = f"< {MEMORY_TARGET_MB:g} MB"
    lines.append(memory)
    return lines


# -- output ----------------------------------------------------------------------------------


def headers() -> dict[str, str]:
    names = bench_peers.names()
    return {key: names[key] if key != "ours" else "asyncinvoke" for key in COLUMNS}


def rich_table(lines: list[Line], titles: dict[str, str], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("part")
    table.add_column("measure")
    for key in COLUMNS:
        table.add_column(titles[key], justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target")
    table.add_column("verdict")
    for line in lines:
        style = {True: "green", False: "bold red", None: ""}[line.met]
        verdict = f"[{style}]{line.verdict}[/]" if style else line.verdict
        table.add_row(
            line.part,
            line.measure,
            *(line.cells.get(key, "-") for key in COLUMNS),
            line.ratio,
            line.target,
            verdict,
        )
    return table


def markdown_table(lines: list[Line], titles: dict[str, str]) -> str:
    head = ["part", "measure", *(titles[key] for key in COLUMNS), "ratio", "target", "verdict"]
    rows = [
        "| " + " | ".join(head) + " |",
        "|---|---|" + "---:|" * len(COLUMNS) + "---|---|---|",
    ]
    for line in lines:
        verdict = f"**{line.verdict}**" if line.met is False else line.verdict
        cells = [line.part, line.measure, *(line.cells.get(k, "-") for k in COLUMNS)]
        rows.append("| " + " | ".join([*cells, line.ratio, line.target, verdict]) + " |")
    return "\n".join(rows)


def machine() -> str:
    broker = "RabbitMQ ?"
    try:
        status = subprocess.run(
            ["rabbitmqctl", "-q", "version"], capture_output=True, text=True, timeout=30
        )
        if status.returncode == 0 and status.stdout.strip():
            broker = f"RabbitMQ {status.stdout.strip()}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} CPUs, {memory_gib:.0f} GiB, {platform.machine()}, "
        f"Python {platform.python_version()}, {broker} on the same host"
    )


# -- the run ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.suite",
        description="Every benchmark part in one run, summed up in one table.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="runs of the peers part, the best shown (default 2; 1 with --quick): one "
        "drain of 20,000 lasts seconds, and a shared machine's hiccup can halve it",
    )
    parser.add_argument(
        "--markdown", type=Path, metavar="FILE", help="also write the summary as Markdown"
    )
    return parser.parse_args(argv)


async def run(args: argparse.Namespace, console: Console) -> list[Line]:
    size = {key: value[1 if args.quick else 0] for key, value in SIZES.items()}
    lines: list[Line] = []

    say("part 1, 5, 6: throughput against the peers, task mode, latency (bench_peers)")
    runs = args.runs or (1 if args.quick else 2)
    peers_args = bench_peers.parse_args(
        ["--n", str(size["peers_n"]), "--seconds", str(size["peers_seconds"]), "--runs", str(runs)]
    )
    measures = await bench_peers.run(peers_args)
    console.print(bench_peers.table(measures, peers_args), markup=False, highlight=False)
    lines += peer_lines(measures, peers_args.rate)

    say("part 2: producer (bench_producer)")
    rows = await bench_producer.run(size["producer_n"], size["producer_runs"], size["latency_n"])
    lines += producer_lines(rows)

    say("part 3, 4: delay lateness and memory (bench_delay)")
    delay_args = bench_delay.parse_args(
        ["--n", str(size["delay_n"]), "--pending", str(size["pending"])]
    )
    results = await bench_delay.measure(delay_args)
    console.print(
        bench_delay.lateness_table(
            results.lateness, results.lateness_error, delay_args.concurrency
        ),
        markup=False,
        highlight=False,
    )
    console.print(bench_delay.memory_table(results.memory, size["pending"]), markup=False)
    lines += delay_lines(results, size["pending"])

    say("part 7: the blocking SyncClient against the async Client (bench_sync_client)")
    sync_results = await asyncio.to_thread(
        bench_sync_client.measure, size["sync_n"], size["sync_latency_n"], 1 if args.quick else 2
    )
    console.print(
        bench_sync_client.table(sync_results, size["sync_n"], size["sync_latency_n"]),
        markup=False,
    )
    lines += sync_client_lines(sync_results)
    return sorted(lines, key=lambda line: line.part[0])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=200)
    started = datetime.now().astimezone()
    try:
        lines = asyncio.run(run(args, console))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted", file=sys.stderr)
        return 130
    finished = datetime.now().astimezone()
    titles = headers()
    title = (
        f"asyncinvoke benchmark suite{' (quick)' if args.quick else ''}, "
        f"{started:%Y-%m-%d %H:%M} to {finished:%H:%M %Z}; {machine()}"
    )
    console.print()
    console.print(rich_table(lines, titles, title))
    if LOADS:
        console.print(
            f"1-minute load average at the start of each part: {min(LOADS):.2f} .. "
            f"{max(LOADS):.2f} (the machine is shared: read the ratios)"
        )
    if args.markdown is not None:
        args.markdown.write_text(f"{title}\n\n{markdown_table(lines, titles)}\n")
        console.print(f"summary written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
