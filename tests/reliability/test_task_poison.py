"""A task-mode poison message: one that kills its worker process every time it runs.

Its copy that comes back after a death meets the dead worker's claim on the task (it
holds until the attempt's timeout plus a margin) and is deferred through the ladder,
which makes it a new message. Deaths must still add up across those deferrals: after
``delivery_limit`` more deaths than the first, the poison ends as one
DeliveryLimitExceeded record and its task Failed, while the tasks sent with it succeed.
The worker is a subprocess, restarted each time the poison kills it. Both stores, and
both ways a poison ends: by the deaths its task counts (a delivery_limit of 2), and by
the suspect queue's own delivery limit, through {ns}.dead (a delivery_limit of 1).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asyncinvoke import Client, contract, ladder
from asyncinvoke.tasks.states import TERMINAL, Status
from asyncinvoke.tasks.store import Task, TaskStore
from asyncinvoke.tasks.tracker import LEASE_MARGIN_MS
from tests.conftest import Namespace, PoisonedWorker, declare_queue
from tests.integration.helpers import (
    Connection,
    RecordSink,
    assert_empty,
    assert_header,
    by_request_id,
    first_done,
)
from tests.support.poison import POISON_EXIT_STATUS
from tests.support.task_stores import KINDS, task_store_url

INNOCENTS = 6
TIMEOUT_S = 1  # the function's timeout: with the lease margin, how long a dead claim holds
# Between two deaths: the dead claim runs out, a restart, a hop through the ladder.
DEATH_CYCLE_S = TIMEOUT_S + LEASE_MARGIN_MS / 1000 + 30




async def _ended(store: TaskStore, task_id: str, timeout: float = 15) -> Task | None:
    """The task once it ended (its record is sent first), or as it is after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (task := await store.get(task_id)) is not None and task.status not in TERMINAL:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return task


@pytest.fixture(params=KINDS)
async def task_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with task_store_url(request.param, tmp_path) as url:
        yield url


@pytest.mark.parametrize(
    ("delivery_limit", "refusing_claims"),
    [
        # The claim after the last death finds one death too many, and gives up.
        pytest.param(2, 1, id="counted_by_its_task"),
        # The suspect queue delivers a suspect once (x-delivery-limit 0): its redelivery
        # after the second death is dead-lettered, and {ns}.dead ends the task.
        pytest.param(1, 0, id="dead_lettered_by_the_broker"),
    ],
)
async def test_a_task_mode_poison_ends_failed_with_one_delivery_limit_record(
    namespace: Namespace, amqp: Connection, task_store: str, delivery_limit: int,
    refusing_claims: int,
) -> None:
    succeeded = namespace.queue_name("succeeded")
    await declare_queue(amqp, succeeded)
    spec = namespace.functions(f"""
        [functions.fragile]
        handler = "tests.support.handlers:die_on_poison"
        task_mode = true
        delivery_limit = {delivery_limit}
        timeout = {TIMEOUT_S}
        on_success = "queue:{succeeded}"
    """)
    settings = namespace.settings.with_overrides(task_store=task_store)
    worker = PoisonedWorker(namespace, spec.path, ASYNCINVOKE_TASK_STORE=task_store)
    await worker.start()
    deaths = 0
    try:
        async with RecordSink(amqp, succeeded, namespace.names.failed) as sink, \
                Client(settings=settings) as client:
            payloads: list[dict[str, object]] = [{"n": n} for n in range(INNOCENTS)]
            payloads.insert(INNOCENTS // 2, {"poison": True})
            ids = [await client.invoke("fragile", payload, task=True) for payload in payloads]
            poison = ids[INNOCENTS // 2]
            budget = (delivery_limit + 2) * DEATH_CYCLE_S
            accounted = asyncio.ensure_future(sink.wait_for_ids(set(ids), budget))
            while True:
                assert worker.process is not None
                exited = asyncio.ensure_future(worker.process.wait())
                done = await first_done(accounted, exited, timeout=DEATH_CYCLE_S)
                if accounted in done:
                    exited.cancel()
                    accounted.result()
                    break
                assert done, (
                    f"no record and no death within {DEATH_CYCLE_S} s; without a record: "
                    f"{sorted(set(ids) - sink.request_ids())}; the worker's log:\n"
                    + "\n".join(worker.lines[-30:])
                )
                assert exited.result() == POISON_EXIT_STATUS, "\n".join(worker.lines[-20:])
                deaths += 1
                assert deaths <= delivery_limit + 1, (
                    f"the poison killed the worker {deaths} times: it is never isolated"
                )
                await worker.start()
            store = await client.tasks()
            task = await _ended(store, poison)
            # Each record is sent before its task ends: wait for the end, as for the poison.
            innocents = [await _ended(store, task_id) for task_id in set(ids) - {poison}]
            assert await worker.terminate() == 0
    finally:
        await worker.kill()
    names = namespace.names
    await assert_empty(
        amqp, names.dead, names.function_queue("fragile"), names.suspect_queue("fragile"),
        *(names.level(level) for level in range(ladder.LEVELS)),
    )
    assert deaths == delivery_limit + 1
    failed = by_request_id(sink.received[names.failed])  # fails on a second record
    assert set(failed) == {poison}
    message, record = failed[poison]
    assert_header(message, poison, "fragile", contract.DELIVERY_LIMIT_EXCEEDED)
    assert f"delivered {deaths} times" in record["responsePayload"]["errorMessage"]
    assert record["requestContext"]["approximateInvokeCount"] == deaths
    assert record["invocation"]["id"] == poison

    assert task is not None
    assert task.status is Status.FAILED
    assert (task.error or "").startswith(f"DeliveryLimitExceeded: delivered {deaths} times")
    statuses = [event.status.value for event in task.events]
    # One claim per death (and the claim that found one death too many, if any).
    assert statuses == ["Enqueued", *["Running"] * (deaths + refusing_claims), "Failed"]
    assert all(innocent is not None and innocent.status is Status.SUCCEEDED
               for innocent in innocents), innocents
