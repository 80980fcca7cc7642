"""Scale-out: the drain rate of no-op invocations with 1, 2 and 4 worker processes, on the
local 3-node cluster (each worker on a different node, replicas on all three) and on one
private node, for asyncinvoke and for Dramatiq, in one run with alternating rounds.

    .venv/bin/python -m tests.bench.bench_cluster [--n 20000] [--processes 1,2,4] [--rounds 2]
        [--only ours,dramatiq] [--fill burst|trickle]

N no-op tasks are handed over first, by one producer for both systems: each system's own
message bodies (ours: ``Client.envelope``; Dramatiq: ``Message.encode``), published with
confirms and ``--fill``'s window of publishes in flight (burst: 1,000; trickle: 10, a
backlog that built up slowly). Then the worker processes are started. The clock runs from
the moment the queue has every worker as a consumer (a passive declare every 20 ms reads
the consumer count) until the queue holds no message, ready or unacknowledged, as its
leader counts them (``_EMPTY_AT``, polled on the broker every 5 ms). The rate counts the
messages ready when the clock starts: the first workers' prefetch taken before the last
one subscribed is drained in the window too but not counted, which underrates by at most
4 % (4 workers, 20,000).

The first version of this bench read the end from ``rabbitmqctl list_queues``. A quorum
queue publishes its counts there only on its tick (every 5 s on 3.10), so the end was
read 0-5 s late, depending on where the drain ended in the tick's cycle, and that phase
followed from how long the backlog took to make: ours was made with ``invoke_many``
(4.7 s for 10,000 in one measurement), Dramatiq's with its unconfirmed ``enqueue``, faster. A 2 s
drain of ours read as 5-7 s: "1,800/s whatever the worker count, with idle CPU". Both
systems now get the same producer and the live end.

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

import aio_pika
import psutil

from asyncinvoke import Client, clock, contract, topology
from asyncinvoke.functions import FunctionSpec
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
# Publishes in flight while the backlog is made (--fill): "burst" 1,000, "trickle" 10.
FILL_WINDOWS = {"burst": 1000, "trickle": 10}
FILL_WINDOW = FILL_WINDOWS["burst"]


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
    worker_wait: float = 0.0  # share of one core the workers spent runnable, waiting for a CPU
    worker_sleeps: float = 0.0  # the workers' voluntary context switches per message
    idle: float = 0.0  # the machine's idle CPU, share of one core (200 % = both idle)

    @property
    def rate(self) -> float:
        return self.n / self.seconds


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


def _sched(pids: list[int]) -> tuple[float, int]:
    """Seconds that the threads of ``pids`` (and their children) spent runnable but waiting
    for a CPU, and how often they went to sleep on their own (voluntary context switches:
    an event loop waiting for the socket). Together with the CPU time they say whether a
    worker is starved of CPU (it waits in the run queue, never sleeps) or starved of work
    (it sleeps, waiting for the broker)."""
    waited, sleeps = 0, 0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            tasks = [process, *process.children(recursive=True)]
        except psutil.Error:
            continue
        for each in tasks:
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{each.pid}/task"):
                    base = f"/proc/{each.pid}/task/{tid}"
                    waited += int(Path(f"{base}/schedstat").read_text().split()[1])
                    for line in Path(f"{base}/status").read_text().splitlines():
                        if line.startswith("voluntary_ctxt_switches:"):
                            sleeps += int(line.split()[1])
    return waited / 1e9, sleeps


def _idle() -> float:
    """The machine's idle CPU seconds so far (all cores)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return (int(fields[3]) + int(fields[4])) / os.sysconf("SC_CLK_TCK")


# Run on the broker (rabbitmqctl eval): poll the quorum queue's own count, ready and
# unacknowledged, every 5 ms on its leader, and give the wall-clock time (µs) at which it
# first read 0. ``list_queues`` will not do: a quorum queue publishes its counts there
# once per tick (5 s on 3.10), and an end read that late made a 2 s drain look like 7 s.
_EMPTY_AT = """
{ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue, <<"QUEUE">>)),
Server = amqqueue:get_pid(Q),
Poll = fun Poll(Left) ->
    {ok, {_, Overview}, _} = ra:local_query(Server, fun rabbit_fifo:overview/1),
    case maps:get(num_messages, Overview) of
        0 -> os:system_time(microsecond);
        _ when Left =< 0 -> timeout;
        _ -> timer:sleep(5), Poll(Left - 1)
    end
end,
Poll(LIMIT).
"""


def _empty_at(ctl: Callable[..., str], queue: str) -> float:
    """The wall-clock time at which ``queue`` first held no message, ready or not."""
    polls = int(DRAIN_TIMEOUT_S / 0.005)
    code = _EMPTY_AT.replace("QUEUE", queue).replace("LIMIT", str(polls))
    out = ctl("eval", code, timeout=DRAIN_TIMEOUT_S + 30).strip().splitlines()[-1]
    if not out.isdigit():
        raise RuntimeError(f"{queue} not drained within {DRAIN_TIMEOUT_S} s: {out}")
    return int(out) / 1e6


async def _drain_clocked(target: Target, queue: str, consumers: int,
                         pids: list[int]) -> Drain | None:
    """Once ``queue`` has ``consumers`` consumers, the time until it holds nothing, and the
    CPU the broker and ``pids`` used meanwhile. The consumers are counted over AMQP (a
    passive declare every 20 ms: cheap, unlike a rabbitmqctl run, which costs half a
    second of CPU); the end is read on the broker (``_EMPTY_AT``)."""
    connection = await aio_pika.connect(target.urls[0])
    try:
        channel = await connection.channel()
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                found = (await channel.declare_queue(queue, passive=True)).declaration_result
                if found.consumer_count >= consumers:
                    break
                await asyncio.sleep(0.02)
        began = time.time()
        cpu_broker, cpu_workers = _cpu(target.beam_pids), _cpu(pids)
        (waited, sleeps), idle = _sched(pids), _idle()
        n = found.message_count
        ended = await asyncio.to_thread(_empty_at, target.ctl, queue)
        # The CPU figures end a moment after the drain (the eval's return): a few ms.
        seconds = ended - began
        broker_cpu = _cpu(target.beam_pids) - cpu_broker
        worker_cpu = _cpu(pids) - cpu_workers
        (waited_end, sleeps_end), idle_end = _sched(pids), _idle()
        spent = time.time() - began
        return Drain(
            seconds, n, broker_cpu / spent, worker_cpu / spent,
            worker_wait=(waited_end - waited) / spent,
            worker_sleeps=(sleeps_end - sleeps) / max(n, 1),
            idle=(idle_end - idle) / spent,
        )
    finally:
        await connection.close()


async def _delete(url: str, queues: list[str]) -> None:
    connection = await aio_pika.connect(url)
    try:
        for name in queues:
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(name)
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.close()
    finally:
        await connection.close()


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
    async with Client(settings=Settings(amqp_url=all_urls, namespace=ns)) as client:
        now = clock.now_ms()
        envelopes = [client.envelope("noop", None, now_ms=now) for _ in range(n)]
    await _fill(target.urls[0], f"{ns}.invoke", "noop",
                [(envelope.id, body) for envelope, body in envelopes], contract.CONTENT_TYPE)
    workers = [
        await _spawn(
            [sys.executable, "-m", "asyncinvoke", "worker", "--config", str(config)],
            {**env, "ASYNCINVOKE_AMQP_URL": target.urls[i % len(target.urls)]},
        )
        for i in range(processes)
    ]
    # Read every line: a worker logs one per attempt, and a full pipe would stop it.
    readers = [asyncio.create_task(_read(worker)) for worker in workers]
    try:
        drain = await _drain_clocked(target, queue, processes, [w.pid for w in workers])
        assert drain is not None and drain.n > 0, drain
        return drain
    finally:
        await _stop(workers)
        for reader in readers:
            reader.cancel()
        names = topology.Names(ns)
        plans = [topology.core_plan(names), topology.functions_plan(names, [FunctionSpec("noop")])]
        # Every queue, those that hold state by design (QueueDecl.holds_state) too.
        await _delete(target.urls[0], [q.name for plan in plans for q in plan.queues])


async def drain_dramatiq(target: Target, processes: int, n: int, workdir: Path) -> Drain:
    queue = f"bench-dq-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "BENCH_QUEUE": queue, "BENCH_QUORUM": "1", "PYTHONPATH": str(ROOT),
           "dramatiq_queue_prefetch": str(DRAMATIQ_PREFETCH)}
    messages = await asyncio.to_thread(_dramatiq_messages, target.urls[0], queue, n)
    await _fill(target.urls[0], "", queue, messages, "application/json")
    workers = [
        await _spawn(
            [str(BIN / "dramatiq"), "tests.bench.peers.dramatiq_app", "--processes", "1",
             "--threads", str(DRAMATIQ_THREADS), "--worker-shutdown-timeout", "5000"],
            {**env, "BENCH_AMQP_URL": target.urls[i % len(target.urls)]},
        )
        for i in range(processes)
    ]
    readers = [asyncio.create_task(_read(worker)) for worker in workers]
    try:
        drain = await _drain_clocked(target, queue, processes, [w.pid for w in workers])
        assert drain is not None and drain.n > 0, drain
        return drain
    finally:
        await _stop(workers)
        for reader in readers:
            reader.cancel()
        await _delete(target.urls[0], [queue, f"{queue}.DQ", f"{queue}.XQ"])


def _dramatiq_messages(url: str, queue: str, n: int) -> list[tuple[str, bytes]]:
    """Declare Dramatiq's queue as Dramatiq does (quorum, with its delay and dead-letter
    queues); N no-op messages for its bench actor, encoded as its producer encodes them."""
    import dramatiq

    from tests.bench.peers.dramatiq_app import QuorumBroker

    broker = QuorumBroker(url=url)
    try:
        broker.declare_queue(queue, ensure=True)
    finally:
        broker.close()
    messages = [
        dramatiq.Message(queue_name=queue, actor_name="bench_noop", args=(0,), kwargs={},
                         options={})
        for _ in range(n)
    ]
    return [(message.message_id, message.encode()) for message in messages]


async def _fill(url: str, exchange: str, routing_key: str,
                messages: list[tuple[str, bytes]], content_type: str) -> None:
    """Publish ``messages`` (message id, body) persistently, with up to ``FILL_WINDOW``
    confirms outstanding: the same producer for both systems, so that both queues hold
    their backlog as the same pattern of writes (see the module's docstring)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        target = (channel.default_exchange if not exchange
                  else await channel.get_exchange(exchange, ensure=False))
        room = asyncio.Semaphore(FILL_WINDOW)

        async def one(message_id: str, body: bytes) -> None:
            async with room:
                await target.publish(aio_pika.Message(
                    body, message_id=message_id, content_type=content_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ), routing_key=routing_key)

        await asyncio.gather(*(one(message_id, body) for message_id, body in messages))
    finally:
        await connection.close()


async def _read(worker: asyncio.subprocess.Process) -> None:
    """Read a worker's log lines (a full pipe would stop it)."""
    assert worker.stderr is not None
    async for _ in worker.stderr:
        pass


def _beam_pids_of_cluster() -> list[int]:
    base = Path(os.environ.get("ASYNCINVOKE_CLUSTER_DIR", "/tmp/asyncinvoke-cluster"))
    return [int((base / f"n{n}" / "node.pid").read_text().strip()) for n in local_cluster.NODES]


SYSTEMS = {"ours": ("asyncinvoke", drain_ours), "dramatiq": ("Dramatiq (quorum)", drain_dramatiq)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="ours,dramatiq")
    parser.add_argument("--fill", choices=sorted(FILL_WINDOWS), default="burst")
    args = parser.parse_args()
    global FILL_WINDOW
    FILL_WINDOW = FILL_WINDOWS[args.fill]
    print(f"backlog made with {FILL_WINDOW} publishes in flight ({args.fill})", flush=True)
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
                                f"of a core, waiting for a CPU {result.worker_wait:.0%}, "
                                f"{result.worker_sleeps:.2f} sleeps/message; machine idle "
                                f"{result.idle:.0%}; load {os.getloadavg()[0]:.1f}", flush=True,
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
          "broker CPU (cluster) | workers CPU (cluster) | workers waiting for a CPU (cluster) "
          "| machine idle (cluster) |\n|---|---|---|---|---|---|---|---|---|")
    for system in systems:
        for processes in counts:
            single = best((system, processes, "single node"))
            on_cluster = best((system, processes, "3-node cluster"))
            print(
                f"| {SYSTEMS[system][0]} | {processes} | {single.rate:,.0f} | "
                f"{on_cluster.rate:,.0f} | {on_cluster.rate / single.rate:.2f} | "
                f"{on_cluster.broker_cpu:.0%} | {on_cluster.worker_cpu:.0%} | "
                f"{on_cluster.worker_wait:.0%} | {on_cluster.idle:.0%} |"
            )
    print("(best of the rounds; CPU as a share of one core over the drain, 200 % = the "
          "whole 2-core machine; single-node CPU in the lines above)")


if __name__ == "__main__":
    asyncio.run(main())
