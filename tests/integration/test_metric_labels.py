"""Messages for functions nobody configured do not become metric labels.

A publisher chooses the routing key and the envelope of a message: unknown function
names counted each under a label of their own would be a time series per name, kept for
the life of the worker. They are counted under one label value instead.
"""

from __future__ import annotations

import uuid

import aio_pika
from prometheus_client.parser import text_string_to_metric_families

from asyncinvoke import contract
from asyncinvoke.metrics import OTHER_FUNCTION
from tests.conftest import Namespace, collect, running_worker
from tests.integration.helpers import Connection, publish_raw


async def test_unknown_and_undecodable_messages_are_counted_under_one_label_value(
    namespace: Namespace, amqp: Connection
) -> None:
    spec = namespace.functions("""
        [functions.echo]
        handler = "tests.support.handlers:echo"
    """)
    ghosts = [f"ghost_{uuid.uuid4().hex}" for _ in range(3)]
    async with running_worker(namespace, spec) as worker:
        for ghost in ghosts:
            envelope = {"v": 1, "id": ghost, "fn": ghost, "payload": 1}
            await publish_raw(amqp, namespace.names, envelope)
        channel = await amqp.channel()
        exchange = await channel.get_exchange(namespace.names.invoke, ensure=False)
        await exchange.publish(aio_pika.Message(b"\xc1not msgpack"), routing_key="garbage key")
        await channel.close()
        await collect(amqp, namespace.names.failed, 4, timeout=20)
        rendered = worker.metrics.render().decode()

    series = {
        (sample.labels["function"], sample.labels["condition"]): sample.value
        for family in text_string_to_metric_families(rendered)
        for sample in family.samples
        if sample.name == "asyncinvoke_failure_records_total"
    }
    assert series == {
        (OTHER_FUNCTION, contract.UNKNOWN_FUNCTION): 3,
        (OTHER_FUNCTION, contract.INVALID_MESSAGE): 1,
    }
    assert not any(ghost in rendered for ghost in ghosts)
    assert "garbage key" not in rendered
