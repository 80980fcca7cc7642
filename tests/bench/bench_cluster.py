"""Scale-out: the drain rate of no-op invocations with 1, 2 and 4 worker processes, on the
local 3-node cluster (each worker on a different node, replicas on all three) and on one
private node, in one run.

    .venv/bin/python -m tests.bench.bench_cluster [--n 10000] [--processes 1,2,4]

The worker processes are started on the empty function queue; then N invocations of an
async no-op are handed over (``invoke_many``, 2,000 at a time). The clock runs from the
first publish until the queue holds no message, ready or unacknowledged (``rabbitmqctl
list_queues``, polled every 0.1 s); publishing overlaps draining, as in production. The
cluster is started with ``rabbitmq/cluster.sh`` if it does not run, and stopped afterwards
if it was started here; the single node is a private one (tests/support/private_broker.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

from asyncinvoke import Client
from asyncinvoke.settings import Settings
from tests.support import cluster as local_cluster
from tests.support import private_broker

ROOT = Path(__file__).resolve().parent.parent.parent
FUNCTIONS = """
[functions.noop]
handler = "tests.bench.handlers:noop"
concurrency = 200
"""


def _depth(ctl: Callable[..., str], queue: str) -> int:
    out = ctl("list_queues", "name", "messages", "--no-table-headers")
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue:
            return int(parts[1])
    return -1


async def _drain(
    urls: list[str], client_url: str, ctl: Callable[..., str], processes: int, n: int,
    workdir: Path,
) -> tuple[float, int]:
    ns = f"bench{uuid.uuid4().hex[:8]}"
    config = workdir / f"{ns}.toml"
    config.write_text(FUNCTIONS)
    queue = f"{ns}.fn.noop"
    env = {**os.environ, "ASYNCINVOKE_NAMESPACE": ns, "ASYNCINVOKE_LOG_FORMAT": "json",
           "PYTHONPATH": str(ROOT)}
    declare = subprocess.run(
        [sys.executable, "-m", "asyncinvoke", "topology", "declare", "--config", str(config)],
        env={**env, "ASYNCINVOKE_AMQP_URL": client_url}, capture_output=True, timeout=60,
    )
    assert declare.returncode == 0, declare.stderr
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "asyncinvoke", "worker", "--config", str(config),
            env={**env, "ASYNCINVOKE_AMQP_URL": urls[i % len(urls)]},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=str(ROOT),
        )
        for i in range(processes)
    ]
    started = [asyncio.Event() for _ in workers]
    # Read every line: a worker logs one per attempt, and a full pipe would stop it.
    readers = [asyncio.create_task(_read(worker, event))
               for worker, event in zip(workers, started, strict=True)]
    try:
        async with asyncio.timeout(60):
            for event in started:
                await event.wait()
        # The workers wait on an empty queue; the clock runs from the first publish.
        async with Client(settings=Settings(amqp_url=client_url, namespace=ns)) as client:
            began = time.monotonic()
            for start in range(0, n, 2000):
                await client.invoke_many([("noop", None)] * min(2000, n - start))
            published_s = time.monotonic() - began
        while (await asyncio.to_thread(_depth, ctl, queue)) > 0:
            await asyncio.sleep(0.1)
        drained_s = time.monotonic() - began
        print(f"  (published in {published_s:.2f} s)", flush=True)
        return drained_s, n
    finally:
        for worker in workers:
            worker.kill()
            await worker.wait()
        for reader in readers:
            reader.cancel()
        ctl("delete_queue", queue)


async def _read(worker: asyncio.subprocess.Process, started: asyncio.Event) -> None:
    assert worker.stderr is not None
    async for line in worker.stderr:
        if b'"worker_started"' in line:
            started.set()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--processes", default="1,2,4")
    args = parser.parse_args()
    counts = [int(p) for p in args.processes.split(",")]
    started_here = False
    cluster = local_cluster.Cluster(down=set())
    if "down" in cluster.script("status"):
        cluster = local_cluster.start()
        started_here = True
    node = private_broker.start()
    rows: list[tuple[str, int, float, int]] = []
    try:
        with TemporaryDirectory() as tmp:
            for processes in counts:
                for target in ("single node", "3-node cluster"):
                    if target == "single node":
                        seconds, counted = await _drain(
                            [node.url], node.url, node.ctl, processes, args.n, Path(tmp))
                    else:
                        urls = [local_cluster.node_url(i) for i in local_cluster.NODES]
                        seconds, counted = await _drain(
                            urls, cluster.urls, cluster.ctl, processes, args.n, Path(tmp))
                    rows.append((target, processes, seconds, counted))
                    print(f"{target:15} {processes} worker(s): {counted} drained in "
                          f"{seconds:.2f} s = {counted / seconds:,.0f}/s", flush=True)
    finally:
        node.stop()
        if started_here:
            cluster.stop()
    print("\n| target | workers | drained/s |\n|---|---|---|")
    for target, processes, seconds, counted in rows:
        print(f"| {target} | {processes} | {counted / seconds:,.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
