"""processes: per process, per machine, and CPU-bound handlers (issue 18), in one run.

    .venv/bin/python -m tests.bench.bench_processes [--rounds 5] [--n 10000]
        [--parts process,machine,cpu] [--machine-rounds 3] [--cpu-n 2000] [--no-pin]

``make bench`` runs it on a private RabbitMQ node (``tests.bench.private``), and then
part 1 puts the node on the first CPU and the workers on the others (``--no-pin``: not).

1. **Per process, no-op.** One worker process of each system drains N no-op tasks
   (published first): asyncinvoke, bare aiormq and bare aio-pika consume-and-ack,
   Dramatiq, Celery (solo pool) and taskiq-aio-pika, with prefetch 200 each (settings as
   in ``bench_peers``). Rounds alternate the systems (every other round in reverse
   order); the rate of each is the **median of the rounds**, every round shown. Also
   the worker's CPU time per invocation (``time.process_time()`` in the process that
   ran the tasks, between its first and its last task) against bare aiormq's, which
   does not depend on the machine's load; and the broker's per task.
2. **Per machine, no-op.** ``asyncinvoke worker --processes 2`` against ``dramatiq -p 2``
   and Celery's prefork pool ``-c 2``, on this 2-core machine where the broker shares
   the cores. Where the ceiling is: the broker's CPU (the beam process that listens on
   5672) and the workers' CPU during each drain, in cores, and each per task (the
   worker's whole process tree: supervisor, consumers, pool processes).
3. **CPU-bound.** A task that burns 2 ms of pure-Python CPU: ours with ``executor =
   "process"`` (one worker process, concurrency 2: two handler processes) against
   Celery prefork ``-c 2`` and Dramatiq ``-p 2 --threads 1``. The ideal is cores ÷ 2 ms
   (1,000/s on 2 cores), less the broker's share; the table gives each system's ratio
   to 1,000/s and to the cores the broker left over, and the CPU per task of the worker
   tree, of it outside the processes that ran the tasks (ours: the worker process that
   hands them over; Celery's main process), and of the broker.

``--parts loops`` (not in the default run) compares our worker on asyncio's event loop
and on uvloop, alternating, the same way as part 1. ``--parts floor`` (not in the default
run either; ``--systems`` picks some) splits a no-op task's CPU: bare aiormq loops (an
ack per message, or one multiple ack per loop turn), the same loop reading deliveries
through ``asyncinvoke.frame_filter``, our worker with the filter, without it
(``ASYNCINVOKE_FAST_CONSUME=0``) and on uvloop, and Dramatiq, pinned as part 1.

Every system's task starts with ``probe.hit`` (``BENCH_MULTI=1``: per-process counters in
memory-mapped files, read by the harness), so rates are measured the same way for all:
per process, (its tasks - 1) / (its last task's start - its first task's start), summed
over the processes that ran tasks (for one process: (N - 1) / the time from the first
to the N-th start).
"""

from __future__ import annotations

import argparse
import asyncio
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
from typing import Any
from urllib.parse import urlsplit

import psutil

from asyncinvoke import topology
from tests.bench.bench_peers import OURS_CONCURRENCY, PEER_SETTINGS, drain_bare, drain_timeout
from tests.bench.common import AMQP_URL, LOADS, note_load, say
from tests.bench.peers import classic_worker, probe
from tests.bench.peers.runner import (
    CELERY,
    DRAMATIQ,
    TASKIQ,
    OursRun,
    PeerRun,
    Run,
    cancel_on_sigterm,
    spawn,
)

MULTI_ENV = {"BENCH_MULTI": "1"}
PER_PROCESS = ("ours", "aiormq", "bare", "dramatiq", "celery", "taskiq")
NAMES = {
    "ours": "asyncinvoke",
    "aiormq": "bare aiormq",
    "bare": "bare aio-pika",
    "dramatiq": "Dramatiq",
    "celery": "Celery",
    "taskiq": "taskiq-aio-pika",
}
PEER_BY_KEY = {"dramatiq": DRAMATIQ, "celery": CELERY, "taskiq": TASKIQ}
BURN_MS = 2.0


@dataclass
class Sample:
    rate: float
    cpu_us: float | None = None  # worker CPU per task
    broker_cores: float | None = None  # the broker's CPU over the drain, in cores
    worker_cores: float | None = None
    # CPU per task of the worker's whole process tree (supervisor, consumer processes,
    # handler processes), over the drain: what the task-running processes' own figure
    # leaves out where tasks run in other processes than the consumer's (ours with
    # executor = "process", Celery's prefork pool).
    tree_us: float | None = None
    broker_us: float | None = None  # the broker's CPU per task over the drain

    @property
    def outside_us(self) -> float | None:
        """The worker tree's CPU per task outside the processes that ran the tasks."""
        if self.tree_us is None or self.cpu_us is None:
            return None
        return max(0.0, self.tree_us - self.cpu_us)


@dataclass
class Series:
    key: str
    label: str
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, attribute: str) -> float | None:
        values = [getattr(s, attribute) for s in self.samples if getattr(s, attribute) is not None]
        return statistics.median(values) if values else None


# -- measuring ---------------------------------------------------------------------------------


def broker_process() -> psutil.Process | None:
    """The RabbitMQ node (beam) that listens on the benchmark's AMQP port."""
    port = urlsplit(AMQP_URL).port or 5672
    for proc in psutil.process_iter(["name"]):
        if "beam" not in (proc.info["name"] or ""):
            continue
        try:
            if any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
                   for c in proc.net_connections(kind="tcp")):  # fmt: skip
                return proc
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    return None


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its live descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    return sum(cpu_seconds(proc) for proc in procs)


def cpu_seconds(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    try:
        times = proc.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)


async def wait_multi(
    run: Run, n: int, timeout: float, tree: list[float] | None = None
) -> tuple[float, float, float]:
    """Wait until the processes' probes counted ``n`` tasks: (rate, CPU seconds spent by
    the task-running processes between their first and last task, seconds of the drain).
    ``tree`` gets the worker's process tree's CPU seconds per task, from the first poll
    that saw a tenth of them counted to the last (after the start-up of every process:
    an interpreter's start costs as much CPU as hundreds of tasks)."""
    deadline = time.monotonic() + timeout
    tree_start: tuple[int, float] | None = None
    while True:
        slots = probe.read_multi(str(run.out))
        counted = sum(slot[0] for slot in slots)
        if tree is not None and run.worker is not None:
            if tree_start is None and counted >= max(1, n // 10):
                tree_start = (counted, tree_cpu_seconds(run.worker.pid))
            elif tree_start is not None and counted >= n and counted > tree_start[0]:
                spent = tree_cpu_seconds(run.worker.pid) - tree_start[1]
                tree.append(spent / (counted - tree_start[0]))
        if counted >= n:
            busy = [slot for slot in slots if slot[0] > 1]
            first = min(slot[1] for slot in busy)
            last = max(slot[2] for slot in busy)
            cpu = sum(slot[4] - slot[3] for slot in busy)
            seconds = (last - first) / 1e9
            # Each process's own rate, summed: processes that start a moment apart (each
            # of ours imports and connects on its own) would otherwise count the wait for
            # the last one as time spent draining.
            rate = sum((slot[0] - 1) / ((slot[2] - slot[1]) / 1e9) for slot in busy)
            if len(busy) > 1:
                say(f"{run.label}: per process " + ", ".join(
                    f"{slot[0]} tasks from +{(slot[1] - first) / 1e9:.2f} s to "
                    f"+{(slot[2] - first) / 1e9:.2f} s" for slot in busy))  # fmt: skip
            return rate, cpu, seconds
        run.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run.label}: {sum(s[0] for s in slots)} of {n} in {timeout:g} s")
        await asyncio.sleep(0.02)


async def drain(run: Run, n: int, broker: psutil.Process | None) -> Sample:
    """Publish n, start the worker, wait for the n-th task; rate and CPU figures."""
    await run.publish(n)
    if isinstance(run, PeerRun):
        await run.wait_depth(run.queue, n)
    await run.start_worker()
    broker_before, wall_before = cpu_seconds(broker), time.monotonic()
    tree: list[float] = []
    rate, worker_cpu, seconds = await wait_multi(run, n, drain_timeout(n), tree)
    wall = time.monotonic() - wall_before
    broker_spent = cpu_seconds(broker) - broker_before
    # The broker's CPU from the worker's start to the end (start-up included: the
    # broker is idle then); the workers' from their first task to their last.
    broker_cores = broker_spent / wall
    sample = Sample(
        rate=rate,
        cpu_us=worker_cpu / (n - 1) * 1e6,
        broker_cores=broker_cores,
        worker_cores=worker_cpu / seconds,
        tree_us=tree[0] * 1e6 if tree else None,
        broker_us=broker_spent / n * 1e6,
    )
    say(
        f"{run.label}: {rate:,.0f}/s, worker CPU {sample.cpu_us:.0f} µs/task "
        f"({sample.worker_cores:.2f} cores), whole worker tree {_n(sample.tree_us)} µs/task, "
        f"broker {broker_cores:.2f} cores ({sample.broker_us:.0f} µs/task)"
    )
    return sample


class OursWorker(OursRun):
    """Our worker with extra arguments (``--processes``), on quorum function queues (the
    product's) or, with ``classic``, on classic ones (``peers.classic_worker``): whether
    the queue type is what holds a run back."""

    def __init__(
        self, *args: Any, worker_args: tuple[str, ...] = (), classic: bool = False, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.worker_args = worker_args
        self.classic = classic

    async def declare(self) -> None:
        if not self.classic:
            return await super().declare()
        quorum = topology.function_queue_arguments
        classic_worker.use_classic_queues()
        try:
            await super().declare()
        finally:
            topology.function_queue_arguments = quorum  # type: ignore[assignment]

    async def start_worker(self) -> None:
        env = self.space.env(**self.probe_env(), **self.extra_env)
        module = "tests.bench.peers.classic_worker" if self.classic else "asyncinvoke"
        command = [sys.executable, "-m", module, "worker", "--config", str(self.config),
                   *self.worker_args]  # fmt: skip
        self.worker = await spawn(command, env, self.log)


async def ours(
    workdir: Path, n: int, broker: psutil.Process | None, *, processes: int = 1,
    handler: str = "tests.bench.peers.ours:noop", concurrency: int = OURS_CONCURRENCY,
    extra: str = "", env: dict[str, str] | None = None, label: str = "asyncinvoke",
    classic: bool = False,
) -> Sample:  # fmt: skip
    async with OursWorker(
        workdir, n, label=label, handler=handler, concurrency=concurrency, toml_extra=extra,
        env={**MULTI_ENV, **(env or {})}, worker_args=("--processes", str(processes)),
        classic=classic,
    ) as run:  # fmt: skip
        assert isinstance(run, OursRun)
        await run.declare()
        return await drain(run, n, broker)


async def peer(
    key: str, workdir: Path, n: int, broker: psutil.Process | None, **settings: Any
) -> Sample:
    base = dict(PEER_SETTINGS[key])
    env = {**MULTI_ENV, **base.pop("env", {}), **settings.pop("env", {})}
    async with PeerRun(PEER_BY_KEY[key], workdir, n, {**base, **settings, "env": env}) as run:
        return await drain(run, n, broker)


async def bare(client: str, n: int, broker: psutil.Process | None) -> Sample:
    details: dict[str, float] = {}
    before, wall = cpu_seconds(broker), time.monotonic()
    rate = await drain_bare(n, client, details)
    return Sample(
        rate=rate,
        cpu_us=details.get("cpu_us"),
        broker_cores=(cpu_seconds(broker) - before) / (time.monotonic() - wall),
    )


async def rounds(
    series: dict[str, Series], attempts: dict[str, Callable[[], Awaitable[Sample]]], count: int
) -> None:
    """``count`` rounds of every system, alternating the order; failures are noted."""
    keys = list(attempts)
    for index in range(count):
        order = keys if index % 2 == 0 else keys[::-1]
        say(f"round {index + 1}/{count}: {', '.join(order)}; load {note_load():.2f}")
        for key in order:
            try:
                series[key].samples.append(await attempts[key]())
            except Exception as exc:
                first_line = (str(exc) or type(exc).__name__).splitlines()[0][:300]
                say(f"{series[key].label}: round {index + 1} failed: {first_line}")
                series[key].errors.append(f"round {index + 1}: {first_line}")


# -- the parts ---------------------------------------------------------------------------------


def pin(broker: psutil.Process | None, apart: bool) -> str:
    """``apart``: the broker on the first CPU, this process and all it starts from now on
    (workers, bare consumers) on the others, so that a worker's rate is its own cost and
    the broker's CPU shows whether it is the ceiling (1.0 core: saturated). Otherwise every
    CPU for both again. Only a private node is pinned (tests/bench/private.py): the shared
    one at 5672 serves everyone's tests."""
    cpus = list(range(os.cpu_count() or 1))
    if broker is None or not os.environ.get("BENCH_PRIVATE_BROKER") or len(cpus) < 2:
        return "not pinned (shared broker, or one CPU)"
    try:
        for thread in broker.threads():
            os.sched_setaffinity(thread.id, {cpus[0]} if apart else set(cpus))
        os.sched_setaffinity(0, set(cpus[1:]) if apart else set(cpus))
    except (OSError, psutil.Error) as exc:
        return f"not pinned: {exc}"
    if apart:
        return f"pinned: the broker on CPU {cpus[0]}, the workers on CPU {cpus[1:]}"
    return "not pinned"


async def per_process(args: argparse.Namespace, workdir: Path, broker: Any) -> dict[str, Series]:
    series = {key: Series(key, NAMES[key]) for key in PER_PROCESS}
    say(pin(broker, apart=args.pin))
    attempts: dict[str, Callable[[], Awaitable[Sample]]] = {
        "ours": partial(ours, workdir, args.n, broker),
        "aiormq": partial(bare, "aiormq", args.n, broker),
        "bare": partial(bare, "aio-pika", args.n, broker),
        "dramatiq": partial(peer, "dramatiq", workdir, args.n, broker),
        "celery": partial(peer, "celery", workdir, args.n, broker),
        "taskiq": partial(peer, "taskiq", workdir, args.n, broker),
    }
    try:
        await rounds(series, attempts, args.rounds)
    finally:
        pin(broker, apart=False)
    return series


async def per_machine(args: argparse.Namespace, workdir: Path, broker: Any) -> dict[str, Series]:
    n = args.machine_n
    series = {
        "ours": Series("ours", "asyncinvoke --processes 2"),
        "dramatiq": Series("dramatiq", "Dramatiq -p 2 (8 threads each)"),
        "celery": Series("celery", "Celery prefork -c 2"),
    }
    attempts: dict[str, Callable[[], Awaitable[Sample]]] = {
        "ours": partial(ours, workdir, n, broker, processes=2, label="asyncinvoke x2"),
        "dramatiq": partial(peer, "dramatiq", workdir, n, broker, processes=2),
        "celery": partial(peer, "celery", workdir, n, broker, processes=2),
    }
    await rounds(series, attempts, args.machine_rounds)
    return series


async def cpu_bound(args: argparse.Namespace, workdir: Path, broker: Any) -> dict[str, Series]:
    n = args.cpu_n
    burn_env = {"BENCH_TASK": "burn", "BENCH_BURN_MS": str(BURN_MS)}
    series = {
        "ours": Series("ours", 'asyncinvoke, executor = "process", concurrency 2 (quorum queue)'),
        "classic": Series("classic", "asyncinvoke, as above, on a classic queue"),
        "dramatiq": Series("dramatiq", "Dramatiq -p 2 --threads 1 (classic queue)"),
        "dramatiq-quorum": Series("dramatiq-quorum", "Dramatiq, as above, on a quorum queue"),
        "celery": Series("celery", "Celery prefork -c 2 (classic queue)"),
    }
    attempts: dict[str, Callable[[], Awaitable[Sample]]] = {
        "ours": partial(
            ours, workdir, n, broker, handler="tests.bench.peers.ours:burn", concurrency=2,
            extra='executor = "process"\n', env=burn_env, label="asyncinvoke cpu",
        ),
        # The peers' queues are classic; ours are quorum queues (the product's): the same
        # worker on a classic queue tells the queue type's share from the worker's.
        "classic": partial(
            ours, workdir, n, broker, handler="tests.bench.peers.ours:burn", concurrency=2,
            extra='executor = "process"\n', env=burn_env, label="asyncinvoke cpu classic",
            classic=True,
        ),
        "dramatiq": partial(peer, "dramatiq", workdir, n, broker, processes=2, threads=1,
                            env=burn_env),
        # Each system on each queue type: ours on classic beside Dramatiq's default, and
        # Dramatiq on quorum beside ours.
        "dramatiq-quorum": partial(peer, "dramatiq", workdir, n, broker, processes=2,
                                   threads=1, env={**burn_env, "BENCH_QUORUM": "1"}),
        "celery": partial(peer, "celery", workdir, n, broker, processes=2, env=burn_env),
    }
    await rounds(series, attempts, args.machine_rounds)
    return series


async def loops(args: argparse.Namespace, workdir: Path, broker: Any) -> dict[str, Series]:
    """Our worker on asyncio's loop and on uvloop, alternating: the default's evidence."""
    series = {loop: Series(loop, f"asyncinvoke on {loop}") for loop in ("asyncio", "uvloop")}
    attempts: dict[str, Callable[[], Awaitable[Sample]]] = {
        loop: partial(ours, workdir, args.n, broker, env={"ASYNCINVOKE_EVENT_LOOP": loop},
                      label=f"asyncinvoke {loop}")
        for loop in series
    }
    await rounds(series, attempts, args.rounds)
    return series


FLOOR = {
    "aiormq": "bare aiormq, an ack per message (wait=True)",
    "aiormq-batched": "bare aiormq, one multiple ack per loop turn",
    "fast": "bare frame filter (asyncinvoke.frame_filter), one multiple ack per loop turn",
    "ours": "asyncinvoke",
    "ours-slow": "asyncinvoke, ASYNCINVOKE_FAST_CONSUME=0 (aiormq's reader)",
    "ours-uvloop": "asyncinvoke, ASYNCINVOKE_EVENT_LOOP=uvloop",
    "dramatiq": "Dramatiq",
}


async def floor(args: argparse.Namespace, workdir: Path, broker: Any) -> dict[str, Series]:
    """Where the CPU of a no-op task goes: the bare loops that read deliveries through
    aiormq (an ack each, or one per loop turn) or through our frame filter, our worker
    with and without the filter, and Dramatiq; pinned like part 1. The figure to read is
    the CPU per task."""
    keys = [key.strip() for key in (args.systems or ",".join(FLOOR)).split(",")]
    series = {key: Series(key, FLOOR[key]) for key in keys}
    say(pin(broker, apart=args.pin))
    every: dict[str, Callable[[], Awaitable[Sample]]] = {
        "aiormq": partial(bare, "aiormq", args.n, broker),
        "aiormq-batched": partial(bare, "aiormq-batched", args.n, broker),
        "fast": partial(bare, "fast", args.n, broker),
        "ours": partial(ours, workdir, args.n, broker),
        "ours-slow": partial(ours, workdir, args.n, broker, label="asyncinvoke slow",
                             env={"ASYNCINVOKE_FAST_CONSUME": "0"}),
        "ours-uvloop": partial(ours, workdir, args.n, broker, label="asyncinvoke uvloop",
                               env={"ASYNCINVOKE_EVENT_LOOP": "uvloop"}),
        "dramatiq": partial(peer, "dramatiq", workdir, args.n, broker),
    }
    try:
        await rounds(series, {key: every[key] for key in keys}, args.rounds)
    finally:
        pin(broker, apart=False)
    return series


async def metrics_mode(
    args: argparse.Namespace, workdir: Path, broker: Any
) -> dict[str, Series]:
    """One worker process with its metrics kept in-process, or in multiprocess files as
    under ``--processes N``, and two worker processes started side by side without a
    supervisor: where a cost of the supervised mode comes from."""
    files = workdir / "multiproc"
    files.mkdir(exist_ok=True)
    series = {
        "plain": Series("plain", "1 process, in-process metrics"),
        "files": Series("files", "1 process, multiprocess metric files"),
    }
    attempts: dict[str, Callable[[], Awaitable[Sample]]] = {
        "plain": partial(ours, workdir, args.n, broker, label="asyncinvoke plain"),
        "files": partial(ours, workdir, args.n, broker, label="asyncinvoke files",
                         env={"PROMETHEUS_MULTIPROC_DIR": str(files)}),
    }
    await rounds(series, attempts, args.rounds)
    return series


# -- tables ------------------------------------------------------------------------------------


def _n(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(series: dict[str, Series], ratio_to: str, extra: Callable[[Series], str]) -> str:
    lines = []
    base = series[ratio_to].median("rate")
    for item in series.values():
        rate = item.median("rate")
        rounds_text = " / ".join(_n(s.rate) for s in item.samples) or "not measured"
        ratio = f"{base / rate:.2f}x" if base and rate and item.key != ratio_to else "-"
        lines.append(f"| {item.label} | {_n(rate)} | {ratio} | {extra(item)} | {rounds_text} |")
        lines += [f"| | | | {error} | |" for error in item.errors]
    return "\n".join(lines)


def report(parts: dict[str, dict[str, Series]], cores: int) -> str:
    out: list[str] = []
    if "process" in parts:
        s = parts["process"]
        peers = {k: s[k].median("rate") for k in ("dramatiq", "celery", "taskiq")}
        fastest = max((k for k in peers if peers[k]), key=lambda k: peers[k] or 0, default=None)
        ours_rate, ours_cpu = s["ours"].median("rate"), s["ours"].median("cpu_us")
        aiormq_cpu = s["aiormq"].median("cpu_us")
        out += [
            "### Per process, no-op (median of the rounds)",
            "",
            "| system | tasks/s | ours ÷ this | worker CPU µs/task: task process; whole "
            "tree; broker (medians) | every round |",
            "|---|---:|---:|---:|---|",
            table(s, "ours", _cpu_figures),
            "",
        ]
        if fastest and ours_rate:
            verdict = "met" if ours_rate >= 2 * (peers[fastest] or 0) else "NOT met"
            out.append(
                f"Ours ÷ the fastest peer ({NAMES[fastest]}): "
                f"{ours_rate / (peers[fastest] or 1):.2f}x (goal >= 2.0x: {verdict})."
            )
        if ours_cpu and aiormq_cpu:
            out.append(
                f"Worker CPU per invocation: ours {ours_cpu:.0f} µs, bare aiormq "
                f"{aiormq_cpu:.0f} µs ({ours_cpu / aiormq_cpu:.2f}x)."
            )
        out.append("")
    if "machine" in parts:
        out += [
            "### Per machine, no-op, 2 processes (median of the rounds)",
            "",
            "| system | tasks/s | ours ÷ this | broker / workers CPU, cores; whole worker "
            "tree, broker µs/task (medians) | every round |",
            "|---|---:|---:|---|---|",
            table(parts["machine"], "ours", lambda item: (
                f"{_n(item.median('broker_cores'), 2)} / {_n(item.median('worker_cores'), 2)}; "
                f"{_n(item.median('tree_us'))}, {_n(item.median('broker_us'))}"
            )),
            "",
        ]
    if "loops" in parts:
        out += [
            "### Event loops, one worker process, no-op (median of the rounds)",
            "",
            "| loop | tasks/s | asyncio ÷ this | worker CPU µs/task (median) | every round |",
            "|---|---:|---:|---:|---|",
            table(parts["loops"], "asyncio", lambda item: _n(item.median("cpu_us"))),
            "",
        ]
    if "metrics" in parts:
        out += [
            "### Metrics in-process or in multiprocess files (median of the rounds)",
            "",
            "| worker | tasks/s | plain ÷ this | worker CPU µs/task (median) | every round |",
            "|---|---:|---:|---:|---|",
            table(parts["metrics"], "plain", lambda item: _n(item.median("cpu_us"))),
            "",
        ]
    if "floor" in parts:
        out += [
            "### Where a no-op task's CPU goes, pinned (median of the rounds)",
            "",
            "| system | tasks/s | the first ÷ this | worker CPU µs/task (median); every round "
            "| every round, tasks/s |",
            "|---|---:|---:|---|---|",
            table(parts["floor"], next(iter(parts["floor"])), lambda item: (
                f"{_n(item.median('cpu_us'))}; "
                + " / ".join(_n(sample.cpu_us) for sample in item.samples)
            )),
            "",
        ]
    if "cpu" in parts:
        ideal = cores / (BURN_MS / 1000)
        out += [
            f"### CPU-bound ({BURN_MS:g} ms of pure-Python CPU per task), 2 processes",
            "",
            f"| system | tasks/s | ours ÷ this | ratio to ideal {ideal:,.0f}/s; to the cores "
            "left by the broker | every round |",
            "|---|---:|---:|---|---|",
            table(parts["cpu"], "ours", lambda item: _ideal(item, cores)),
            "",
            "CPU per task of the whole worker tree and of the broker (medians), and the rate "
            "they allow on these cores alone (cores ÷ their sum; ideal "
            f"{ideal:,.0f}/s): the machine's load does not change these much.",
            "",
            "| system | worker tree µs/task | of it outside the task processes "
            "| broker µs/task | capacity, tasks/s | ÷ ideal |",
            "|---|---:|---:|---:|---:|---:|",
            *(_capacity(item, cores) for item in parts["cpu"].values()),
            "",
        ]
    return "\n".join(out)


def _cpu_figures(item: Series) -> str:
    return (
        f"{_n(item.median('cpu_us'))}; {_n(item.median('tree_us'))}; "
        f"{_n(item.median('broker_us'))}"
    )


def _capacity(item: Series, cores: int) -> str:
    """``outside``: the whole tree's CPU per task less the task-running processes' own
    (their probes' figure): ours, the worker process that consumes, settles and hands
    each task to a handler process; Celery's, its consumer (main) process; Dramatiq's
    processes consume and run their tasks themselves (about 0)."""
    tree, broker = item.median("tree_us"), item.median("broker_us")
    outside = item.median("outside_us")
    if not tree:
        return f"| {item.label} | - | - | {_n(broker)} | - | - |"
    capacity = cores / ((tree + (broker or 0)) / 1e6)
    ideal = cores / (BURN_MS / 1000)
    return (
        f"| {item.label} | {tree:,.0f} | {_n(outside)} | {_n(broker)} | {capacity:,.0f} "
        f"| {capacity / ideal:.2f} |"
    )


def _ideal(item: Series, cores: int) -> str:
    rate, broker = item.median("rate"), item.median("broker_cores")
    if not rate:
        return "-"
    ideal = cores / (BURN_MS / 1000)
    left = (cores - (broker or 0)) / (BURN_MS / 1000)
    return f"{rate / ideal:.2f}; {rate / left:.2f} (broker {_n(broker, 2)} cores)"


# -- main --------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, dict[str, Series]]:
    cancel_on_sigterm()
    broker = broker_process()
    if broker is None:
        say("the broker's process was not found: its CPU is not measured")
    parts: dict[str, dict[str, Series]] = {}
    with tempfile.TemporaryDirectory(prefix="asyncinvoke-processes-") as tmp:
        workdir = Path(tmp)
        if "process" in args.parts:
            parts["process"] = await per_process(args, workdir, broker)
        if "machine" in args.parts:
            parts["machine"] = await per_machine(args, workdir, broker)
        if "cpu" in args.parts:
            parts["cpu"] = await cpu_bound(args, workdir, broker)
        if "metrics" in args.parts:
            parts["metrics"] = await metrics_mode(args, workdir, broker)
        if "loops" in args.parts:
            parts["loops"] = await loops(args, workdir, broker)
        if "floor" in args.parts:
            parts["floor"] = await floor(args, workdir, broker)
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_processes")
    parser.add_argument("--rounds", type=int, default=5, help="per-process rounds (5)")
    parser.add_argument("--n", type=int, default=10_000, help="per-process tasks a round")
    parser.add_argument("--machine-rounds", type=int, default=3)
    parser.add_argument("--machine-n", type=int, default=20_000)
    parser.add_argument("--cpu-n", type=int, default=2_000)
    parser.add_argument("--parts", default="process,machine,cpu")
    parser.add_argument(
        "--systems", default="", help=f"part 'floor' only: some of {', '.join(FLOOR)}"
    )
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false",
        help="part 1 without the broker and the workers on CPUs of their own",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.parts = [part.strip() for part in args.parts.split(",")]
    started = datetime.now().astimezone()
    try:
        parts = asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted", file=sys.stderr)
        return 130
    cores = os.cpu_count() or 1
    print(f"bench_processes, {started:%Y-%m-%d %H:%M %Z}, {cores} CPUs; "
          f"per-process N = {args.n:,} x {args.rounds} rounds")  # fmt: skip
    if os.environ.get("BENCH_PINNED"):
        print(f"pinned for the whole run: {os.environ['BENCH_PINNED']}")
    elif "process" in parts and args.pin and os.environ.get("BENCH_PRIVATE_BROKER"):
        print("part 1 pinned: the broker on the first CPU, the workers on the others")
    print(report(parts, cores))
    if LOADS:
        print(f"1-minute load at the start of each round: {min(LOADS):.2f} .. {max(LOADS):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
