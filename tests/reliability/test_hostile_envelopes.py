"""Internal envelope keys set by a producer are bounded: an InvalidMessage record, no loop.

'due_at' and 'attempt' are the service's own keys, but any AMQP producer can send
them. Before, due_at = 2**62 circled the delay ladder every 36 h forever, and an
attempt near 2**64 overflowed msgpack when a retry incremented it.
"""

from __future__ import annotations

from asyncinvoke import contract, ladder
from tests.conftest import Namespace, collect, running_worker, wait_for
from tests.integration.helpers import (
    Connection,
    assert_empty,
    attempts_of,
    by_request_id,
    publish_raw,
)


async def test_a_due_time_or_attempt_out_of_range_is_one_invalid_message_record(
    namespace: Namespace, amqp: Connection
) -> None:
    spec = namespace.functions("""
        [functions.flaky]
        handler = "tests.support.handlers:always_fail"
        max_retries = 8
        backoff = { initial = 0.05, multiplier = 1.0, max = 0.05, jitter = 0.0 }
    """)
    hostile = {
        "far_due": {"due_at": 2**62},
        "huge_attempt": {"attempt": 2**64 - 1},
    }
    async with running_worker(namespace, spec) as worker:
        for invocation_id, keys in hostile.items():
            wire = {"v": 1, "id": invocation_id, "fn": "flaky", "payload": None, **keys}
            await publish_raw(amqp, namespace.names, wire)
        records = by_request_id(await collect(amqp, namespace.names.failed, 2, timeout=30))
        await wait_for(lambda: not worker.in_flight, 15, "the worker to have nothing in flight")
    names = namespace.names
    await assert_empty(
        amqp,
        names.failed,
        names.function_queue("flaky"),
        names.suspect_queue("flaky"),
        *(names.level(level) for level in range(ladder.LEVELS)),
    )
    assert set(records) == set(hostile)
    for invocation_id, keys in hostile.items():
        _, record = records[invocation_id]
        assert record["requestContext"]["condition"] == contract.INVALID_MESSAGE
        (key,) = keys
        assert f"'{key}'" in record["responsePayload"]["errorMessage"]
        assert record["invocation"][key] == keys[key]  # kept as sent
        assert attempts_of("flaky", invocation_id) == []
