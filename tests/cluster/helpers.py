"""What the cluster tests share: workers' nodes, health and logs (records as they arrive
and hand-overs are tests/support/traffic.py's)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import aiohttp

from tests.conftest import ROOT, WorkerProcess
from tests.support.cluster import NODES, amqp_port, node_name
from tests.support.suite_broker import NamespaceOn
from tests.support.traffic import Seen

STALL_S = 20.0  # no record for this long with some missing: heal, as an operator would


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def logged_node(worker: WorkerProcess, event: str = "broker_connected") -> int | None:
    """The node (1-3) a worker's last ``event`` line names, by its AMQP port."""
    for line in reversed(worker.lines):
        if f'"{event}"' in line:
            node = str(json.loads(line).get("node", ""))
            for n in NODES:
                if f":{amqp_port(n)}/" in node:
                    return n
    return None


async def readyz(port: int) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        return response.status, await response.json()


def tail(workers: list[WorkerProcess], lines: int = 12) -> str:
    return "\n".join(
        f"worker {n}: " + "\n  ".join(line[:300] for line in worker.lines[-lines:])
        for n, worker in enumerate(workers)
    )


def whereabouts(workers: list[WorkerProcess], ids: set[str], sent: dict[str, str],
                limit: int = 6) -> str:
    """For invocations that did not end: how many per function, and for a few of them
    every worker log line that names them (where each one was last seen)."""
    by_function = Counter(sent.get(i, "?") for i in ids)
    out = [f"missing by function: {dict(by_function)}"]
    for invocation_id in sorted(ids)[:limit]:
        lines = [
            f"  worker {n}: {line[:260]}"
            for n, worker in enumerate(workers)
            for line in worker.lines
            if invocation_id in line
        ]
        out.append(f"{invocation_id} ({sent.get(invocation_id)}):")
        out.extend(lines or ["  in no worker's log"])
    return "\n".join(out)


def warnings_seen(workers: list[WorkerProcess]) -> dict[str, int]:
    """How often each warning or error event appears in the workers' logs (diagnostics
    printed with a test's figures: a lost connection, a failed ack, a channel closed by
    the broker, a consumer cancelled)."""
    seen: Counter[str] = Counter()
    for worker in workers:
        for line in worker.lines:
            try:
                entry = json.loads(line)
            except ValueError:
                if "Error" in line or "CHANNEL_ERROR" in line:
                    seen[line.strip()[:80]] += 1
                continue
            if str(entry.get("level", "")) in ("warning", "error", "critical"):
                seen[str(entry.get("event", "?"))[:80]] += 1
    return dict(seen)


async def healed_if_stranded(
    space: NamespaceOn, config: Any, seen: Seen, succeeding: set[str]
) -> dict[str, int]:
    """What an operator does after a node's death (docs/cluster.md): when invocations stop
    arriving, ``asyncinvoke topology heal``. RabbitMQ 3.10 can lose a ladder level's
    dead-letter worker with the node (stranded.py): the delayed invocations in that level
    then wait for ever, lost to no one but arriving never. Run when nothing has arrived
    for STALL_S while some are missing; the queues it set moving and what each held."""
    last, last_change = len(seen.successes), time.monotonic()
    while not succeeding <= set(seen.successes):
        if len(seen.successes) != last:
            last, last_change = len(seen.successes), time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "asyncinvoke", "topology", "heal", "--json", "--config",
                 str(config), "--rabbitmq-node", node_name(1), "--settle", "5"],
                env=space.env(), capture_output=True, text=True, timeout=120, cwd=str(ROOT),
            )
            assert done.returncode == 0, done.stderr + done.stdout
            report = json.loads(done.stdout)
            return {item["queue"]: item["held"] for item in report["stranded"]}
        await asyncio.sleep(0.2)
    return {}
