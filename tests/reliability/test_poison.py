"""A poison message: one that kills its worker process on every delivery.

The function queue's delivery limit must end it as a DeliveryLimitExceeded record
after a bounded number of deliveries, while the invocations sent alongside it
all succeed. Innocents running beside it when it first strikes die with it; from
then on it is a suspect and runs alone, so its later deaths take no innocent down.
The worker is a subprocess, restarted each time the poison kills it (and only a
death with the poison's own exit status counts).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from asyncinvoke import Client, contract
from tests.conftest import Namespace, PoisonedWorker, declare_queue
from tests.integration.helpers import (
    Connection,
    Incoming,
    RecordSink,
    assert_empty,
    assert_header,
    by_request_id,
    first_done,
)
from tests.support.poison import POISON_EXIT_STATUS

DELIVERY_LIMIT = 2
INNOCENTS = 20
# The isolation test: innocents sent with the poison, and again after each of its deaths,
# each running long enough to be mid-run when the poison strikes beside it.
WAVE = 6
INNOCENT_S = 1.0
RECORDS_TIMEOUT_S = 60.0  # from a start to the next death or the last record, suspects included




@dataclass
class PoisonRun:
    deaths: list[int]  # the worker processes (pids) the poison killed, in order
    poison: str
    innocents: set[str]
    successes: list[Incoming]
    failures: list[Incoming]


async def run_poison_among_innocents(
    namespace: Namespace,
    amqp: Connection,
    concurrency: int,
    *,
    innocents: int = INNOCENTS,
    innocent_s: float = 0.0,
    marks: Path | None = None,
    wave_after_each_death: bool = False,
) -> PoisonRun:
    """Send one poison among ``innocents`` invocations; restart the worker each time it
    dies (and, with ``wave_after_each_death``, send as many innocents again first).

    Returns once every invocation has a record and the worker stopped gracefully.
    """
    succeeded = namespace.queue_name("succeeded")
    await declare_queue(amqp, succeeded)
    spec = namespace.functions(f"""
        [functions.fragile]
        handler = "tests.support.poison:poison_or_sleep"
        delivery_limit = {DELIVERY_LIMIT}
        concurrency = {concurrency}
        on_success = "queue:{succeeded}"
    """)
    innocent: dict[str, object] = {"seconds": innocent_s}
    poisonous: dict[str, object] = {"poison": True}
    if marks is not None:
        innocent["marks"] = poisonous["marks"] = str(marks)
    worker = PoisonedWorker(namespace, spec.path)
    await worker.start()
    deaths: list[int] = []
    try:
        async with RecordSink(amqp, succeeded, namespace.names.failed) as sink:
            payloads = [innocent] * innocents
            payloads.insert(innocents // 2, poisonous)
            async with Client(settings=namespace.settings) as client:
                sent = await client.invoke_many([("fragile", payload) for payload in payloads])
                poison = sent[innocents // 2]
                ids = set(sent)
                while True:
                    assert worker.process is not None
                    exited = asyncio.ensure_future(worker.process.wait())
                    accounted = asyncio.ensure_future(sink.wait_for_ids(ids, RECORDS_TIMEOUT_S))
                    done = await first_done(accounted, exited, timeout=RECORDS_TIMEOUT_S)
                    if accounted in done:
                        exited.cancel()
                        accounted.result()
                        break
                    accounted.cancel()
                    assert done, f"no record and no death within {RECORDS_TIMEOUT_S} s"
                    status = exited.result()
                    assert status == POISON_EXIT_STATUS, (
                        f"the worker exited with {status}, not by the poison:\n"
                        + "\n".join(worker.lines[-20:])
                    )
                    deaths.append(worker.process.pid)
                    assert len(deaths) <= DELIVERY_LIMIT + 1, (
                        f"the poison killed the worker {len(deaths)} times"
                    )
                    if wave_after_each_death:
                        wave = [("fragile", innocent)] * innocents
                        ids.update(await client.invoke_many(wave))
                    await worker.start()
            assert await worker.terminate() == 0
    finally:
        await worker.kill()
    await assert_empty(
        amqp,
        namespace.names.dead,
        namespace.names.function_queue("fragile"),
        namespace.names.suspect_queue("fragile"),
    )
    return PoisonRun(
        deaths,
        poison,
        ids - {poison},
        sink.received[succeeded],
        sink.received[namespace.names.failed],
    )


def running_at_death(marks: Path, pid: int) -> set[str]:
    """The innocents that started in worker ``pid`` and never ended there: those it took
    down with it when it died."""
    started, ended = set(), set()
    for line in marks.read_text().splitlines():
        mark_pid, what, inv_id = line.split()
        if int(mark_pid) == pid:
            if what == "start":
                started.add(inv_id)
            elif what == "end":
                ended.add(inv_id)
    return started - ended


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

    assert len(run.deaths) == DELIVERY_LIMIT + 1
    assert succeeded_ids(run) == run.innocents
    failed = by_request_id(run.failures)
    assert set(failed) == {run.poison}
    message, record = failed[run.poison]
    assert_header(message, run.poison, "fragile", contract.DELIVERY_LIMIT_EXCEEDED)
    assert record["requestPayload"] == {"poison": True}
    assert record["responseContext"]["functionError"] == contract.UNHANDLED
    assert record["responsePayload"]["errorType"] == "DeliveryLimitExceeded"
    assert record["invocation"]["id"] == run.poison


async def test_once_a_poison_is_a_suspect_it_kills_no_innocent_running_beside_it(
    namespace: Namespace, amqp: Connection, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    run = await run_poison_among_innocents(
        namespace,
        amqp,
        concurrency=16,  # the default
        innocents=WAVE,
        innocent_s=INNOCENT_S,
        marks=marks,
        wave_after_each_death=True,
    )

    assert len(run.deaths) == DELIVERY_LIMIT + 1
    first, *later = run.deaths
    # The poison struck first in its function queue, beside innocents mid-run: they died.
    assert running_at_death(marks, first), "no innocent was running: the test proved nothing"
    # From then on it ran as a suspect, alone: its deaths took no innocent with them,
    # though a fresh wave of innocents waited in the function queue each time.
    for pid in later:
        killed = running_at_death(marks, pid)
        assert not killed, f"the poison, a suspect, took {sorted(killed)} down with worker {pid}"
    failed = by_request_id(run.failures)
    assert set(failed) == {run.poison}
    assert succeeded_ids(run) == run.innocents


async def test_the_delivery_limit_record_says_how_often_the_poison_ran(
    namespace: Namespace, amqp: Connection
) -> None:
    run = await run_poison_among_innocents(namespace, amqp, concurrency=1)

    _, record = by_request_id(run.failures)[run.poison]
    deaths = len(run.deaths)
    assert deaths == DELIVERY_LIMIT + 1
    assert f"delivered {deaths} times" in record["responsePayload"]["errorMessage"]
    assert record["requestContext"]["approximateInvokeCount"] == deaths
