"""The dead-letter tool and task mode while a node of the cluster is lost.

The node that leads the failure queue is killed (-9) as ``dlq export`` starts; the
export then runs, and ``dlq replay --all`` runs, with that node down. Task-mode
invocations are handed over across the kill. The failure queue ends with each failure
once (the tool's view), the export holds every record, and every task succeeds.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from asyncinvoke import Client, dlq
from asyncinvoke.tasks.states import Status
from tests.cluster.conftest import ClusterNamespace
from tests.cluster.helpers import tail
from tests.conftest import ROOT, WorkerProcess, write_functions
from tests.support.cluster import NODES, node_name
from tests.support.traffic import hand_over_many, wait_until

pytestmark = pytest.mark.timeout(240)

DOOMED = 300
TASKS = 200


def _dlq(space: ClusterNamespace, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncinvoke", "dlq", *args],
        env=space.env(), capture_output=True, text=True, timeout=120, cwd=str(ROOT),
    )


async def test_dlq_export_and_replay_and_task_mode_survive_a_node_loss(
    cluster_namespace: ClusterNamespace, cluster_amqp: Any, tmp_path: Path
) -> None:
    space = cluster_namespace
    cluster = space.cluster
    store = f"sqlite:///{tmp_path / 'tasks.db'}"
    config = write_functions(
        space.tmp_path,
        """
        [functions.doomed]
        handler = "tests.support.handlers:refuse"

        [functions.tasked]
        handler = "tests.support.handlers:echo"
        task_mode = true
        """,
    )
    space.functions(config.read_text())
    worker = await WorkerProcess(space, config, ASYNCINVOKE_TASK_STORE=store).start()
    settings = space.settings.with_overrides(task_store=store)
    try:
        async with Client(settings=settings) as client:
            doomed = await hand_over_many(client, "doomed", [{"n": n} for n in range(DOOMED)])

            async def recorded() -> bool:
                return (await dlq.stats(space.settings)).total >= DOOMED

            await wait_until(recorded, 60, "every failure record", lambda: tail([worker]))
            failed_queue = next(q for q in cluster.queues(space.names.failed)
                                if q["name"] == space.names.failed)
            victim = next(n for n in NODES if node_name(n) == failed_queue["leader"])
            export = tmp_path / "failed.jsonl"
            exporting = asyncio.create_task(asyncio.to_thread(_dlq, space, "export", str(export)))
            killed_at = time.monotonic()
            await asyncio.to_thread(cluster.kill, victim)
            tasks: list[str] = []
            for n in range(TASKS):
                task_id = f"task-{space.ns}-{n}"
                while True:
                    try:
                        tasks.append(await client.invoke("tasked", {"n": n}, id=task_id,
                                                         task=True))
                        break
                    except Exception as exc:
                        # Not confirmed: the task stays Enqueued; the same id is refused now
                        # (TaskExistsError), and the broker may have it after all.
                        if "already exists" in str(exc):
                            tasks.append(task_id)
                            break
                        await asyncio.sleep(0.2)
            exported = await exporting
            export_reruns = 0
            while exported.returncode != 0 and export_reruns < 3:
                export_reruns += 1  # a browse cut by the kill says so; run it again
                exported = await asyncio.to_thread(_dlq, space, "export", str(export))
            assert exported.returncode == 0, exported.stderr
            lines = [json.loads(line) for line in export.read_text().splitlines()]
            exported_ids = {line["record"]["requestContext"]["requestId"] for line in lines
                            if not line.get("duplicate")}
            replayed = await asyncio.to_thread(_dlq, space, "replay", "--all", "--json")
            replay_reruns = 0
            while replayed.returncode != 0 and replay_reruns < 3:
                replay_reruns += 1
                replayed = await asyncio.to_thread(_dlq, space, "replay", "--all", "--json")
            assert replayed.returncode == 0, replayed.stderr
            replay_s = time.monotonic() - killed_at
            task_store = await client.tasks()

            async def all_succeeded() -> bool:
                found = [await task_store.get(task_id) for task_id in tasks]
                return all(t is not None and t.status is Status.SUCCEEDED for t in found)

            await wait_until(all_succeeded, 90, "every task to succeed", lambda: tail([worker]))

            async def all_failed_again() -> bool:
                stats = await dlq.stats(space.settings)
                return stats.total >= DOOMED and stats.records >= DOOMED

            await wait_until(all_failed_again, 90, "the replayed invocations to fail again")
            await asyncio.sleep(2)  # late copies, if any, arrive now
            stats = await dlq.stats(space.settings)
            listed: list[dlq.Summary] = []
            await dlq.list_records(space.settings, dlq.ALL, listed.append)
            attempts = [(await task_store.get(task_id)) for task_id in tasks]
        print(
            f"\ndlq and task mode through the kill of node {victim} (the failure queue's "
            f"leader): export {len(lines)} lines for {len(exported_ids)} of {DOOMED} "
            f"failures ({export_reruns} reruns), replay done {replay_s:.1f} s after the kill "
            f"({replay_reruns} reruns); the failure queue then holds {stats.total} failures "
            f"in {stats.records} records ({stats.duplicates} duplicate copies); {TASKS} "
            f"tasks succeeded, "
            f"{sum(1 for t in attempts if t is not None and t.attempts > 1)} ran more than once"
        )
        assert exported_ids == set(doomed)
        assert {str(summary.id) for summary in listed} == set(doomed)
        assert stats.total == DOOMED
    finally:
        await worker.kill()
