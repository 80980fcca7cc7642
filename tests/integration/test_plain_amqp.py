"""A producer that is not ours (pika) publishes exactly as SPEC section 4 says."""

from __future__ import annotations

import asyncio
import time

import msgpack
import pika

from tests.conftest import AMQP_URL, Namespace, collect, declare_queue, records_of, running_worker


def _publish_with_pika(exchange: str, envelopes: list[dict[str, object]]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for envelope in envelopes:
            channel.basic_publish(
                exchange=exchange,
                routing_key=str(envelope["fn"]),
                body=msgpack.packb(envelope),
                properties=pika.BasicProperties(
                    delivery_mode=2, content_type="application/msgpack"
                ),
                mandatory=True,
            )
    finally:
        connection.close()


async def test_invocations_published_with_pika_all_run(namespace: Namespace, amqp) -> None:
    results = namespace.queue_name("results")
    functions_file = namespace.functions(f"""
        [functions.echo]
        handler = "tests.support.handlers:echo"
        on_success = "queue:{results}"
    """)
    now_ms = time.time_ns() // 1_000_000
    envelopes: list[dict[str, object]] = [
        {"v": 1, "id": f"pika_{i}", "fn": "echo", "payload": {"i": i}} for i in range(200)
    ]
    # The optional keys, each once: a creation time, metadata, a delay, a nil payload.
    envelopes.append(
        {
            "v": 1,
            "id": "pika_meta",
            "fn": "echo",
            "payload": None,
            "created_at": now_ms,
            "meta": {"traceparent": "00-abc"},
        }
    )
    envelopes.append(
        {
            "v": 1,
            "id": "pika_delayed",
            "fn": "echo",
            "payload": "later",
            "created_at": now_ms,
            "delay": 1,
        }
    )
    async with running_worker(namespace, functions_file):
        await declare_queue(amqp, results)
        await asyncio.to_thread(_publish_with_pika, namespace.names.invoke, envelopes)
        got = records_of(await collect(amqp, results, len(envelopes), 30))
    by_id = {record["requestContext"]["requestId"]: record for record in got}
    assert set(by_id) == {str(envelope["id"]) for envelope in envelopes}
    assert by_id["pika_7"]["responsePayload"] == {"i": 7}
    assert by_id["pika_meta"]["invocation"]["meta"] == {"traceparent": "00-abc"}
    assert by_id["pika_meta"]["responsePayload"] is None
    delayed = by_id["pika_delayed"]
    assert delayed["responsePayload"] == "later"
    assert delayed["timestamp"] >= now_ms + 1000, "the delayed invocation ran early"
