"""Scale-out: the drain rate of no-op invocations with 1, 2 and 4 worker processes, on the
local 3-node cluster (each worker on a different node, replicas on all three) and on one
private node, for asyncinvoke and for Dramatiq, in one run with alternating rounds.

    .venv/bin/python -m tests.bench.bench_cluster [--n 10000] [--processes 1,2,4] [--rounds 2]
        [--only ours,dramatiq]

The worker processes are started on the empty queue; then N no-op tasks are handed over
(asyncinvoke: ``invoke_many``, 2,000 at a time, confirmed; Dramatiq: ``broker.enqueue``
from a thread, its default, unconfirmed). The clock runs from the first publish until
the queue holds no message, ready or unacknowledged (``rabbitmqctl list_queues``, polled
every 0.1 s); publishing overlaps draining, as in production.

Dramatiq declares classic queues; here it runs on quorum queues (``x-queue-type`` added to
its declarations, ``tests/bench/peers/dramatiq_app.QuorumBroker``), replicated like ours:
Dramatiq can, though it does not by default. Each Dramatiq worker is one process (8
threads, prefetch 200) given one node's URL.

Where the limit is: the CPU time of the RabbitMQ nodes (their Erlang VMs) and of the
worker processes over each drain, as a share of one core, next to the rate (the machine
has 2 cores, 200 %). The cluster is started with ``rabbitmq/cluster.sh`` if it does not
run, and stopped afterwards if it was started here; the single node is a private one
(tests/support/private_broker.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import psutil

from asyncinvoke import Client
from asyncinvoke.settings import Settings
from tests.support import cluster as local_cluster
from tests.support import private_broker

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
FUNCTIONS = """
[functions.noop]
handler = "tests.bench.handlers:noop"
concurrency = 200
"""
DRAMATIQ_THREADS = 8
DRAMATIQ_PREFETCH = 200
START_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 300.0


@dataclass
class Target:
    name: str
    urls: list[str]  # one per node
    ctl: Callable[..., str]
    beam_pids: list[int]


@dataclass
class Drain:
    seconds: float
    n: int
    broker_cpu: float  # share of one core, over the drain
    worker_cpu: float

    @property
    def rate(self) -> float:
        return self.n / self.seconds


def _depth(ctl: Callable[..., str], queue: str) -> tuple[int, int]:
    """(messages, consumers) of ``queue``; (-1, 0) while it does not exist."""
    out = ctl("list_queues", "name", "messages", "consumers", "--no-table-headers")
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == queue:
            return int(parts[1]), int(parts[2])
    return -1, 0


def _cpu(pids: list[int]) -> float:
    """CPU seconds of ``pids`` and their children (Dramatiq forks its worker process)."""
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for each in [process, *process.children(recursive=True)]:
                times = each.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


async def _until_drained(target: Target, queue: str, began: float) -> float:
    deadline = began + DRAIN_TIMEOUT_S
    while (await asyncio.to_thread(_depth, target.ctl, queue))[0] != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{queue} not drained within {DRAIN_TIMEOUT_S} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - began


async def _spawn(command: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *command, env=env, cwd=str(ROOT), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )


async def _stop(processes: list[asyncio.subprocess.Process]) -> None:
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)  # the whole group: Dramatiq's forked children too
        await process.wait()


async def drain_ours(target: Target, processes: int, n: int, workdir: Path) -> Drain:
    ns = f"bench{uuid.uuid4().hex[:8]}"
    config = workdir / f"{ns}.toml"
    config.write_text(FUNCTIONS)
    queue = f"{ns}.fn.noop"
    env = {**os.environ, "ASYNCINVOKE_NAMESPACE": ns, "ASYNCINVOKE_LOG_FORMAT": "json",
           "PYTHONPATH": str(ROOT)}
    all_urls = ",".join(target.urls)
    declare = subprocess.run(
        [sys.executable, "-m", "asyncinvoke", "topology", "declare", "--config", str(config)],
        env={**env, "ASYNCINVOKE_AMQP_URL": all_urls}, capture_output=True, timeout=60,
    )
    assert declare.returncode == 0, declare.stderr
    workers = [
        await _spawn(
            [sys.executable, "-m", "asyncinvoke", "worker", "--config", str(config)],
            {**env, "ASYNCINVOKE_AMQP_URL": target.urls[i % len(target.urls)]},
        )
        for i in range(processes)
    ]
    started = [asyncio.Event() for _ in workers]
    # Read every line: a worker logs one per attempt, and a full pipe would stop it.
    readers = [asyncio.create_task(_read(worker, event, b'"worker_started"'))
               for worker, event in zip(workers, started, strict=True)]
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            for event in started:
                await event.wait()
        pids = [worker.pid for worker in workers]
        # The workers wait on an empty queue; the clock runs from the first publish.
        async with Client(settings=Settings(amqp_url=all_urls, namespace=ns)) as client:
            cpu_broker, cpu_workers = _cpu(target.beam_pids), _cpu(pids)
            began = time.monotonic()
            for start in range(0, n, 2000):
                await client.invoke_many([("noop", None)] * min(2000, n - start))
        seconds = await _until_drained(target, queue, began)
        return Drain(seconds, n, (_cpu(target.beam_pids) - cpu_broker) / seconds,
                     (_cpu(pids) - cpu_workers) / seconds)
    finally:
        await _stop(workers)
        for reader in readers:
            reader.cancel()
        for name in (queue, f"{ns}.failed", f"{ns}.unrouted", f"{ns}.dead"):
            target.ctl("delete_queue", name)
        for level in range(17):
            target.ctl("delete_queue", f"{ns}.delay.{level}")


async def drain_dramatiq(target: Target, processes: int, n: int, workdir: Path) -> Drain:
    queue = f"bench-dq-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "BENCH_QUEUE": queue, "BENCH_QUORUM": "1", "PYTHONPATH": str(ROOT),
           "dramatiq_queue_prefetch": str(DRAMATIQ_PREFETCH)}
    workers = [
        await _spawn(
            [str(BIN / "dramatiq"), "tests.bench.peers.dramatiq_app", "--processes", "1",
             "--threads", str(DRAMATIQ_THREADS), "--worker-shutdown-timeout", "5000"],
            {**env, "BENCH_AMQP_URL": target.urls[i % len(target.urls)]},
        )
        for i in range(processes)
    ]
    readers = [asyncio.create_task(_read(worker, asyncio.Event(), b"")) for worker in workers]
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while (await asyncio.to_thread(_depth, target.ctl, queue))[1] < processes:
                await asyncio.sleep(0.2)
        pids = [worker.pid for worker in workers]
        cpu_broker, cpu_workers = _cpu(target.beam_pids), _cpu(pids)
        began = time.monotonic()
        await asyncio.to_thread(_enqueue_dramatiq, target.urls[0], queue, n)
        seconds = await _until_drained(target, queue, began)
        return Drain(seconds, n, (_cpu(target.beam_pids) - cpu_broker) / seconds,
                     (_cpu(pids) - cpu_workers) / seconds)
    finally:
        await _stop(workers)
        for reader in readers:
            reader.cancel()
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            target.ctl("delete_queue", name)


def _enqueue_dramatiq(url: str, queue: str, n: int) -> None:
    """N no-op messages for Dramatiq's bench actor, as its own producer sends them."""
    import dramatiq

    from tests.bench.peers.dramatiq_app import QuorumBroker

    broker = QuorumBroker(url=url)
    try:
        broker.declare_queue(queue)
        for _ in range(n):
            broker.enqueue(dramatiq.Message(
                queue_name=queue, actor_name="bench_noop", args=(0,), kwargs={}, options={},
            ))
    finally:
        broker.close()


async def _read(worker: asyncio.subprocess.Process, started: asyncio.Event,
                marker: bytes) -> None:
    assert worker.stderr is not None
    async for line in worker.stderr:
        if marker and marker in line:
            started.set()


def _beam_pids_of_cluster() -> list[int]:
    base = Path(os.environ.get("ASYNCINVOKE_CLUSTER_DIR", "/tmp/asyncinvoke-cluster"))
    return [int((base / f"n{n}" / "node.pid").read_text().strip()) for n in local_cluster.NODES]


SYSTEMS = {"ours": ("asyncinvoke", drain_ours), "dramatiq": ("Dramatiq (quorum)", drain_dramatiq)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="ours,dramatiq")
    args = parser.parse_args()
    counts = [int(p) for p in args.processes.split(",")]
    systems = args.only.split(",")
    started_here = False
    cluster = local_cluster.Cluster(down=set())
    if "down" in cluster.script("status"):
        cluster = local_cluster.start()
        started_here = True
    node = private_broker.start()
    targets = [
        Target("single node", [node.url], node.ctl,
               [int((node.base / "node.pid").read_text().strip())]),
        Target("3-node cluster", [local_cluster.node_url(i) for i in local_cluster.NODES],
               cluster.ctl, _beam_pids_of_cluster()),
    ]
    results: dict[tuple[str, int, str], list[Drain]] = defaultdict(list)
    try:
        with TemporaryDirectory() as tmp:
            for round_number in range(1, args.rounds + 1):
                for processes in counts:
                    for system in systems:
                        label, drain = SYSTEMS[system]
                        for target in targets:
                            result = await drain(target, processes, args.n, Path(tmp))
                            results[(system, processes, target.name)].append(result)
                            print(
                                f"round {round_number}: {label:18} {target.name:15} "
                                f"{processes} worker(s): {result.rate:,.0f}/s; broker CPU "
                                f"{result.broker_cpu:.0%}, workers CPU {result.worker_cpu:.0%} "
                                "of a core", flush=True,
                            )
    finally:
        node.stop()
        if started_here:
            cluster.stop()
    _table(results, counts, systems)


def _table(results: dict[tuple[str, int, str], list[Drain]], counts: list[int],
           systems: list[str]) -> None:
    def best(key: tuple[str, int, str]) -> Drain:
        return max(results[key], key=lambda d: d.rate)

    print("\n| system | workers | single node /s | 3-node cluster /s | cluster / single | "
          "broker CPU (cluster) | workers CPU (cluster) |\n|---|---|---|---|---|---|---|")
    for system in systems:
        for processes in counts:
            single = best((system, processes, "single node"))
            on_cluster = best((system, processes, "3-node cluster"))
            print(
                f"| {SYSTEMS[system][0]} | {processes} | {single.rate:,.0f} | "
                f"{on_cluster.rate:,.0f} | {on_cluster.rate / single.rate:.2f} | "
                f"{on_cluster.broker_cpu:.0%} | {on_cluster.worker_cpu:.0%} |"
            )
    print("(best of the rounds; CPU as a share of one core over the drain, 200 % = the "
          "whole 2-core machine; single-node CPU in the lines above)")


if __name__ == "__main__":
    asyncio.run(main())
