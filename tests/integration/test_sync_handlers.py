"""Sync handlers that hang keep their own function's threads, never another function's.

A thread cannot be interrupted: a sync handler past its timeout is reported as a
timeout, and its thread runs on. When every function shared one pool, a function whose
handlers hang (a socket that never answers) took all of its threads, and the attempts of
every other function waited in the pool's queue until they timed out without having
started. Each function now has as many threads as its concurrency, and an attempt's
timeout counts from the moment a thread starts it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from asyncinvoke import Client, contract
from tests.conftest import Namespace, declare_queue, running_worker, wait_for
from tests.integration.helpers import Connection, RecordSink, by_request_id
from tests.support.handlers import CALLS, HANG_RELEASE


@pytest.fixture
def hung_handlers() -> Iterator[None]:
    """Handlers of ``sync_hang`` hang until the test ends (or sets HANG_RELEASE itself)."""
    HANG_RELEASE.clear()
    yield
    HANG_RELEASE.set()


async def test_a_function_whose_sync_handlers_hang_leaves_another_function_its_threads(
    namespace: Namespace, amqp: Connection, hung_handlers: None
) -> None:
    done = namespace.queue_name("done")
    await declare_queue(amqp, done)
    spec = namespace.functions(f"""
        [functions.stuck]
        handler = "tests.support.handlers:sync_hang"
        concurrency = 2
        timeout = 0.3
        max_retries = 0

        [functions.healthy]
        handler = "tests.support.handlers:sync_echo"
        concurrency = 2
        timeout = 5
        max_retries = 0
        on_success = "queue:{done}"
    """)
    failed = namespace.names.failed
    async with (
        running_worker(namespace, spec),
        Client(settings=namespace.settings) as client,
        RecordSink(amqp, done, failed) as sink,
    ):
        stuck = {await client.invoke("stuck", {"seconds": 60}) for _ in range(6)}
        # The first two attempts time out while their threads hang on, and the next ones
        # take their places: on one shared pool they took the rest of its threads too.
        await wait_for(lambda: len(sink.received[failed]) >= 2, 20, "two stuck timeouts")
        healthy = {await client.invoke("healthy", {"n": n}) for n in range(3)}
        await sink.wait_for_ids(healthy, timeout=30)
        stuck_started = [call for call in CALLS["stuck"] if call[0] in stuck]
        HANG_RELEASE.set()  # before the worker stops: its grace period waits for them

    successes = by_request_id(sink.received[done])
    failures = by_request_id(sink.received[failed])
    assert set(successes) == healthy, {
        request_id: record["responsePayload"]
        for request_id, (_, record) in failures.items()
        if request_id in healthy
    }
    for _, record in successes.values():
        assert record["requestContext"]["condition"] == contract.SUCCESS
    # Never more of stuck's handlers at once than its concurrency: the rest waited for
    # its own threads, and their timeouts had not started.
    assert len(stuck_started) == 2
    assert set(failures) <= stuck
    for _, record in failures.values():
        assert record["responsePayload"]["errorType"] == "TimeoutError"
