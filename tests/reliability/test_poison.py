"""A poison message: one that kills its worker process on every delivery.

The function queue's delivery limit must end it as a DeliveryLimitExceeded record
after a bounded number of deliveries, while the invocations sent alongside it
all succeed. The worker is a subprocess, restarted each time the poison kills it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from asyncinvoke import Client, contract
from tests.conftest import Namespace, WorkerProcess, declare_queue
from tests.integration.helpers import (
    Connection,
    Incoming,
    RecordSink,
    assert_empty,
    assert_header,
    by_request_id,
    first_done,
)

DELIVERY_LIMIT = 2
INNOCENTS = 20
RECORDS_TIMEOUT_S = 45.0  # covers every restart: about 1 s each, at most DELIVERY_LIMIT + 1
POISON_EXIT_CODE = 1  # die_if_poison's os._exit(1)


class PoisonedWorker(WorkerProcess):
    """A worker the poison may kill before it reports that it started.

    The worker logs ``worker_started`` after it began consuming, and the poison is
    delivered first: a restarted worker can die before it says it is up. That death
    counts like any other; the test's loop notices the exit and starts it again.
    """

    async def start(self, timeout: float = 30.0) -> PoisonedWorker:
        try:
            await super().start(timeout)
        except pytest.fail.Exception:
            assert self.process is not None
            if self.process.returncode != POISON_EXIT_CODE:
                raise
        return self


@dataclass
class PoisonRun:
    deaths: int  # how many times the poison killed the worker
    poison: str
    innocents: set[str]
    successes: list[Incoming]
    failures: list[Incoming]


async def run_poison_among_innocents(
    namespace: Namespace, amqp: Connection, concurrency: int
) -> PoisonRun:
    """Send one poison among INNOCENTS invocations; restart the worker each time it dies.

    Returns once every invocation has a record and the worker stopped gracefully.
    """
    succeeded = namespace.queue_name("succeeded")
    await declare_queue(amqp, succeeded)
    spec = namespace.functions(f"""
        [functions.fragile]
        handler = "tests.support.handlers:die_if_poison"
        delivery_limit = {DELIVERY_LIMIT}
        concurrency = {concurrency}
        on_success = "queue:{succeeded}"
    """)
    worker = PoisonedWorker(namespace, spec.path)
    await worker.start()
    deaths = 0
    try:
        async with RecordSink(amqp, succeeded, namespace.names.failed) as sink:
            payloads: list[dict[str, object]] = [{"n": n} for n in range(INNOCENTS)]
            payloads.insert(INNOCENTS // 2, {"poison": True})
            async with Client(settings=namespace.settings) as client:
                ids = await client.invoke_many([("fragile", payload) for payload in payloads])
            accounted = asyncio.ensure_future(sink.wait_for_ids(set(ids), RECORDS_TIMEOUT_S))
            while True:
                assert worker.process is not None
                exited = asyncio.ensure_future(worker.process.wait())
                done = await first_done(accounted, exited, timeout=RECORDS_TIMEOUT_S)
                if accounted in done:
                    exited.cancel()
                    accounted.result()
                    break
                assert done, f"no record and no death within {RECORDS_TIMEOUT_S} s"
                assert exited.result() == POISON_EXIT_CODE, "\n".join(worker.lines[-20:])
                deaths += 1
                assert deaths <= DELIVERY_LIMIT + 1, f"the poison killed the worker {deaths} times"
                await worker.start()
            assert await worker.terminate() == 0
    finally:
        await worker.kill()
    await assert_empty(amqp, namespace.names.dead, namespace.names.function_queue("fragile"))
    poison = ids[INNOCENTS // 2]
    return PoisonRun(
        deaths,
        poison,
        set(ids) - {poison},
        sink.received[succeeded],
        sink.received[namespace.names.failed],
    )


def succeeded_ids(run: PoisonRun) -> set[str]:
    """The innocents that reported success. At least once: one that finished (its record
    confirmed) just before the poison killed the process had no acknowledgement out yet,
    so it runs, and reports, again. Even at concurrency 1 the consumer holds a second
    delivery (prefetch is twice the concurrency), which may be the poison."""
    return {contract.unpack(m.body)["requestContext"]["requestId"] for m in run.successes}


async def test_a_message_that_kills_its_worker_ends_as_delivery_limit_exceeded(
    namespace: Namespace, amqp: Connection
) -> None:
    run = await run_poison_among_innocents(namespace, amqp, concurrency=1)

    assert run.deaths == DELIVERY_LIMIT + 1
    assert succeeded_ids(run) == run.innocents
    failed = by_request_id(run.failures)
    assert set(failed) == {run.poison}
    message, record = failed[run.poison]
    assert_header(message, run.poison, "fragile", contract.DELIVERY_LIMIT_EXCEEDED)
    assert record["requestPayload"] == {"poison": True}
    assert record["responseContext"]["functionError"] == contract.UNHANDLED
    assert record["responsePayload"]["errorType"] == "DeliveryLimitExceeded"
    assert record["invocation"]["id"] == run.poison


async def test_innocents_in_flight_beside_a_poison_still_succeed(
    namespace: Namespace, amqp: Connection
) -> None:
    run = await run_poison_among_innocents(namespace, amqp, concurrency=16)  # the default

    assert run.deaths <= DELIVERY_LIMIT + 1
    failed = by_request_id(run.failures)
    assert set(failed) == {run.poison}
    assert succeeded_ids(run) == run.innocents


async def test_the_delivery_limit_record_says_how_often_the_poison_ran(
    namespace: Namespace, amqp: Connection
) -> None:
    run = await run_poison_among_innocents(namespace, amqp, concurrency=1)

    _, record = by_request_id(run.failures)[run.poison]
    assert run.deaths == DELIVERY_LIMIT + 1
    assert f"delivered {run.deaths} times" in record["responsePayload"]["errorMessage"]
    assert record["requestContext"]["approximateInvokeCount"] == run.deaths
