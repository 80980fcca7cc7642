"""e2e: drain rate of one worker process over N pre-published no-op invocations.

Ours: N invocations are published first (``Client.invoke_many``) into the function
queue of a fresh namespace, then ``python -m asyncinvoke worker`` drains them
(concurrency 200, so prefetch 200). The rate comes from the worker's own JSON log:
(N - 1) / (timestamp of the last "attempt" line - timestamp of the first).

Bare: the same N persistent messages, of the same body size, in a quorum queue,
drained by a bare aio-pika consume-and-ack loop (prefetch 200) in its own process,
timed from the first ack to the last.

Both sides are interleaved run by run (bare, async, sync, bare, async, sync, ...)
so that drift in the machine's load touches them alike.

Before and after a change, in one run: ``ASYNCINVOKE_BENCH_BASELINE=DIR`` (the
``service`` directory of another checkout, e.g. a ``git worktree`` of the commit
before) adds the row "async no-op handler, baseline", whose worker imports
asyncinvoke from DIR; everything else (publisher, handler, broker) is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aio_pika
import orjson

from asyncinvoke import Client, functions
from tests.bench.common import (
    AMQP_URL,
    FUNCTION,
    QUORUM,
    ROOT,
    Disturbed,
    Namespace,
    Row,
    bare_publish_many,
    envelope_size,
    note_load,
    retrying,
    say,
    stop_process,
    tail,
)

PREFETCH = 200
HANDLERS = {
    "async": "tests.bench.handlers:noop",
    "sync": "tests.bench.handlers:sync_noop",
    "baseline": "tests.bench.handlers:noop",
}
BASELINE = os.environ.get("ASYNCINVOKE_BENCH_BASELINE")
ATTEMPT = b'"event":"attempt"'
# Worker log lines that say a run was disturbed (by a connection drop, say).
DISTURBANCES = (b"connection close", b"CONNECTION_FORCED", b"ack_failed", b"settle_failed")


def drain_timeout(n: int) -> float:
    """Generous: 500 msg/s (a tenth of what is normal here), plus start-up."""
    return 60.0 + n / 500


@dataclass
class Drain:
    rate: float
    seconds: float
    failures: int
    cpu_us: float | None = None  # the consumer process's CPU time per message, in µs


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class AttemptLog:
    """Follows a worker's JSON log file: counts "attempt" lines, keeps first and last time."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.rest = b""
        self.count = 0
        self.failures = 0
        self.first = float("inf")
        self.last = float("-inf")
        self.ids: set[str] = set()
        self.disturbances: list[str] = []

    def poll(self) -> int:
        try:
            with self.path.open("rb") as file:
                file.seek(self.offset)
                data = file.read()
        except FileNotFoundError:
            return self.count
        self.offset += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            if ATTEMPT not in line:
                if any(sign in line for sign in DISTURBANCES):
                    self.disturbances.append(line.decode(errors="replace")[:300])
                continue
            record = orjson.loads(line)
            stamp = datetime.fromisoformat(record["timestamp"]).timestamp()
            self.first = min(self.first, stamp)
            self.last = max(self.last, stamp)
            self.count += 1
            if record.get("outcome") != "success":
                self.failures += 1
            self.ids.add(record.get("invocation_id"))
        return self.count


def functions_toml(handler: str) -> str:
    return (
        f'[functions.{FUNCTION}]\nhandler = "{handler}"\nconcurrency = {PREFETCH}\ntimeout = 60\n'
    )


async def start_profiler(pid: int, output: Path) -> asyncio.subprocess.Process | None:
    """py-spy on the worker (raw collapsed stacks), if py-spy is installed."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        say("py-spy not found: .venv/bin/pip install py-spy; running without profile")
        return None
    say(f"profiling pid {pid} with py-spy -> {output}")
    return await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(pid), "--rate", "200",
        "--format", "raw", "--output", str(output),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def stop_profiler(profiler: asyncio.subprocess.Process | None, output: Path | None) -> None:
    """py-spy writes its file once the process it follows has exited."""
    if profiler is None or output is None:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(profiler.wait(), 20)
    if profiler.returncode is None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes what it has on Ctrl-C
    await stop_process(profiler, timeout=20)
    if not output.exists() or output.stat().st_size == 0:
        say(f"py-spy wrote no profile to {output}")


async def run_ours(n: int, flavour: str, workdir: Path, profile: Path | None = None) -> Drain:
    space = Namespace(f"e2e-{flavour}")
    config = workdir / f"{space.ns}.toml"
    config.write_text(functions_toml(HANDLERS[flavour]))
    log_path = workdir / f"{space.ns}.worker.log"
    worker: asyncio.subprocess.Process | None = None
    profiler: asyncio.subprocess.Process | None = None
    try:
        await space.declare(functions.load(config).functions.values())
        async with Client(settings=space.settings) as client:
            started = time.perf_counter()
            await client.invoke_many([(FUNCTION, None)] * n)
            say(f"ours/{flavour}: published {n} in {time.perf_counter() - started:.1f} s")
        with log_path.open("wb") as log_file:
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "asyncinvoke", "worker", "--config", str(config),
                env=worker_env(space, flavour),
                cwd=str(ROOT),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log_file,
            )  # fmt: skip
        if profile is not None:
            profiler = await start_profiler(worker.pid, profile)
        log = AttemptLog(log_path)
        deadline = time.monotonic() + drain_timeout(n)
        cpu_start: tuple[float, int] | None = None
        while log.poll() < n:
            if cpu_start is None and log.count:
                cpu = process_cpu_s(worker.pid)
                cpu_start = None if cpu is None else (cpu, log.count)
            if worker.returncode is not None:
                raise RuntimeError(
                    f"worker exited with {worker.returncode} after {log.count} of {n} "
                    f"attempts:\n{tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"worker logged {log.count} of {n} attempts within {drain_timeout(n):g} s:"
                    f"\n{tail(log_path)}"
                )
            await asyncio.sleep(0.2)
        cpu_end = process_cpu_s(worker.pid)
        if log.disturbances or len(log.ids) < log.count:
            duplicates = log.count - len(log.ids)
            raise Disturbed(
                f"{duplicates} redelivered; {len(log.disturbances)} disturbance(s) in the log"
                + (f", first: {log.disturbances[0]}" if log.disturbances else "")
            )
        cpu_us = None
        if cpu_start is not None and cpu_end is not None and log.count > cpu_start[1]:
            cpu_us = (cpu_end - cpu_start[0]) / (log.count - cpu_start[1]) * 1e6
        seconds = log.last - log.first
        drain = Drain((n - 1) / seconds, seconds, log.failures, cpu_us)
        say(
            f"ours/{flavour}: {drain.rate:,.0f} msg/s ({seconds:.2f} s, {log.failures} failed, "
            f"worker CPU {cpu_us or 0:.0f} µs/msg = {(cpu_us or 0) * drain.rate / 1e4:.0f}% "
            "of a core)"
        )
        return drain
    finally:
        code = await stop_process(worker)
        await stop_profiler(profiler, profile)
        if code not in (0, None):
            say(f"worker exit status {code}:\n{tail(log_path)}")
        await space.cleanup()


def worker_env(space: Namespace, flavour: str) -> dict[str, str]:
    env = space.env()
    if flavour == "baseline":
        assert BASELINE is not None
        env["PYTHONPATH"] = os.pathsep.join((BASELINE, env["PYTHONPATH"]))
    return env


async def run_bare(n: int, body_size: int, profile: Path | None = None) -> Drain:
    space = Namespace("e2e-bare")
    queue = space.queue_name("bare")
    consumer: asyncio.subprocess.Process | None = None
    profiler: asyncio.subprocess.Process | None = None
    try:
        connection = await aio_pika.connect(AMQP_URL)
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.declare_queue(queue, durable=True, arguments=QUORUM)
            started = time.perf_counter()
            await bare_publish_many(channel, queue, b"\x00" * body_size, n)
            say(f"bare: published {n} in {time.perf_counter() - started:.1f} s")
        finally:
            await connection.close()
        timeout = drain_timeout(n)
        consumer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.bench.bare_consume",
            "--queue", queue, "--n", str(n), "--prefetch", str(PREFETCH),
            "--timeout", str(timeout),
            env=space.env(),
            cwd=str(ROOT),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        if profile is not None:
            profiler = await start_profiler(consumer.pid, profile)
        out, err = await asyncio.wait_for(consumer.communicate(), timeout + 30)
        if consumer.returncode != 0:
            raise RuntimeError(f"bare consumer failed ({consumer.returncode}): {err.decode()}")
        result = json.loads(out.decode().strip().splitlines()[-1])
        drain = Drain(result["rate"], result["last"] - result["first"], 0, result["cpu_us"])
        busy = drain.cpu_us * drain.rate / 1e4
        say(
            f"bare: {drain.rate:,.0f} msg/s ({drain.seconds:.2f} s, "
            f"CPU {drain.cpu_us:.0f} µs/msg = {busy:.0f}% of a core)"
        )
        return drain
    finally:
        await stop_process(consumer)
        await stop_profiler(profiler, profile)
        await space.cleanup()


def profile_path(profile: Path | None, run_index: int, side: str) -> Path | None:
    """Where the first run of ``side`` writes its profile, if profiling."""
    if profile is None or run_index > 0:
        return None
    return profile.with_name(f"{profile.stem}-{side}{profile.suffix}")


async def run(n: int, runs: int, profile: Path | None = None) -> list[Row]:
    """Both sides, ``runs`` times each, interleaved; one row per flavour of ours."""
    body_size = envelope_size()
    rates = {
        "async": Row("e2e", "drain, async no-op handler", "msg/s", target=0.8),
        "sync": Row("e2e", "drain, sync no-op handler (threads)", "msg/s"),
    }
    if BASELINE:
        rates["baseline"] = Row("e2e", f"drain, async no-op handler, baseline {BASELINE}", "msg/s")
    cpus = {
        flavour: Row("e2e", f"consumer CPU per message, {flavour}", "µs", higher_is_better=False)
        for flavour in rates
    }
    bare: list[Drain] = []
    with tempfile.TemporaryDirectory(prefix="asyncinvoke-bench-") as tmp:
        workdir = Path(tmp)
        for index in range(runs):
            say(
                f"e2e run {index + 1}/{runs}: N={n}, body {body_size} B, prefetch {PREFETCH}, "
                f"load {note_load():.2f}"
            )
            path = profile_path(profile, index, "bare")
            bare.append(await retrying("bare", lambda path=path: run_bare(n, body_size, path)))
            for flavour in rates:
                path = profile_path(profile, index, flavour)
                drain = await retrying(
                    f"ours/{flavour}",
                    lambda flavour=flavour, path=path: run_ours(n, flavour, workdir, path),
                )
                if drain.failures:
                    say(f"warning: {drain.failures} attempts of ours/{flavour} did not succeed")
                rates[flavour].ours.append(drain.rate)
                if drain.cpu_us is not None:
                    cpus[flavour].ours.append(drain.cpu_us)
    for flavour in rates:
        rates[flavour].bare = [drain.rate for drain in bare]
        cpus[flavour].bare = [drain.cpu_us for drain in bare if drain.cpu_us is not None]
    return [*rates.values(), *cpus.values()]
