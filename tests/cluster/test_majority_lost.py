"""Two of the three nodes stop: the cluster has lost its majority.

Quorum queues cannot confirm a publish without a majority, so ``Client.invoke`` fails
within its timeout saying the publish was not confirmed, the gateway answers 503, and a
worker holds without spinning. Once the nodes are back, every invocation confirmed
before the loss runs (those waiting in the delay ladder too), and the dead-letter tool
lists every failure record from before.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp
import pytest

from asyncinvoke import Client, PublishError, dlq
from asyncinvoke.gateway.app import Gateway
from tests.cluster.conftest import ClusterNamespace
from tests.cluster.helpers import free_port, healed_if_stranded, tail
from tests.conftest import WorkerProcess, declare_queue, write_functions
from tests.support.traffic import Seen, consume, hand_over_many, wait_until

pytestmark = pytest.mark.timeout(240)

DELAYED = 300
DOOMED = 50
PUBLISH_TIMEOUT_S = 5.0
IDLE_CPU_BOUND = 0.25  # of one core, for a worker that has nothing it can do


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_a_lost_majority_refuses_publishes_and_loses_nothing_confirmed(
    cluster_namespace: ClusterNamespace, cluster_amqp: Any
) -> None:
    space = cluster_namespace
    cluster = space.cluster
    results = space.queue_name("results")
    config = write_functions(
        space.tmp_path,
        f"""
        [functions.ok]
        handler = "tests.support.handlers:echo"
        on_success = "queue:{results}"

        [functions.doomed]
        handler = "tests.support.handlers:refuse"
        """,
    )
    file = space.functions(config.read_text())
    await declare_queue(cluster_amqp, results)
    worker = await WorkerProcess(space, config).start()
    settings = space.settings.with_overrides(publish_timeout_s=PUBLISH_TIMEOUT_S)
    seen = Seen()
    gateway = Gateway(settings, file, {})
    await gateway.start("127.0.0.1", free_port())
    try:
        await consume(cluster_amqp, results, seen, failed=False)
        async with Client(settings=settings) as client:
            doomed = await hand_over_many(client, "doomed", [{"n": n} for n in range(DOOMED)])
            # Confirmed, and due while the majority is away (stopping 2 nodes takes ~10 s).
            delayed = await hand_over_many(
                client, "ok", [{"n": n} for n in range(DELAYED)], delay=15
            )

            async def recorded() -> bool:
                return (await dlq.stats(space.settings)).total >= DOOMED

            await wait_until(recorded, 60, "the failure records before the loss")
            survivor = 1
            lost = [2, 3]
            stopped_at = time.monotonic()
            await asyncio.gather(*(asyncio.to_thread(cluster.stop_node, n) for n in lost))
            stop_s = time.monotonic() - stopped_at

            began = time.monotonic()
            with pytest.raises(PublishError) as refused:
                await client.invoke("ok", {"during": "the loss"})
            refused_s = time.monotonic() - began
            async with aiohttp.ClientSession() as http:
                began = time.monotonic()
                async with http.post(
                    f"{gateway.url}/2023-03-30/functions/ok/invocations", data=b"{}",
                    headers={"x-fc-invocation-type": "Async"},
                ) as response:
                    gateway_status, gateway_body = response.status, await response.json()
                gateway_s = time.monotonic() - began
            assert worker.process is not None
            cpu_before, idle_began = cpu_seconds(worker.process.pid), time.monotonic()
            await asyncio.sleep(4)
            idle_cpu = (cpu_seconds(worker.process.pid) - cpu_before) / (
                time.monotonic() - idle_began
            )
            assert worker.process.returncode is None, tail([worker])

            back_at = time.monotonic()
            await asyncio.gather(*(asyncio.to_thread(cluster.restart, n) for n in lost))
            restart_s = time.monotonic() - back_at
        healed = await healed_if_stranded(space, config, seen, set(delayed))
        await wait_until(lambda: set(delayed) <= set(seen.successes), 90,
                         "the confirmed invocations to run", lambda: tail([worker]))
        ran_after_s = seen.last_at - back_at
        stats = await dlq.stats(space.settings)
        listed: list[dlq.Summary] = []
        await dlq.list_records(space.settings, dlq.ALL, listed.append)
        print(
            f"\nmajority lost (nodes {lost} stopped in {stop_s:.1f} s, node {survivor} "
            f"alone): Client.invoke refused in {refused_s:.1f} s ({refused.value}); gateway "
            f"{gateway_status} in {gateway_s:.1f} s; idle worker CPU {idle_cpu:.0%} of a "
            f"core; nodes back in {restart_s:.1f} s; lost "
            f"{len(set(delayed) - set(seen.successes))} of {DELAYED} confirmed delayed "
            f"invocations, the last ran {ran_after_s:.1f} s after the restart began; dlq "
            f"lists {stats.total} of {DOOMED} failures ({stats.duplicates} duplicate copies); "
            f"stranded dead-letters set moving by `topology heal`: {healed or 'none'}"
        )
        assert "not confirmed" in str(refused.value)
        assert refused_s < PUBLISH_TIMEOUT_S + 3
        assert gateway_status == 503, gateway_body
        assert idle_cpu < IDLE_CPU_BOUND, f"the worker spins: {idle_cpu:.0%} of a core"
        assert {str(summary.id) for summary in listed} == set(doomed)
        assert stats.total == DOOMED
    finally:
        await gateway.stop()
        await worker.kill()
