"""A replay killed with -9 midway loses no record: each one is afterwards still in the
failure queue, or was replayed into its function's queue, or both."""

from __future__ import annotations

import asyncio
import sys

import aio_pika

from asyncinvoke import contract, topology
from tests.conftest import ROOT, Namespace, collect
from tests.integration.test_dlq import declare, failure_record, publish_records

RECORDS = 10_000
KILL_AFTER = 3_000  # replays confirmed in the function queue before the kill


async def _depth(connection: aio_pika.abc.AbstractConnection, queue: str) -> int:
    return await topology.queue_depth(connection, queue) or 0


async def _ids(connection: aio_pika.abc.AbstractConnection, queue: str, body_id: str) -> list[str]:
    """Drain ``queue`` and return the invocation id of each message, duplicates kept."""
    count = await _depth(connection, queue)
    if not count:
        return []
    messages = await collect(connection, queue, count, 60)
    return [contract.unpack(m.body)[body_id] if body_id else str(m.message_id) for m in messages]


async def test_a_replay_killed_midway_leaves_every_record_queued_or_replayed(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection
) -> None:
    await declare(namespace, amqp, '[functions.target]\nhandler = "tests.support.handlers:noop"\n')
    function_queue = namespace.names.function_queue("target")
    ids = await publish_records(
        amqp, namespace.names, (failure_record(i, "target") for i in range(RECORDS))
    )

    replay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncinvoke", "dlq", "replay", "--all",
        env=namespace.env(),
        cwd=str(ROOT),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            while await _depth(amqp, function_queue) < KILL_AFTER:
                assert replay.returncode is None, "the replay ended before it could be killed"
                await asyncio.sleep(0.02)
        replay.kill()
    finally:
        if replay.returncode is None:
            replay.kill()
        await replay.wait()
    replayed_at_kill = await _depth(amqp, function_queue)
    assert replayed_at_kill < RECORDS, "the replay finished before the kill"

    # The broker returns what the dead process held; wait until nothing is unaccounted for.
    async with asyncio.timeout(30):
        while await _depth(amqp, namespace.names.failed) + await _depth(amqp, function_queue) < (
            RECORDS
        ):
            await asyncio.sleep(0.05)
    kept = await _ids(amqp, namespace.names.failed, "")
    replayed = await _ids(amqp, function_queue, "id")

    assert len(set(replayed)) == len(replayed), "an invocation was replayed twice"
    missing = set(ids) - set(kept) - set(replayed)
    assert not missing, f"{len(missing)} records are gone, e.g. {sorted(missing)[:5]}"
    both = set(kept) & set(replayed)
    assert len(replayed) >= KILL_AFTER and kept, (len(replayed), len(kept))
    # "Possibly both" is bounded: about one slice of deferred acks and the publish window.
    assert len(both) <= 2_000, f"{len(both)} records were replayed and kept"
