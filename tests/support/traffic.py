"""Mixed traffic through a disruption (a broker restart, a cluster node killed): records
read as they arrive, invocations handed over until the broker took them, and the wait
until every one has ended. Shared by the chaos and the cluster suites."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest

from asyncinvoke import AsyncInvokeError, Client, InvokeManyError, contract

HAND_OVER_GIVE_UP_S = 120.0
RECORDS_TIMEOUT_S = 60.0
# One invocation of a plan: function, payload, delay in seconds.
Planned = tuple[str, Any, float]


def functions_file(results: str, **more: str) -> str:
    """The functions file of the traffic: ``ok`` (echo), ``flaky`` (fails as often as its
    payload says) and ``doomed`` (always refuses), with ``more`` functions (name: handler
    of tests.support.handlers); every success recorded to the queue ``results``."""
    handlers = {"ok": "echo", **more, "flaky": "fail_until"}
    succeeding = "".join(
        f"""
        [functions.{name}]
        handler = "tests.support.handlers:{handler}"
        on_success = "queue:{results}"
        """
        for name, handler in handlers.items()
    )
    return textwrap.dedent(f"""
        [defaults]
        concurrency = 32
        backoff = {{ initial = 0.2, multiplier = 1.0, max = 0.5, jitter = 0.1 }}
        {succeeding}
        [functions.doomed]
        handler = "tests.support.handlers:refuse"
        """)


@dataclass
class Seen:
    """Records as they arrive, by invocation id."""

    successes: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # the last of each id
    last_at: float = 0.0

    def note(self, record: dict[str, Any], failed: bool) -> None:
        invocation_id = record["requestContext"]["requestId"]
        (self.failures if failed else self.successes)[invocation_id] += 1
        self.records[invocation_id] = record
        self.last_at = time.monotonic()

    def ended(self) -> set[str]:
        return set(self.successes) | set(self.failures)

    def condition(self, invocation_id: str) -> str:
        return str(self.records[invocation_id]["requestContext"]["condition"])


async def consume(
    connection: aio_pika.abc.AbstractRobustConnection, queue_name: str, seen: Seen, failed: bool
) -> None:
    """Read ``queue_name`` into ``seen``, declared (passively) on a robust channel so that
    the consumer is restored after a restart or a failover."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=500)
    queue = await channel.declare_queue(queue_name, passive=True)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        seen.note(contract.unpack(message.body), failed)
        await message.ack()

    await queue.consume(on_message)


async def hand_over_many(
    client: Client, function: str, payloads: list[Any], delay: float = 0
) -> list[str]:
    """Hand ``payloads`` over until every one was confirmed; the accepted ids."""
    accepted: list[str] = []
    pending = payloads
    deadline = time.monotonic() + HAND_OVER_GIVE_UP_S
    while pending:
        assert time.monotonic() < deadline, f"nothing accepted for {HAND_OVER_GIVE_UP_S:g} s"
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


async def send(client: Client, plan: Iterable[Planned]) -> dict[str, str]:
    """Hand ``plan`` over, grouped by (function, delay); invocation id → function."""
    groups: dict[tuple[str, float], list[Any]] = {}
    for function, payload, delay in plan:
        groups.setdefault((function, delay), []).append(payload)
    by_id: dict[str, str] = {}
    for (function, delay), payloads in groups.items():
        by_id.update(dict.fromkeys(await hand_over_many(client, function, payloads, delay),
                                   function))
    return by_id


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


async def until_all_ended(
    seen: Seen,
    sent: dict[str, str],
    recorded: Callable[[], Awaitable[int]],
    timeout: float,
    report: Callable[[str], str],
    doomed_function: str = "doomed",
) -> set[str]:
    """Wait until every invocation in ``sent`` but ``doomed_function``'s has succeeded, and
    then until ``recorded()`` (failure records, counted as the test sees fit) reaches the
    number of doomed ones; the doomed ids. ``report(missing)`` explains a timeout."""
    doomed = {i for i, function in sent.items() if function == doomed_function}
    succeeding = set(sent) - doomed
    await wait_until(
        lambda: succeeding <= set(seen.successes), timeout, "every invocation to succeed",
        lambda: report(f"{len(succeeding - set(seen.successes))} not succeeded"),
    )

    async def all_recorded() -> bool:
        return await recorded() >= len(doomed)

    await wait_until(all_recorded, RECORDS_TIMEOUT_S, "every failure record",
                     lambda: report(f"{len(doomed)} doomed"))
    return doomed
