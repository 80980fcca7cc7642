"""Bad input ends as a record with the right condition, once; the worker keeps serving
and never loops on it."""

from __future__ import annotations

import asyncio
import os

import aio_pika
import msgpack

from asyncinvoke import Client, contract, pipeline, records
from tests.conftest import Namespace, collect, declare_queue, records_of, running_worker
from tests.integration.helpers import assert_empty, assert_namespace_empty

# Absence cannot be waited for as an event: a loop shows within a few of its rounds, and
# a delivery that failed to settle comes round again after pipeline.SETTLE_RETRY_PAUSE_S.
QUIET_S = 3 * pipeline.SETTLE_RETRY_PAUSE_S


def _envelope(**fields: object) -> bytes:
    return msgpack.packb({"v": 1, "fn": "echo", "payload": None, **fields})


async def test_garbage_becomes_records_and_valid_work_goes_on(namespace: Namespace, amqp) -> None:
    results = namespace.queue_name("results")
    functions_file = namespace.functions(f"""
        [functions.echo]
        handler = "tests.support.handlers:echo"
        on_success = "queue:{results}"
    """)
    garbage: list[tuple[str, bytes, str, str]] = [
        # (routing key, body, expected condition, words the reason must contain)
        ("echo", os.urandom(64), contract.INVALID_MESSAGE, "not msgpack"),
        ("echo", b"", contract.INVALID_MESSAGE, "not msgpack"),
        ("echo", msgpack.packb([1, 2, 3]), contract.INVALID_MESSAGE, "must be a msgpack map"),
        ("echo", msgpack.packb({"v": 1, "fn": "echo"}), contract.INVALID_MESSAGE,
         "missing required key(s): id, payload"),
        ("echo", _envelope(id="bad_type", attempt="three"), contract.INVALID_MESSAGE,
         "'attempt' must be an integer"),
        ("echo", _envelope(id="bad_delay", delay=5000), contract.INVALID_MESSAGE,
         "between 0 and 3600 seconds"),
        ("echo", _envelope(id="bad id!"), contract.INVALID_MESSAGE, "'id' must match"),
        ("echo", _envelope(id="v2", v=2), contract.INVALID_MESSAGE, "'v' must be 1"),
        ("echo", _envelope(id="wrong_queue", fn="other"), contract.INVALID_MESSAGE,
         "arrived on the queue of 'echo'"),
        ("echo", _envelope(id="oversize", payload="x" * 20_000), contract.INVALID_MESSAGE,
         "over the limit of 10000 bytes"),
        ("ghost", _envelope(id="for_ghost", fn="ghost"), contract.UNKNOWN_FUNCTION,
         "no queue serves function 'ghost'"),
        ("ghost", os.urandom(32), contract.INVALID_MESSAGE, "not msgpack"),
    ]
    async with running_worker(namespace, functions_file, max_payload_bytes=10_000) as running:
        await declare_queue(amqp, results)
        channel = await amqp.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(namespace.names.invoke)
        valid_ids = []
        async with Client(settings=namespace.settings) as client:
            for index, (key, body, _, _) in enumerate(garbage):
                await exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                     message_id=f"garbage_{index}"),
                    routing_key=key,
                )
                valid_ids.append(await client.invoke("echo", {"after": index}))
        failed = records_of(await collect(amqp, namespace.names.failed, len(garbage), 30))
        succeeded = records_of(await collect(amqp, results, len(valid_ids), 30))
        await asyncio.sleep(QUIET_S)
        assert not running.stopping
        assert not running.in_flight, "the worker is still busy with bad input"
        await assert_empty(amqp, namespace.names.failed, results)  # no second record
    # Stopped: a delivery it held unacknowledged is back in its queue, and would show.
    await assert_namespace_empty(amqp, namespace.names, ["echo"])
    assert {r["requestContext"]["requestId"] for r in succeeded} == set(valid_ids)
    assert sorted(r["requestContext"]["condition"] for r in failed) == sorted(
        condition for _, _, condition, _ in garbage
    )
    reasons = [r["responsePayload"]["errorMessage"] for r in failed]
    for _, _, _, words in garbage:
        assert any(words in reason for reason in reasons), f"no record says {words!r}"
    # Nothing is lost: undecodable bodies travel whole in the record, for replay.
    raw_bodies = {r["invocation"] for r in failed if isinstance(r["invocation"], bytes)}
    assert garbage[0][1] in raw_bodies
    oversize = next(r for r in failed if "over the limit" in r["responsePayload"]["errorMessage"])
    # ...but an oversized one only in part: its start, and its size.
    assert oversize["invocation"] == garbage[9][1][: records.OVERSIZE_KEPT_BYTES]
    assert oversize[contract.INVOCATION_BYTES] == len(garbage[9][1])
    ghost = next(r for r in failed if r["requestContext"]["condition"] == "UnknownFunction")
    assert ghost["requestContext"]["requestId"] == "for_ghost"
    assert ghost["invocation"]["fn"] == "ghost"
