"""gateway: async invocations over HTTP, from wrk on loopback with 64 connections.

``python -m tests.bench.bench_gateway [--duration S] [--connections C] [--runs R]``

The gateway runs in its own process (``asyncinvoke gateway``, no access keys, so
loopback and no signature check) in a fresh namespace with one function queue and
no worker: every invocation it accepted stays in the queue and is counted there
afterwards. wrk (Debian's ``wrk``: C, so the load generator does not starve the
server on a 2-core machine) POSTs a small JSON body with ``x-fc-invocation-type:
Async`` over C connections and counts the 202s.

Two kinds of run, interleaved R times each after a warm-up:

- paced: wrk offers ``PACED_RATE`` requests/s on a fixed schedule (a LuaJIT clock in
  the script's ``delay()``), so latency is measured at the target rate rather than
  at saturation. The targets apply here: >= 3,000 requests/s, p99 < 25 ms.
- max: no pacing; each connection sends its next request as soon as the last one
  was answered. The rate is the gateway's ceiling; latency there is mostly queueing
  (Little's law: C / rate).
- bare: the floor under both, without HTTP or asyncinvoke: aio-pika publishing
  persistent messages of the envelope's size to a quorum queue with confirms, paced
  at ``PACED_RATE`` with at most C in flight, timed from publish to confirm.

Also reported: the gateway's CPU time per request, the machine's load average
after each run (on a shared 2-core host other work moves these figures more than
anything in the gateway does), the 202s against the queue's depth after each run
(every accepted invocation must be there; the queue is emptied between runs, as a
quorum queue with a long backlog appends more slowly), and what the signature check
adds per request (measured in-process: wrk cannot sign ACS3).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from asyncinvoke import Client, functions, topology
from asyncinvoke.gateway.auth import Verifier, canonical_request, signature
from tests.bench.bench_e2e import process_cpu_s
from tests.bench.common import (
    AMQP_URL,
    FUNCTION,
    QUORUM,
    ROOT,
    Namespace,
    Row,
    say,
    stop_process,
)

DEFAULT_DURATION_S = 10
DEFAULT_CONNECTIONS = 64
DEFAULT_RUNS = 3
WARM_UP_S = 2
WRK_THREADS = 2
PACED_RATE = 3200  # offered, a little over the target, so "at least 3,000" is what it shows
TARGET_RATE = 3000.0
TARGET_P99_MS = 25.0
BODY = b'{"key": "uploads/a.png", "size": 1024}'
SIGNED_SAMPLES = 20_000

# wrk counts the 202s itself: each thread counts in response(), done() adds them up.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-fc-invocation-type"] = "Async"

local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) accepted = 0; refused = 0 end
function response(status, headers, body)
  if status == 202 then accepted = accepted + 1 else refused = refused + 1 end
end
function done(summary, latency, requests)
  local a, r = 0, 0
  for _, thread in ipairs(threads) do
    a = a + thread:get("accepted"); r = r + thread:get("refused")
  end
  io.write(string.format("accepted=%%d refused=%%d\\n", a, r))
  for _, p in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format("p%%g=%%.3f\\n", p, latency:percentile(p) / 1000))
  end
end
"""
# Each thread sends on a fixed schedule of its share of the rate: delay() is asked
# before every request and waits for the next free slot (0 when running behind).
PACING = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *now);
]]
local clock = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end
local interval = 1000 / %(thread_rate)f
local started, slots = nil, 0
function delay()
  local now = now_ms()
  if started == nil then started = now end
  slots = slots + 1
  return math.max(0, math.floor(started + slots * interval - now))
end
"""


@dataclass
class WrkRun:
    kind: str  # "paced" or "max"
    rate: float
    accepted: int
    refused: int
    errors: int  # socket errors and timeouts
    percentiles_ms: dict[str, float]
    load: float = 0.0  # the 1-minute load average when the run ended
    cpu_us: float | None = None  # the gateway's CPU time per request
    depth: int = 0  # invocations in the queue after the run

    @property
    def lost(self) -> int:
        return max(0, self.accepted - self.depth)

    @property
    def p99(self) -> float:
        return self.percentiles_ms["p99"]

    def meets_targets(self) -> bool:
        return (
            self.rate >= TARGET_RATE
            and self.p99 < TARGET_P99_MS
            and self.refused == 0
            and self.errors == 0
        )


def parse_wrk(kind: str, output: str) -> WrkRun:
    def number(pattern: str) -> str:
        found = re.search(pattern, output)
        if found is None:
            raise RuntimeError(f"no {pattern!r} in wrk's output:\n{output}")
        return found[1]

    errors = sum(
        int(count) for count in re.findall(r"(?:connect|read|write|timeout) (\d+)", output)
    )
    return WrkRun(
        kind=kind,
        rate=float(number(r"Requests/sec:\s+([\d.]+)")),
        accepted=int(number(r"accepted=(\d+)")),
        refused=int(number(r"refused=(\d+)")),
        errors=errors,
        percentiles_ms={f"p{p}": float(ms) for p, ms in re.findall(r"p([\d.]+)=([\d.]+)", output)},
    )


def write_script(folder: Path, rate: float | None) -> Path:
    text = WRK_SCRIPT % {"body": BODY.decode()}
    if rate is not None:
        text += PACING % {"thread_rate": rate / WRK_THREADS}
    script = folder / ("paced.lua" if rate is not None else "max.lua")
    script.write_text(text)
    return script


async def run_wrk(kind: str, url: str, script: Path, duration_s: int, connections: int) -> WrkRun:
    process = await asyncio.create_subprocess_exec(
        "wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{duration_s}s", "--timeout", "5s",
        "-s", str(script), url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(duration_s + 60):
        output, _ = await process.communicate()
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{text}")
    return parse_wrk(kind, text)


async def start_gateway(
    space: Namespace, config: Path, log_path: Path
) -> tuple[asyncio.subprocess.Process, str]:
    """``asyncinvoke gateway`` on a free loopback port; its URL, read from its log."""
    env = space.env()
    env.pop("ASYNCINVOKE_ACCESS_KEYS", None)
    env.pop("ASYNCINVOKE_ACCESS_KEYS_FILE", None)
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "/tmp/gw/nowait.py", "gateway", "--config", str(config),
            "--port", "0",
            env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    async with asyncio.timeout(60):
        while True:
            for line in log_path.read_bytes().splitlines():
                with contextlib.suppress(orjson.JSONDecodeError):
                    event = orjson.loads(line)
                    if isinstance(event, dict) and event.get("event") == "gateway_started":
                        return process, str(event["url"])
            if process.returncode is not None:
                raise RuntimeError(f"the gateway exited: {log_path.read_text()[-2000:]}")
            await asyncio.sleep(0.1)


async def drain(space: Namespace) -> int:
    """How many invocations the function queue holds; then empty it for the next run
    (a quorum queue with a long backlog is slower to append to)."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        name = space.names.function_queue(FUNCTION)
        depth = await topology.queue_depth(connection, name) or 0
        async with connection.channel() as channel:
            queue = await channel.declare_queue(name, passive=True)
            await queue.purge()
    finally:
        await connection.close()
    return depth


async def run_bare(space: Namespace, body: bytes, duration_s: int, connections: int) -> WrkRun:
    """Publish-to-confirm latency of bare aio-pika at the paced rate, C in flight."""
    connection = await aio_pika.connect(AMQP_URL)
    latencies: list[float] = []
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = space.queue_name("bare")
        declared = await channel.declare_queue(queue, durable=True, arguments=QUORUM)
        slots = asyncio.Semaphore(connections)
        in_flight: set[asyncio.Task[None]] = set()

        async def publish() -> None:
            try:
                started = time.perf_counter()
                await channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=queue,
                    timeout=30,
                )
                latencies.append(time.perf_counter() - started)
            finally:
                slots.release()

        started = time.perf_counter()
        sent = 0
        while time.perf_counter() - started < duration_s:
            wait = started + sent / PACED_RATE - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            await slots.acquire()
            task = asyncio.create_task(publish())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            sent += 1
        await asyncio.gather(*in_flight)
        elapsed = time.perf_counter() - started
        depth = await topology.queue_depth(connection, queue) or 0
        await declared.purge()
    finally:
        await connection.close()
    millis = [latency * 1000 for latency in latencies]
    run = WrkRun(
        kind="bare",
        rate=len(millis) / elapsed,
        accepted=len(millis),
        refused=0,
        errors=0,
        percentiles_ms={f"p{p:g}": nearest_rank(millis, p) for p in (50, 90, 99, 99.9)},
        load=load_average(),
        depth=depth,
    )
    return run


def nearest_rank(values: list[float], p: float) -> float:
    """The p-th percentile (0..100) by nearest rank, as wrk reports them."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def signature_check_us(samples: int = SIGNED_SAMPLES) -> float:
    """µs per request that the ACS3 check costs: pre-signed requests, verified in-process."""
    secret = "bench-secret"
    path = f"/2023-03-30/functions/{FUNCTION}/invocations"
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body_hash = hashlib.sha256(BODY).hexdigest()
    requests = []
    for _ in range(samples):
        headers = CIMultiDict(
            {
                "host": "127.0.0.1:9000",
                "x-acs-date": date,
                "x-acs-signature-nonce": uuid.uuid4().hex,
                "x-acs-content-sha256": body_hash,
                "x-fc-invocation-type": "Async",
                "content-type": "application/octet-stream",
            }
        )
        names = sorted(headers)
        canonical = canonical_request("POST", path, [], CIMultiDictProxy(headers), names, body_hash)
        headers["Authorization"] = (
            f"ACS3-HMAC-SHA256 Credential=bench,SignedHeaders={';'.join(names)},"
            f"Signature={signature(secret, canonical)}"
        )
        requests.append(CIMultiDictProxy(headers))
    verifier = Verifier({"bench": secret})
    started = time.perf_counter()
    for headers in requests:
        verifier.verify("POST", path, [], headers, BODY)
    return (time.perf_counter() - started) / samples * 1e6


@dataclass
class Result:
    runs: list[WrkRun]
    auth_us: float

    @property
    def accepted(self) -> int:
        return sum(run.accepted for run in self.runs)

    @property
    def depth(self) -> int:
        return sum(run.depth for run in self.runs)

    @property
    def lost(self) -> int:
        return sum(run.lost for run in self.runs)

    def of(self, kind: str) -> list[WrkRun]:
        return [run for run in self.runs if run.kind == kind]

    def meets_targets(self) -> bool:
        """Nothing lost, and the median paced run meets the rate and p99 targets."""
        paced = self.of("paced")
        return (
            self.lost == 0
            and all(run.refused == 0 and run.errors == 0 for run in self.runs)
            and statistics.median(run.rate for run in paced) >= TARGET_RATE
            and statistics.median(run.p99 for run in paced) < TARGET_P99_MS
        )


async def measure(duration_s: int, connections: int, runs: int) -> Result:
    space = Namespace("gateway")
    process: asyncio.subprocess.Process | None = None
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        folder = Path(tmp)
        config = folder / "functions.toml"
        config.write_text(f'[functions.{FUNCTION}]\nhandler = "tests.bench.handlers:noop"\n')
        scripts = {"paced": write_script(folder, PACED_RATE), "max": write_script(folder, None)}
        try:
            await space.declare(functions.load(config).functions.values())
            process, url = await start_gateway(space, config, folder / "gateway.log")
            target = f"{url}/2023-03-30/functions/{FUNCTION}/invocations"
            say(f"gateway at {url}; warm-up {WARM_UP_S} s")
            await run_wrk("max", target, scripts["max"], WARM_UP_S, connections)
            await asyncio.sleep(1)
            await drain(space)
            envelope = Client(settings=space.settings).envelope(FUNCTION, BODY)[1]
            measured = []
            for number in range(1, runs + 1):
                say(f"run {number}/{runs}, bare: {connections} in flight, {duration_s} s")
                measured.append(await run_bare(space, envelope, duration_s, connections))
                for kind, script in scripts.items():
                    say(f"run {number}/{runs}, {kind}: {connections} connections, {duration_s} s")
                    cpu_before = process_cpu_s(process.pid)
                    run = await run_wrk(kind, target, script, duration_s, connections)
                    cpu_after = process_cpu_s(process.pid)
                    run.load = load_average()
                    if cpu_before is not None and cpu_after is not None and run.accepted:
                        run.cpu_us = (cpu_after - cpu_before) / (run.rate * duration_s) * 1e6
                    await asyncio.sleep(1)  # requests wrk gave up on at its end may still land
                    run.depth = await drain(space)
                    measured.append(run)
        finally:
            await stop_process(process)
            await space.cleanup()
    return Result(measured, signature_check_us())


def report(result: Result, duration_s: int, connections: int) -> str:
    lines = [
        f"gateway, async invoke over HTTP: wrk {WRK_THREADS} threads, {connections} "
        f"connections, {duration_s} s per run (after a {WARM_UP_S} s warm-up)",
        f"  {'run':<16}  {'req/s':>7}  {'p50 ms':>7}  {'p90 ms':>7}  {'p99 ms':>7}  "
        f"{'p99.9 ms':>8}  {'CPU/req':>8}  {'load':>5}  {'202s':>7}  {'queued':>7}",
    ]
    for number, run in enumerate(result.runs, start=1):
        p = run.percentiles_ms
        name = {"paced": f"paced {PACED_RATE:,}/s", "bare": f"bare {PACED_RATE:,}/s"}.get(
            run.kind, run.kind
        )
        cpu = f"{run.cpu_us:.0f} µs" if run.cpu_us is not None else "-"
        lines.append(
            f"  {(number + 2) // 3:>2} {name:<13}  {run.rate:>7,.0f}  {p['p50']:>7.2f}  "
            f"{p['p90']:>7.2f}  {run.p99:>7.2f}  {p['p99.9']:>8.2f}  {cpu:>8}  {run.load:>5.2f}  "
            f"{run.accepted:>7,}  {run.depth:>7,}"
        )
    refused = sum(run.refused for run in result.runs)
    errors = sum(run.errors for run in result.runs)
    lines += [
        f"  accepted (202s; confirms for bare) {result.accepted:,}, refused {refused}, "
        f"socket errors {errors}; in the queues {result.depth:,}; lost {result.lost}",
        f"  signature check: {result.auth_us:.1f} µs per request (in-process; the wrk runs "
        "are unsigned)",
        f"  targets (median paced run): >= {TARGET_RATE:,.0f} req/s, p99 < {TARGET_P99_MS:g} ms,"
        f" nothing lost => {'met' if result.meets_targets() else 'MISSED'}",
    ]
    return "\n".join(lines)


async def run(
    duration_s: int = DEFAULT_DURATION_S,
    connections: int = DEFAULT_CONNECTIONS,
    runs: int = DEFAULT_RUNS,
) -> list[Row]:
    """The rows for ``python -m tests.bench``; none, with a message, when wrk is missing."""
    if shutil.which("wrk") is None:
        say("gateway: skipped, wrk is not installed (Debian: apt-get install -y wrk)")
        return []
    result = await measure(duration_s, connections, runs)
    say(report(result, duration_s, connections))
    paced, saturated, bare = result.of("paced"), result.of("max"), result.of("bare")
    return [
        Row("gateway", "HTTP async invoke, max", "msg/s", ours=[r.rate for r in saturated]),
        Row("gateway", f"p99 at {PACED_RATE:,}/s", "ms", ours=[r.p99 for r in paced],
            bare=[r.p99 for r in bare], higher_is_better=False),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_gateway", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=int, default=DEFAULT_DURATION_S, metavar="S")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS, metavar="C")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, metavar="R")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "gateway benchmark skipped: wrk is not installed. On Debian or Ubuntu: "
            "apt-get install -y wrk",
            file=sys.stderr,
        )
        return 0
    result = asyncio.run(measure(args.duration, args.connections, args.runs))
    print(report(result, args.duration, args.connections))
    return 0 if result.meets_targets() else 1


if __name__ == "__main__":
    sys.exit(main())
