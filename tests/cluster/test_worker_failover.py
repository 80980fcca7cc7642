"""Kill -9 the node a worker is connected to, mid-stream, on a real 3-node cluster.

Two worker processes list the three nodes and start on different ones. 5,000
invocations are in flight (most immediate, some delayed 1-5 s, some failing once,
some failing for good). The node that holds most queue leaders, among the workers'
nodes, is killed with ``kill -9`` of its Erlang VM. Every invocation runs, no delay
runs early, the dead-letter tool shows each failure once, the workers resume within a
bounded time, and once the node is back and has rejoined, nothing is stuck anywhere.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from asyncinvoke import Client, dlq, topology
from tests.cluster.conftest import ClusterNamespace
from tests.cluster.helpers import (
    free_port,
    healed_if_stranded,
    logged_node,
    readyz,
    tail,
    warnings_seen,
    whereabouts,
)
from tests.conftest import WorkerProcess, declare_queue, write_functions
from tests.support.traffic import (
    Planned,
    Seen,
    consume,
    functions_file,
    send,
    until_all_ended,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)

TOTAL = 5000
RESUME_BOUND_S = 30.0  # from the kill to records flowing again
DRAIN_TIMEOUT_S = 150.0


def _plan(count: int) -> list[Planned]:
    """60% at once, 15% delayed 1-5 s, 15% fail once, 10% fail for good."""
    plan: list[Planned] = []
    for n in range(count):
        kind = n % 20
        if kind < 12:
            plan.append(("ok", {"n": n}, 0))
        elif kind < 15:
            plan.append(("late", {"n": n}, 1 + n % 5))
        elif kind < 18:
            plan.append(("flaky", {"fail_times": 1}, 0))
        else:
            plan.append(("doomed", {"n": n}, 0))
    return plan


def _channels(cluster: Any) -> str:
    """Each node's channels: number, unacknowledged, prefetch, consumers, state."""
    out = []
    for n in cluster.up():
        try:
            out.append(f"node {n}: " + cluster.ctl(
                "list_channels", "connection", "number", "messages_unacknowledged",
                "prefetch_count", "consumer_count", node=n, timeout=20,
            ).strip().replace("\n", "; "))
        except Exception as exc:  # a diagnostic only
            out.append(f"node {n}: {exc}")
    return " | ".join(out)


def _dead_letters(cluster: Any, prefix: str) -> str:
    try:
        return str(cluster.dead_letters(prefix))
    except Exception as exc:  # a diagnostic only
        return repr(exc)


def _holding(queues: list[dict[str, object]]) -> list[dict[str, object]]:
    return [q for q in queues if q["messages_ready"] or q["messages_unacknowledged"]]


async def _start_on_distinct_nodes(
    space: ClusterNamespace, config: Any, ports: list[int]
) -> list[WorkerProcess]:
    """Two workers on different nodes. Each picks its first node at random, so the
    second is started again (at most 8 times) while it lands on the first one's node."""
    first = await WorkerProcess(space, config, "--metrics-port", str(ports[0])).start()
    for _ in range(8):
        second = await WorkerProcess(space, config, "--metrics-port", str(ports[1])).start()
        if logged_node(second) != logged_node(first):
            return [first, second]
        await second.kill()
    pytest.fail("8 workers in a row started on the first worker's node")


async def test_a_killed_node_loses_nothing_and_the_workers_fail_over(
    cluster_namespace: ClusterNamespace, cluster_amqp: Any
) -> None:
    space = cluster_namespace
    cluster = space.cluster
    results = space.queue_name("results")
    config = write_functions(space.tmp_path, functions_file(results, late="started_at"))
    space.functions(config.read_text())
    await declare_queue(cluster_amqp, results)
    ports = [free_port(), free_port()]
    workers = await _start_on_distinct_nodes(space, config, ports)
    nodes = [logged_node(worker) for worker in workers]
    status, body = await readyz(ports[0])
    assert status == 200 and f":{5680 + nodes[0]}/" in body["broker"], body  # type: ignore[operator]
    assert "guest:guest" not in body["broker"]
    seen = Seen()
    plan = _plan(TOTAL)
    try:
        await consume(cluster_amqp, results, seen, failed=False)
        async with Client(settings=space.settings) as client:
            started = time.monotonic()
            sent = await send(client, plan[: TOTAL // 2])
            await wait_until(lambda: len(seen.ended()) >= TOTAL // 8, 60,
                             "progress before the kill", lambda: tail(workers))
            leaders = cluster.leaders(space.ns + ".")
            victim = max((n for n in nodes if n is not None), key=lambda n: leaders[n])
            on_victim = [w for w, n in zip(workers, nodes, strict=True) if n == victim]
            in_flight_at_kill = len(sent) - len(seen.ended() & set(sent))
            ended_at_kill = len(seen.ended())
            killed_at = time.monotonic()
            await asyncio.to_thread(cluster.kill, victim)
            resumed_s = await wait_until(
                lambda: len(seen.ended()) >= ended_at_kill + 200, RESUME_BOUND_S,
                "records to flow again after the kill", lambda: tail(workers),
            )
            reconnected_s = await wait_until(
                lambda: all(logged_node(w, "broker_reconnected") not in (None, victim)
                            for w in on_victim),
                RESUME_BOUND_S, "the victim's worker to connect to another node",
                lambda: tail(workers),
            )
            reconnected_s += resumed_s
            restart = asyncio.create_task(asyncio.to_thread(cluster.restart, victim))
            sent.update(await send(client, plan[TOTAL // 2:]))
            await restart
            rejoined_s = time.monotonic() - killed_at
        doomed_ids = {i for i, function in sent.items() if function == "doomed"}
        healed = await healed_if_stranded(space, config, seen, set(sent) - doomed_ids)
        # The dead-letter tool's view counts the failure records.
        async def recorded() -> int:
            return (await dlq.stats(space.settings)).total

        doomed = await until_all_ended(
            seen, sent, recorded, DRAIN_TIMEOUT_S,
            lambda missing: f"{missing}; queues holding messages: "
            f"{_holding(cluster.queues(space.ns + '.'))}; workers' warnings: "
            f"{warnings_seen(workers)}; quorum queues' own counts: "
            f"{_dead_letters(cluster, space.ns + '.')}; channels: {_channels(cluster)}\n"
            f"{whereabouts(workers, set(sent) - set(seen.successes) - doomed_ids, sent)}\n"
            f"{tail(workers)}",
        )
        await wait_until(lambda: cluster.running_nodes() == {1, 2, 3}, 60, "the node to rejoin")
        stats = await dlq.stats(space.settings)
        listed: list[dlq.Summary] = []
        await dlq.list_records(space.settings, dlq.ALL, listed.append)
        listed_ids = Counter(str(summary.id) for summary in listed)

        # Nothing stuck: every queue of the namespace is empty but the failure queue and
        # those that hold state by design (the leader's baton, the configuration log).
        keep = {space.names.failed} | {
            queue.name for queue in topology.core_plan(space.names).queues if queue.holds_state
        }

        async def settled() -> bool:
            queues = await asyncio.to_thread(cluster.queues, space.ns + ".")
            return all(
                int(q["messages_ready"]) + int(q["messages_unacknowledged"]) == 0  # type: ignore[call-overload]
                for q in queues if q["name"] not in keep
            )

        await wait_until(settled, 30, "every queue to drain",
                         lambda: _holding(cluster.queues(space.ns + ".")))
        queues = cluster.queues(space.ns + ".")
        early = [
            i for i, record in seen.records.items()
            if sent.get(i) == "late"
            and record["responsePayload"]
            < record["invocation"]["created_at"] + record["invocation"]["delay"] * 1000
        ]
        lost = set(sent) - set(seen.successes) - set(listed_ids)
        duplicates = sum(n - 1 for n in seen.successes.values())
        print(
            f"\nnode kill (worker failover): {len(sent)} accepted, lost {len(lost)}, "
            f"success duplicates {duplicates}, failure records {stats.records} for "
            f"{len(doomed)} doomed ({stats.duplicates} duplicate copies, collapsed by the "
            f"tool), {in_flight_at_kill} in flight at the kill of node {victim} "
            f"(leaders {dict(leaders)}), records flowing again {resumed_s:.1f} s after "
            f"the kill, its worker reconnected within {reconnected_s:.1f} s, node back "
            f"and rejoined {rejoined_s:.1f} s after the kill, all done "
            f"{seen.last_at - started:.1f} s after the first publish; stranded "
            f"dead-letters set moving by `topology heal`: {healed or 'none'}; workers' warnings "
            f"{warnings_seen(workers)}"
        )
        assert not lost, f"{len(lost)} lost, e.g. {sorted(lost)[:5]}"
        assert not early, f"{len(early)} delayed invocations ran early, e.g. {early[:3]}"
        assert set(listed_ids) == doomed and all(n == 1 for n in listed_ids.values())
        assert stats.total == len(doomed)
        assert not set(seen.failures), "a failure reached the results queue"
        assert all(
            sorted(q["members"]) == [f"ai-cluster-{n}@localhost" for n in (1, 2, 3)]  # type: ignore[call-overload]
            for q in queues
        ), queues
        for port in ports:
            assert (await readyz(port))[0] == 200
    finally:
        for worker in workers:
            await worker.kill()
