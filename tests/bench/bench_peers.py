"""peers: asyncinvoke side by side with Dramatiq, Celery and taskiq-aio-pika, in one run.

    .venv/bin/python -m tests.bench.bench_peers [--n 20000] [--runs 1] [--rate 500]
        [--seconds 10] [--only ours,task,dramatiq,celery,taskiq,bare,aiormq]

Throughput: for each system, N no-op tasks are published first with the system's own
producer API (persistent messages), then ONE worker process is started and drains them.
Every system's task calls ``tests.bench.peers.probe.hit`` at its start, an in-process
counter that writes the times of the first and the N-th start to a file: rate =
(N - 1) / (last - first), measured the same way for all. Systems and settings:

- asyncinvoke: ``python -m asyncinvoke worker``, async no-op handler, concurrency 200
  (prefetch 200), quorum queue, ack after the handler and its follow-ups; logs one JSON line
  per attempt (its default).
- asyncinvoke, task mode: the same with ``task_mode = true`` and the SQLite store
  (``ASYNCINVOKE_TASK_STORE=sqlite:///<tmp>/tasks.db``); published with invoke_many, so the
  worker creates each task record (ensure), claims it, and records how it ended.
- Dramatiq: RabbitmqBroker, ``--processes 1 --threads 8``, prefetch 200
  (``dramatiq_queue_prefetch=200``; its default, threads x 2 = 16, drained ~5,300/s against
  ~7,400/s here), classic queue, acks after the actor ran, default middleware.
- Celery: py-amqp, ``--pool=solo``, ``task_acks_late=True``, prefetch multiplier 200 (so
  prefetch 200; 4, the default, drained ~4,500/s against ~6,500/s), classic queue, log level
  WARNING (the worker's default).
- taskiq-aio-pika: ``--workers 1 --ack-type when_executed --max-async-tasks 200``, qos 200
  (its default, 10, drained ~3,800/s against ~4,600/s), quorum queue, async no-op; logs a
  line per task at INFO (its default).
- bare aio-pika: N persistent messages of our envelope's size in a quorum queue, drained by
  ``tests.bench.bare_consume`` (consume + ack, prefetch 200): the ceiling of the library
  asyncinvoke is built on.
- bare aiormq: the same, consumed through aiormq (the protocol layer under aio-pika) with no
  message objects: what an asyncio consumer in Python can do here without aio-pika.

Latency: each system's worker is started and warmed up (one task run), then tasks are
published at a fixed rate (default 500/s for 10 s) carrying ``time.time_ns()`` taken just
before the publish; the task's start minus that time is the latency (p50, p99, max).

Everything a run declares (our namespace; the peers' queues and exchanges by name) is
deleted afterwards, and the worker's process group is killed, on every exit path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

import aio_pika

from tests.bench.common import (
    AMQP_URL,
    LOADS,
    QUORUM,
    ROOT,
    Namespace,
    bare_publish_many,
    envelope_size,
    note_load,
    percentile,
    say,
    stop_process,
)
from tests.bench.peers.runner import (
    CELERY,
    DRAMATIQ,
    PEERS,
    TASKIQ,
    OursRun,
    Peer,
    PeerRun,
    Run,
    cancel_on_sigterm,
)

DEFAULT_N = 20_000
DEFAULT_RATE = 500.0
DEFAULT_SECONDS = 10.0
TASK_MODE_TARGET = 2_000.0
T = TypeVar("T")
SYSTEMS = ("ours", "task", "dramatiq", "celery", "taskiq", "bare", "aiormq")
OURS_CONCURRENCY = 200
PEER_SETTINGS: dict[str, dict[str, int]] = {
    # Dramatiq reads its prefetch from the environment (default: threads x 2 = 16).
    "dramatiq": {"threads": 8, "env": {"dramatiq_queue_prefetch": "200"}},
    "celery": {"prefetch": 200},
    "taskiq": {"prefetch": 200, "max_async_tasks": 200},
}
SETTINGS_TEXT = {
    "ours": f"1 process, async handler, concurrency {OURS_CONCURRENCY}, quorum queue",
    "task": "as above + task_mode = true, SQLite store",
    "dramatiq": "1 process x 8 threads, prefetch 200, classic queue",
    "celery": "solo pool, acks_late, prefetch 200, classic queue",
    "taskiq": "1 process, max-async-tasks 200, qos 200, ack when_executed, quorum queue",
    "bare": "consume + ack, prefetch 200, quorum queue",
    "aiormq": "consume + ack, prefetch 200, quorum queue",
}


def drain_timeout(n: int) -> float:
    """Generous: 200 tasks/s (a fifth of the slowest peer here), plus start-up."""
    return 90.0 + n / 200


@dataclass
class Measure:
    key: str
    name: str
    rates: list[float] = field(default_factory=list)
    latencies: list[list[float]] = field(default_factory=list)  # ms, one list per run
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        return max(self.rates) if self.rates else None

    def latency(self, p: float) -> float | None:
        """The p-th percentile of the run with the lowest median (the least disturbed)."""
        if not self.latencies:
            return None
        best = min(self.latencies, key=statistics.median)
        return max(best) if p == 100 else percentile(best, p)


# -- throughput ----------------------------------------------------------------------------


async def drain(run: Run, n: int) -> float:
    """Publish n, start the worker, wait for the n-th task; the rate."""
    started = time.perf_counter()
    await run.publish(n)
    if isinstance(run, PeerRun):
        depth = await run.wait_depth(run.queue, n)
        if depth < n:
            say(f"{run.label}: only {depth} of {n} in the queue after publishing")
    say(f"{run.label}: published {n} in {time.perf_counter() - started:.1f} s")
    await run.start_worker()
    result = await run.wait_result(drain_timeout(n))
    say(f"{run.label}: {result.rate:,.0f} tasks/s ({result.seconds:.2f} s)")
    return result.rate


async def drain_ours(workdir: Path, n: int, task_mode: bool) -> float:
    label = "asyncinvoke task mode" if task_mode else "asyncinvoke"
    extra = "task_mode = true\n" if task_mode else ""
    env = {}
    if task_mode:
        env["ASYNCINVOKE_TASK_STORE"] = f"sqlite:///{workdir}/tasks-{time.time_ns()}.db"
    async with OursRun(
        workdir, n, label=label, concurrency=OURS_CONCURRENCY, toml_extra=extra, env=env
    ) as run:
        assert isinstance(run, OursRun)
        await run.declare()
        return await drain(run, n)


async def drain_peer(peer: Peer, workdir: Path, n: int) -> float:
    async with PeerRun(peer, workdir, n, PEER_SETTINGS[peer.key]) as run:
        return await drain(run, n)


async def drain_bare(
    n: int, client: str = "aio-pika", details: dict[str, float] | None = None
) -> float:
    """The bare consumer's rate; ``details`` (if given) gets all it reported (cpu_us)."""
    space = Namespace("peers-bare")
    queue = space.queue_name("bare")
    consumer: asyncio.subprocess.Process | None = None
    try:
        connection = await asyncio.wait_for(aio_pika.connect(AMQP_URL), 30)
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.declare_queue(queue, durable=True, arguments=QUORUM)
            async with asyncio.timeout(60 + n / 500):
                await bare_publish_many(channel, queue, b"\x00" * envelope_size(), n)
        finally:
            await connection.close()
        timeout = drain_timeout(n)
        consumer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.bench.bare_consume",
            "--queue", queue, "--n", str(n), "--prefetch", "200", "--timeout", str(timeout),
            "--client", client,
            env=space.env(),
            cwd=str(ROOT),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(consumer.communicate(), timeout + 30)
        if consumer.returncode != 0:
            raise RuntimeError(f"bare consumer failed ({consumer.returncode}): {err.decode()}")
        reported = json.loads(out.decode().strip().splitlines()[-1])
        if details is not None:
            details.update(reported)
        rate = float(reported["rate"])
        say(f"bare {client}: {rate:,.0f} msg/s")
        return rate
    finally:
        try:
            await stop_process(consumer)
        finally:
            await space.cleanup()


# -- latency -------------------------------------------------------------------------------


async def latency(run: Run, rate: float, seconds: float) -> list[float]:
    """Start and warm up the worker, publish at ``rate`` for ``seconds``; latencies in ms."""
    n = round(rate * seconds)
    await run.start_worker()
    await run.publish(1, warm=True)
    await run.wait_warm()
    await asyncio.sleep(1.0)
    took = await run.publish(n, rate=rate)
    if took > seconds * 1.2:
        say(f"{run.label}: publishing at {rate:g}/s fell behind ({took:.1f} s for {n})")
    result = await run.wait_result(60 + seconds)
    values = result.latencies_ms
    say(
        f"{run.label}: latency p50 {percentile(values, 50):.1f} ms, "
        f"p99 {percentile(values, 99):.1f} ms, max {max(values):.1f} ms"
    )
    return values


async def latency_ours(workdir: Path, rate: float, seconds: float) -> list[float]:
    n = round(rate * seconds)
    async with OursRun(workdir, n, concurrency=OURS_CONCURRENCY) as run:
        assert isinstance(run, OursRun)
        await run.declare()
        return await latency(run, rate, seconds)


async def latency_peer(peer: Peer, workdir: Path, rate: float, seconds: float) -> list[float]:
    n = round(rate * seconds)
    async with PeerRun(peer, workdir, n, PEER_SETTINGS[peer.key]) as run:
        return await latency(run, rate, seconds)


# -- the whole ------------------------------------------------------------------------------


PEER_BY_KEY = {peer.key: peer for peer in PEERS}


def names() -> dict[str, str]:
    return {
        "ours": "asyncinvoke",
        "task": "asyncinvoke, task mode",
        "dramatiq": f"Dramatiq {DRAMATIQ.version}",
        "celery": f"Celery {CELERY.version}",
        "taskiq": f"taskiq-aio-pika {TASKIQ.version}",
        "bare": "bare aio-pika",
        "aiormq": "bare aiormq",
    }


async def guarded(
    measure: Measure, what: str, attempt: Callable[[], Awaitable[T]], tries: int = 2
) -> T | None:
    """Run one measurement, each try on a fresh run; a failure is noted in the table (and
    a second try made), never fatal for the rest."""
    for index in range(1, tries + 1):
        try:
            return await attempt()
        except Exception as exc:
            first_line = (str(exc) or type(exc).__name__).splitlines()[0][:300]
            say(f"{measure.name} {what}, try {index} of {tries} failed: {first_line}")
            measure.errors.append(f"{what}, try {index} of {tries} failed: {first_line}")
    return None


async def run(args: argparse.Namespace) -> dict[str, Measure]:
    cancel_on_sigterm()
    label = names()
    measures = {key: Measure(key, label[key]) for key in SYSTEMS if key in args.only}
    for key, measure in measures.items():
        peer = PEER_BY_KEY.get(key)
        if peer is not None and (why := peer.available()):
            measure.errors.append(f"cannot run here: {why}")
    runnable = {key: m for key, m in measures.items() if not m.errors}
    with tempfile.TemporaryDirectory(prefix="asyncinvoke-peers-") as tmp:
        workdir = Path(tmp)
        for index in range(args.runs):
            say(f"throughput run {index + 1}/{args.runs}: N={args.n}, load {note_load():.2f}")
            for key, measure in runnable.items():
                if key in ("bare", "aiormq"):
                    client = "aio-pika" if key == "bare" else "aiormq"
                    attempt = partial(drain_bare, args.n, client)
                elif key in ("ours", "task"):
                    attempt = partial(drain_ours, workdir, args.n, task_mode=key == "task")
                else:
                    attempt = partial(drain_peer, PEER_BY_KEY[key], workdir, args.n)
                rate = await guarded(measure, "throughput", attempt)
                if isinstance(rate, float):
                    measure.rates.append(rate)
            say(
                f"latency run {index + 1}/{args.runs}: {args.rate:g}/s for {args.seconds:g} s, "
                f"load {note_load():.2f}"
            )
            for key, measure in runnable.items():
                if key in ("bare", "aiormq", "task"):
                    continue
                if key == "ours":
                    attempt = partial(latency_ours, workdir, args.rate, args.seconds)
                else:
                    attempt = partial(
                        latency_peer, PEER_BY_KEY[key], workdir, args.rate, args.seconds
                    )
                values = await guarded(measure, "latency", attempt)
                if isinstance(values, list):
                    measure.latencies.append(values)
    return measures


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(measures: dict[str, Measure], args: argparse.Namespace) -> str:
    ours = measures.get("ours")
    ours_rate = ours.rate if ours else None
    lines = [
        "| system | settings | throughput (tasks/s) | ours ÷ this | latency p50 (ms) "
        "| p99 (ms) | max (ms) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    for key, measure in measures.items():
        rate = measure.rate
        runs = " / ".join(_num(r) for r in measure.rates)
        throughput = _num(rate) + (f" ({runs})" if len(measure.rates) > 1 else "")
        if key == "task" and rate and ours_rate:
            ratio = f"{ours_rate / rate:.2f}x"
            verdict = "met" if rate >= TASK_MODE_TARGET else "NOT met"
            notes.append(
                f"task mode: {rate:,.0f} tasks/s = {rate / ours_rate:.2f} of ours without "
                f"task mode; target >= {TASK_MODE_TARGET:,.0f}/s: {verdict}"
            )
        elif key != "ours" and rate and ours_rate:
            ratio = f"{ours_rate / rate:.2f}x"
        else:
            ratio = "1.00x" if key == "ours" and rate else "-"
        if measure.errors and not measure.rates:
            throughput = "not measured"
        lines.append(
            f"| {measure.name} | {SETTINGS_TEXT[key]} | {throughput} | {ratio} "
            f"| {_num(measure.latency(50), 1)} | {_num(measure.latency(99), 1)} "
            f"| {_num(measure.latency(100), 1)} |"
        )
        notes += [f"{measure.name}: {error}" for error in measure.errors]
    header = (
        f"N = {args.n:,} no-op tasks per throughput run, best of {args.runs}; latency at "
        f"{args.rate:g}/s for {args.seconds:g} s"
    )
    return "\n".join([header, "", *lines, "", *notes])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_peers",
        description="asyncinvoke side by side with Dramatiq, Celery and taskiq-aio-pika.",
    )
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"default {DEFAULT_N:,}")
    parser.add_argument("--runs", type=int, default=1, help="runs of everything (default 1)")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="latency: tasks/s")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="latency: s")
    parser.add_argument(
        "--only",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)",
    )
    args = parser.parse_args(argv)
    args.only = [key.strip() for key in args.only.split(",") if key.strip()]
    unknown = sorted(set(args.only) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(SYSTEMS)}")
    if args.n < 2 or args.runs < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--n at least 2, --runs at least 1, --rate and --seconds positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now().astimezone()
    try:
        measures = asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted", file=sys.stderr)
        return 130
    print(f"bench_peers, {started:%Y-%m-%d %H:%M %Z}, {os.cpu_count()} CPUs")
    print(table(measures, args))
    if LOADS:
        print(
            f"1-minute load average at the start of each part: {min(LOADS):.2f} .. {max(LOADS):.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
