"""delay: lateness of delayed invocations, and worker memory with many pending delays.

    .venv/bin/python -m tests.bench.bench_delay [--n 1000] [--rate 50] [--pending 100000]
        [--only lateness,memory] [--concurrency 16] [--dump FILE]

Lateness (ours only): one worker process (``python -m asyncinvoke worker``, a fresh
namespace, the function's default concurrency 16) serves a handler that returns
``time.time_ns() // 1_000_000`` at its start, with ``on_success = "queue:{ns}.results"`` (a
durable quorum queue). N delays are drawn uniformly from 1.000..60.000 s in whole
milliseconds and handed over with ``Client.invoke(delay=float)`` twice: in a burst (all N
at once, 200 invokes in flight) and then paced (``--rate`` per second). Each success record
carries the start (responsePayload), the acceptance time (invocation.created_at) and the
delay (requestPayload.delay_ms): lateness = start - (created_at + delay). Reported: p50,
p99, max, min and how many started early (must be 0), and the hand-over time (invoke
returned, i.e. confirmed, minus created_at). Target: p99 <= 50 ms.

Memory: for each system, one worker process is started and warmed up (one task run), its
resident memory read from /proc/PID/status (VmRSS, summed over the worker's process tree:
Dramatiq runs its worker in a child process); then P tasks delayed by 600 s are handed
over with the system's own API, and after a settle time (at least 10 s, then until the RSS
grew less than 1 MB in 10 s; at most 60 s) the RSS is read again.

- asyncinvoke: ``Client.invoke_many(delay=600)``; the delays wait in the broker's ladder.
- Celery: ``apply_async(countdown=600)``, ``--pool=solo``, ``task_acks_late=True``, prefetch
  64, classic queue (Celery's default); the worker fetches ETA tasks and holds them until
  due (raising its prefetch by one for each), so its memory grows with every one it holds.
- Dramatiq: ``send_with_options(delay=600_000)``, ``--processes 1 --threads 1``; the worker
  fetches from the delay queue ``Q.DQ`` up to threads x 1000 messages and holds them.

"held by the worker" = P - the messages still ready in the broker at the end; "MB per
1,000 held" = growth / held.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika

from asyncinvoke import Client, contract, ladder
from asyncinvoke.topology import Names
from tests.bench.common import AMQP_URL, LOADS, note_load, percentile, say
from tests.bench.peers.runner import (
    CELERY,
    DRAMATIQ,
    OursRun,
    Peer,
    PeerRun,
    Run,
    cancel_on_sigterm,
    queue_ready,
    queues_ready,
)

DEFAULT_N = 1_000
DEFAULT_PENDING = 100_000
DEFAULT_RATE = 50.0
MIN_DELAY_MS, MAX_DELAY_MS = 1_000, 60_000
LATENESS_TARGET_MS = 50.0
PENDING_DELAY_S = 600
SETTLE_S = 10.0
STABLE_WINDOW_S = 10
STABLE_MB = 1.0
SETTLE_CAP_S = 60.0
PUBLISH_WINDOW = 200  # invokes in flight while handing over the lateness invocations
Waiting = Callable[[], Awaitable[int]]  # messages still ready in the broker
PEER_SETTINGS = {"celery": {"prefetch": 64}, "dramatiq": {"threads": 1}}


# -- lateness --------------------------------------------------------------------------------


@dataclass
class Lateness:
    mode: str
    n: int
    received: int
    p50: float
    p99: float
    max: float
    min: float
    early: int
    handover_p50: float
    handover_p99: float


async def hand_over(client: Client, delays: list[int], rate: float) -> dict[str, int]:
    """Invoke once per delay (ms), flat out (PUBLISH_WINDOW in flight) or at ``rate``/s.

    Returns each invocation's id with the time (ms) its invoke returned, i.e. confirmed."""
    confirmed: dict[str, int] = {}
    semaphore = asyncio.Semaphore(PUBLISH_WINDOW)

    async def one(delay_ms: int) -> None:
        async with semaphore:
            invocation_id = await client.invoke(
                "noop", {"delay_ms": delay_ms}, delay=delay_ms / 1000
            )
        confirmed[invocation_id] = time.time_ns() // 1_000_000

    async with asyncio.timeout(120 + (len(delays) / rate if rate else 0)):
        if not rate:
            await asyncio.gather(*(one(delay) for delay in delays))
            return confirmed
        started = time.perf_counter()
        sent = []
        for index, delay in enumerate(delays):
            wait = started + index / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            sent.append(asyncio.create_task(one(delay)))
        await asyncio.gather(*sent)
    return confirmed


def lateness_of(
    mode: str, n: int, confirmed: dict[str, int], records: dict[str, Any], dump: Path | None
) -> Lateness:
    values, handover, rows = [], [], []
    for invocation_id, confirmed_ms in confirmed.items():
        record = records.get(invocation_id)
        if record is None:
            continue
        delay_ms = record["requestPayload"]["delay_ms"]
        created_at = record["invocation"]["created_at"]
        start = record["responsePayload"]
        values.append(start - (created_at + delay_ms))
        handover.append(confirmed_ms - created_at)
        rows.append(
            {
                "mode": mode,
                "delay_ms": delay_ms,
                "created_at": created_at,
                "confirmed_at": confirmed_ms,
                "start": start,
                "lateness_ms": values[-1],
            }
        )
    if dump is not None:
        with dump.open("a") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
    if not values:
        raise RuntimeError(f"{mode}: no success record arrived")
    result = Lateness(
        mode=mode,
        n=n,
        received=len(values),
        p50=percentile(values, 50),
        p99=percentile(values, 99),
        max=max(values),
        min=min(values),
        early=sum(1 for value in values if value < 0),
        handover_p50=percentile(handover, 50),
        handover_p99=percentile(handover, 99),
    )
    say(
        f"lateness, {mode}: p50 {result.p50:.0f} ms, p99 {result.p99:.0f} ms, "
        f"max {result.max:.0f} ms, min {result.min:.0f} ms, early {result.early}; "
        f"hand-over p99 {result.handover_p99:.0f} ms"
    )
    return result


async def lateness(
    n: int, concurrency: int, rate: float, workdir: Path, dump: Path | None
) -> list[Lateness]:
    """One worker; the same N delays handed over in a burst, then paced at ``rate``/s."""
    if dump is not None:
        dump.write_text("")
    results: list[Lateness] = []
    async with OursRun(
        workdir,
        0,
        label="delay-lateness",
        handler="tests.bench.peers.ours:stamp",
        concurrency=concurrency,
        results=True,
    ) as run:
        assert isinstance(run, OursRun) and run.results is not None
        await run.declare()
        records: dict[str, Any] = {}
        arrived = asyncio.Event()
        connection = await asyncio.wait_for(aio_pika.connect(AMQP_URL), 30)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=500)
            queue = await channel.get_queue(run.results, ensure=False)

            async def on_record(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                record = contract.unpack(message.body)
                records[record["requestContext"]["requestId"]] = record
                await message.ack()
                arrived.set()

            async def wait_for(ids: set[str], timeout: float) -> None:
                deadline = time.monotonic() + timeout
                while not ids <= records.keys():
                    run.check_alive()
                    if time.monotonic() > deadline:
                        missing = len(ids - records.keys())
                        say(
                            f"lateness: {missing} of {len(ids)} records missing after {timeout:g} s"
                        )
                        return
                    arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(arrived.wait(), 1.0)

            await queue.consume(on_record)
            await run.start_worker()
            client = await run.connect()
            warm_id = await client.invoke("noop", {"delay_ms": 0})
            await wait_for({warm_id}, 90)
            if warm_id not in records:
                raise TimeoutError("the worker ran no warm-up invocation within 90 s")
            delays = [random.randint(MIN_DELAY_MS, MAX_DELAY_MS) for _ in range(n)]
            for mode, mode_rate in (("burst", 0.0), (f"paced {rate:g}/s", rate)):
                say(f"lateness, {mode}: handing over {n} invocations (load {note_load():.2f})")
                started = time.perf_counter()
                confirmed = await hand_over(client, delays, mode_rate)
                say(f"lateness, {mode}: handed over in {time.perf_counter() - started:.1f} s")
                await wait_for(set(confirmed), MAX_DELAY_MS / 1000 + 45)
                results.append(lateness_of(mode, n, confirmed, records, dump))
        finally:
            await connection.close()
    return results


# -- memory ----------------------------------------------------------------------------------


@dataclass
class Memory:
    name: str
    settings: str
    before_mb: float | None = None
    after_mb: float | None = None
    peak_mb: float | None = None
    held: int | None = None
    fetching: int = 0  # more held during the last STABLE_WINDOW_S: still fetching
    publish_s: float | None = None
    settle_s: float | None = None
    error: str | None = None

    @property
    def growth_mb(self) -> float | None:
        if self.before_mb is None or self.after_mb is None:
            return None
        return self.after_mb - self.before_mb

    @property
    def per_thousand_mb(self) -> float | None:
        growth = self.growth_mb
        if growth is None or not self.held:
            return None
        return growth / self.held * 1000


async def ladder_ready(names: Names) -> int:
    """Messages waiting in a namespace's delay ladder."""
    counts = await queues_ready([names.level(level) for level in range(ladder.LEVELS)])
    return sum(count or 0 for count in counts)


async def settle(run: Run, waiting: Waiting) -> tuple[float, float, int, int]:
    """Wait SETTLE_S, then until the RSS grew less than STABLE_MB in STABLE_WINDOW_S
    (bounded by SETTLE_CAP_S).

    Returns (RSS, peak RSS, ready in the broker, how many fewer ready than a window ago)."""
    started = time.monotonic()
    samples: list[tuple[float, int]] = []
    peak = 0.0
    while True:
        run.check_alive()
        rss = run.rss_mb()
        peak = max(peak, rss)
        ready = await waiting()
        samples.append((rss, ready))
        elapsed = time.monotonic() - started
        window = samples[-(STABLE_WINDOW_S + 1) :]
        moved = window[0][1] - ready
        stable = len(window) > STABLE_WINDOW_S and rss - min(s[0] for s in window) < STABLE_MB
        if elapsed >= SETTLE_S and stable:
            return rss, peak, ready, moved
        if elapsed > SETTLE_CAP_S:
            say(f"{run.label}: RSS still growing after {SETTLE_CAP_S:g} s ({rss:.1f} MB)")
            return rss, peak, ready, moved
        await asyncio.sleep(1.0)


async def memory_of(run: Run, pending: int, waiting: Waiting) -> Memory:
    result = Memory(run.label, "")
    await run.start_worker()
    await run.publish(1, warm=True)
    await run.wait_warm()
    await asyncio.sleep(2.0)
    result.before_mb = run.rss_mb()
    say(f"{run.label}: worker RSS {result.before_mb:.1f} MB before; publishing {pending:,}")
    result.publish_s = await run.publish(pending, delay_s=PENDING_DELAY_S)
    say(f"{run.label}: {pending:,} delayed tasks handed over in {result.publish_s:.1f} s")
    started = time.monotonic()
    result.after_mb, result.peak_mb, ready, result.fetching = await settle(run, waiting)
    result.settle_s = time.monotonic() - started
    result.held = pending - ready
    say(
        f"{run.label}: RSS {result.after_mb:.1f} MB after {result.settle_s:.0f} s "
        f"({result.growth_mb:+.1f} MB); {result.held:,} held by the worker, {ready:,} in the "
        f"broker ({result.fetching:,} fetched in the last {STABLE_WINDOW_S} s)"
    )
    return result


async def memory_ours(workdir: Path, pending: int) -> Memory:
    async with OursRun(workdir, 0, label="delay-memory", concurrency=None) as run:
        assert isinstance(run, OursRun)
        await run.declare()
        names = run.space.names
        # The ladder keeps the delayed invocations; the worker holds none of them.
        result = await memory_of(run, pending, lambda: ladder_ready(names))
    result.name, result.settings = "asyncinvoke", "1 process, default concurrency (16)"
    return result


async def memory_peer(peer: Peer, workdir: Path, pending: int) -> Memory:
    settings = PEER_SETTINGS[peer.key]
    async with PeerRun(peer, workdir, 0, settings) as run:
        delay_queue = peer.delay_queue(run.queue)

        async def waiting() -> int:
            return await queue_ready(delay_queue) or 0

        result = await memory_of(run, pending, waiting)
    result.name = f"{peer.name} {peer.version}"
    result.settings = (
        "--pool=solo, acks_late, prefetch 64, classic queue"
        if peer.key == "celery"
        else "--processes 1 --threads 1, classic queues"
    )
    return result


# -- the whole --------------------------------------------------------------------------------


def _mb(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}" if sign else f"{value:.1f}"


def lateness_table(results: list[Lateness], error: str | None, concurrency: int) -> str:
    lines = [
        "| hand-over | invocations | records | p50 (ms) | p99 (ms) | max (ms) | min (ms) "
        "| started early | hand-over p50 / p99 (ms) | target p99 <= 50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for result in results:
        verdict = "met" if result.p99 <= LATENESS_TARGET_MS and not result.early else "NOT met"
        lines.append(
            f"| {result.mode} | {result.n:,} | {result.received:,} | {result.p50:.0f} "
            f"| {result.p99:.0f} | {result.max:.0f} | {result.min:.0f} | {result.early} "
            f"| {result.handover_p50:.0f} / {result.handover_p99:.0f} | {verdict} |"
        )
    if error:
        lines.append(f"| not measured: {error} | | | | | | | | | |")
    head = (
        "Lateness of delayed invocations (delays 1.000..60.000 s, uniform, ms fractions; "
        f"one worker, concurrency {concurrency}); lateness = handler start - (created_at + "
        "delay); hand-over = invoke confirmed - created_at"
    )
    return "\n".join([head, "", *lines])


def memory_table(results: list[Memory], pending: int) -> str:
    lines = [
        "| system | settings | RSS before (MB) | RSS after (MB) | growth (MB) | peak (MB) "
        "| held by the worker | MB per 1,000 held | publish (s) | settle (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for result in results:
        if result.error and result.after_mb is None:
            lines.append(f"| {result.name} | {result.settings} | not measured | | | | | | | |")
            notes.append(f"{result.name}: {result.error}")
            continue
        held = "-" if result.held is None else f"{result.held:,}"
        per = result.per_thousand_mb
        lines.append(
            f"| {result.name} | {result.settings} | {_mb(result.before_mb)} "
            f"| {_mb(result.after_mb)} | {_mb(result.growth_mb, sign=True)} "
            f"| {_mb(result.peak_mb)} | {held} | {'-' if per is None else f'{per:.1f}'} "
            f"| {result.publish_s or 0:.1f} | {result.settle_s or 0:.0f} |"
        )
        if result.fetching > 0:
            notes.append(
                f"{result.name}: still fetching delayed tasks when measured ({result.fetching:,} "
                f"in the last {STABLE_WINDOW_S} s); its memory keeps growing with what it holds"
            )
        if result.name == "asyncinvoke" and result.growth_mb is not None:
            verdict = "met" if result.growth_mb < 10 else "NOT met"
            notes.append(f"asyncinvoke: growth target < 10 MB: {verdict}")
    head = (
        f"Worker memory with {pending:,} pending tasks delayed by {PENDING_DELAY_S} s "
        "(VmRSS of the worker's process tree, MB = 10^6 bytes)"
    )
    return "\n".join([head, "", *lines, "", *notes])


@dataclass
class Results:
    lateness: list[Lateness] = field(default_factory=list)
    lateness_error: str | None = None
    memory: list[Memory] = field(default_factory=list)


async def measure(args: argparse.Namespace) -> Results:
    """Run the parts ``args.only`` names; failures are kept in the results, never raised."""
    cancel_on_sigterm()
    results = Results()
    with tempfile.TemporaryDirectory(prefix="asyncinvoke-delay-") as tmp:
        workdir = Path(tmp)
        if "lateness" in args.only:
            say(f"lateness: n={args.n}, load {note_load():.2f}")
            try:
                results.lateness = await lateness(
                    args.n, args.concurrency, args.rate, workdir, args.dump
                )
            except Exception as exc:
                results.lateness_error = (str(exc) or type(exc).__name__).splitlines()[0][:300]
                say(f"lateness failed: {results.lateness_error}")
        if "memory" in args.only:
            for key in ("ours", "celery", "dramatiq"):
                say(f"memory, {key}: load {note_load():.2f}")
                peer = {"celery": CELERY, "dramatiq": DRAMATIQ}.get(key)
                name = "asyncinvoke" if peer is None else peer.name
                if peer is not None and (why := peer.available()):
                    results.memory.append(Memory(name, "-", error=f"cannot run here: {why}"))
                    continue
                try:
                    if peer is None:
                        results.memory.append(await memory_ours(workdir, args.pending))
                    else:
                        results.memory.append(await memory_peer(peer, workdir, args.pending))
                except Exception as exc:
                    error = (str(exc) or type(exc).__name__).splitlines()[0][:300]
                    say(f"memory, {key} failed: {error}")
                    results.memory.append(Memory(name, "-", error=error))
    return results


async def run(args: argparse.Namespace) -> list[str]:
    results = await measure(args)
    tables: list[str] = []
    if "lateness" in args.only:
        tables.append(lateness_table(results.lateness, results.lateness_error, args.concurrency))
    if "memory" in args.only:
        tables.append(memory_table(results.memory, args.pending))
    return tables


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_delay",
        description="Lateness of delayed invocations; worker memory with pending delays, "
        "side by side with Celery and Dramatiq.",
    )
    parser.add_argument(
        "--n", type=int, default=DEFAULT_N, help=f"lateness: invocations (default {DEFAULT_N:,})"
    )
    parser.add_argument(
        "--pending",
        type=int,
        default=DEFAULT_PENDING,
        help=f"memory: delayed tasks per system (default {DEFAULT_PENDING:,})",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="lateness: the function's concurrency (default 16, the service's default)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        help=f"lateness: invocations/s of the paced hand-over (default {DEFAULT_RATE:g})",
    )
    parser.add_argument(
        "--dump", type=Path, metavar="FILE", help="lateness: write every sample as JSON lines"
    )
    parser.add_argument("--only", default="lateness,memory", help="lateness, memory or both")
    args = parser.parse_args(argv)
    args.only = {part.strip() for part in args.only.split(",") if part.strip()}
    if not args.only or args.only - {"lateness", "memory"}:
        parser.error("--only takes lateness, memory or both")
    if args.n < 1 or args.rate <= 0 or args.pending < 1 or args.concurrency < 1:
        parser.error("--n, --pending and --concurrency must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now().astimezone()
    try:
        tables = asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted", file=sys.stderr)
        return 130
    print(f"bench_delay, {started:%Y-%m-%d %H:%M %Z}")
    for table in tables:
        print()
        print(table)
    if LOADS:
        print(
            f"\n1-minute load average at the start of each part: {min(LOADS):.2f} .. "
            f"{max(LOADS):.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
