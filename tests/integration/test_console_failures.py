"""The console's failure pages against the real broker: a page is returned before its
browse has ended (the records going back and the lock's removal happen after), and
whatever comes next waits for that end: the queue is whole again, in order, and a dlq
command reads it."""

from __future__ import annotations

import aio_pika

from asyncinvoke import dlq, topology
from asyncinvoke.console.failures import PAGE_SIZE, FailureQueue
from tests.conftest import Namespace
from tests.integration.test_dlq import NOOP_FUNCTIONS, declare, failure_record, publish_records

RECORDS = 60


async def test_a_page_comes_before_its_browse_ends_and_the_queue_is_whole_after(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection
) -> None:
    await declare(namespace, amqp, NOOP_FUNCTIONS)
    published = await publish_records(
        amqp, namespace.names, (failure_record(i, "alpha") for i in range(RECORDS))
    )
    failures = FailureQueue(namespace.settings)
    try:
        page = await failures.page(PAGE_SIZE, None)
        assert [view.id for view in page.records] == published[PAGE_SIZE : 2 * PAGE_SIZE]
        assert (page.in_queue, page.has_more) == (RECORDS, True)
        # Returned while the browse still ends: it holds the console's lock meanwhile.
        assert failures.busy

        await failures.settled()
        assert not failures.busy
        assert await topology.queue_depth(amqp, namespace.names.failed) == RECORDS
        listed: list[str | None] = []
        # A dlq command's own browse: it would meet the lock (dlq.Busy) were it still there.
        await dlq.list_records(namespace.settings, dlq.ALL, lambda line: listed.append(line.id))
        assert listed == published  # every record back, in its order
    finally:
        await failures.close()
