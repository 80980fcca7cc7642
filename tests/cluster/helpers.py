"""What the cluster tests share: records as they arrive, workers' nodes, hand-overs."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiohttp
import pytest

from asyncinvoke import AsyncInvokeError, Client, InvokeManyError, contract
from tests.conftest import WorkerProcess
from tests.support.cluster import NODES, amqp_port


@dataclass
class Seen:
    """Records as they arrive, by invocation id."""

    successes: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_at: float = 0.0

    def note(self, record: dict[str, Any], failed: bool) -> None:
        invocation_id = record["requestContext"]["requestId"]
        (self.failures if failed else self.successes)[invocation_id] += 1
        self.records[invocation_id] = record
        self.last_at = time.monotonic()

    def ended(self) -> set[str]:
        return set(self.successes) | set(self.failures)


async def consume(
    connection: aio_pika.abc.AbstractRobustConnection, queue_name: str, seen: Seen, failed: bool
) -> None:
    """Read ``queue_name`` into ``seen`` on a robust channel (restored after a failover)."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=500)
    queue = await channel.declare_queue(queue_name, passive=True)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        seen.note(contract.unpack(message.body), failed)
        await message.ack()

    await queue.consume(on_message)


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


async def hand_over_many(
    client: Client, function: str, payloads: list[Any], delay: float = 0
) -> list[str]:
    """Hand ``payloads`` over until every one was confirmed; the accepted ids."""
    accepted: list[str] = []
    pending = payloads
    deadline = time.monotonic() + 120
    while pending:
        assert time.monotonic() < deadline, "the cluster accepted nothing for 120 s"
        try:
            accepted += await client.invoke_many([(function, p) for p in pending], delay=delay)
            pending = []
        except InvokeManyError as exc:
            accepted += exc.accepted
            pending = pending[: len(exc.failed)]
            await asyncio.sleep(0.5)
        except AsyncInvokeError:
            await asyncio.sleep(0.5)
    return accepted


async def wait_until(predicate: Any, timeout: float, what: str, report: Any = None) -> float:
    """Await an async or plain predicate; the seconds it took, or fail naming ``what``."""
    began = time.monotonic()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            extra = f"\n{report()}" if report is not None else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what}{extra}")
        await asyncio.sleep(0.1)


def tail(workers: list[WorkerProcess], lines: int = 12) -> str:
    return "\n".join(
        f"worker {n}: " + "\n  ".join(line[:300] for line in worker.lines[-lines:])
        for n, worker in enumerate(workers)
    )


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
