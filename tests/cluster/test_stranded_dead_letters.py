"""Stranded dead-letters: a ladder level whose dead-letter worker RabbitMQ lost.

After a node's death, RabbitMQ 3.10 can leave a quorum queue's leader registered to a
dead-letter worker that no longer runs (seen here in about one failover run in three;
stranded.py). The delayed invocations in that level then never come out, and no column of
``list_queues`` shows them. Here the workers of the two levels a 2 s delay may pass
through (by the time it is published, less than 2 s may be left) are ended as RabbitMQ's
supervisor ends one; ``topology heal --check`` must name the level that holds them,
``topology heal`` must set its backlog moving, and every invocation must arrive.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from asyncinvoke import Client, topology
from tests.cluster.conftest import ClusterNamespace
from tests.conftest import ROOT, write_functions
from tests.support.cluster import NODES, node_name
from tests.support.traffic import wait_until

pytestmark = pytest.mark.timeout(180)

COUNT = 50


def _heal(space: ClusterNamespace, config: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncinvoke", "topology", "heal", "--json", "--config",
         str(config), "--rabbitmq-node", node_name(1), "--settle", "2", *args],
        env=space.env(), capture_output=True, text=True, timeout=120, cwd=str(ROOT),
    )


async def test_a_ladder_level_without_its_dead_letter_worker_is_found_and_healed(
    cluster_namespace: ClusterNamespace, cluster_amqp: Any
) -> None:
    space = cluster_namespace
    config = write_functions(space.tmp_path, """
        [functions.late]
        handler = "tests.support.handlers:noop"
        """)
    space.functions(config.read_text())
    subprocess.run([sys.executable, "-m", "asyncinvoke", "topology", "declare", "--config",
                    str(config)], env=space.env(), check=True, timeout=60, cwd=str(ROOT),
                   capture_output=True)
    levels = {space.names.level(0), space.names.level(1)}
    queue = space.names.function_queue("late")
    ran_on = {level: space.cluster.end_dead_letter_worker(level) for level in levels}

    async with Client(settings=space.settings) as client:
        ids = await client.invoke_many([("late", {"n": n}) for n in range(COUNT)], delay=2)
    assert len(ids) == COUNT

    # Their time is up, and none arrives: they wait in the levels, unseen by list_queues.
    await wait_until(lambda: any(f"{level} " in space.cluster.dead_letters(space.ns + ".")
                                 for level in levels), 20, "a level to hold the dead-letters")
    time.sleep(2)
    assert await topology.queue_depth(cluster_amqp, queue) == 0
    listed = {str(q["name"]): q for q in space.cluster.queues(space.ns + ".")}
    print(f"\nstranded: the workers ended on {ran_on}; "
          f"{space.cluster.dead_letters(space.ns + '.')}; list_queues shows the levels with "
          f"{[listed[level]['messages_ready'] for level in sorted(levels)]} ready")

    checked = _heal(space, config, "--check")
    assert checked.returncode == 1, checked.stderr
    report = json.loads(checked.stdout)
    stuck = {item["queue"]: item["held"] for item in report["stranded"]}
    assert stuck and set(stuck) <= levels and sum(stuck.values()) == COUNT, report

    # With another replica's node down, moving the leader would leave the level without
    # a majority: heal refuses, says why, and removes nothing.
    leader = report["stranded"][0]["leader"]
    other = next(n for n in NODES if node_name(n) != leader and n != 1)
    await asyncio.to_thread(space.cluster.stop_node, other)
    refused = _heal(space, config)
    assert refused.returncode == 1, refused.stderr
    refusal = json.loads(refused.stdout)
    assert node_name(other) in refusal["skipped"][report["stranded"][0]["queue"]], refusal
    await asyncio.to_thread(space.cluster.restart, other)
    members = {str(q["name"]): sorted(q["members"])  # type: ignore[call-overload]
               for q in space.cluster.queues(space.ns + ".")}
    assert all(members[level] == sorted(node_name(n) for n in NODES) for level in stuck)
    # A node's return may itself elect a new leader (and worker) for the level, and so
    # release the first batch; strand the levels again, with a second batch behind.
    for level in levels:
        space.cluster.end_dead_letter_worker(level)
    async with Client(settings=space.settings) as client:
        ids += await client.invoke_many([("late", {"n": n}) for n in range(COUNT)], delay=2)

    def held() -> int:
        return sum(int(n) for n in re.findall(r"num_discard(?:ed|_checked_out),(\d+)",
                                              space.cluster.dead_letters(space.ns + ".")))

    async def second_batch_stranded() -> bool:
        depth = await topology.queue_depth(cluster_amqp, queue) or 0
        waiting = held()
        return waiting >= COUNT and waiting + depth == 2 * COUNT

    await wait_until(second_batch_stranded, 20, "the second batch to strand")
    print(f"after the node's return: {2 * COUNT - held()} of the first batch arrived; "
          f"held {held()}")

    began = time.monotonic()
    healed = _heal(space, config)
    assert healed.returncode == 0, healed.stderr + healed.stdout
    moved = json.loads(healed.stdout)
    assert moved["stillHeld"] and not any(moved["stillHeld"].values()), moved
    assert set(moved["stillHeld"]) <= levels

    async def arrived() -> bool:
        return await topology.queue_depth(cluster_amqp, queue) == 2 * COUNT

    await wait_until(arrived, 30, f"the {2 * COUNT} invocations to reach {queue}")
    print(f"healed in {time.monotonic() - began:.1f} s (heal's own 2 s settle included): "
          f"{2 * COUNT} of {2 * COUNT} arrived")
    members = {str(q["name"]): sorted(q["members"])  # type: ignore[call-overload]
               for q in space.cluster.queues(space.ns + ".")}
    assert all(members[level] == sorted(node_name(n) for n in NODES) for level in levels)
    again = _heal(space, config, "--check")
    assert again.returncode == 0 and json.loads(again.stdout)["stranded"] == []
