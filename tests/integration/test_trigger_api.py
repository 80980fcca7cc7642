"""FC's trigger API driven by the official SDK (alibabacloud-fc20230330): both kinds
created, listed, read, updated and deleted; a disabled or deleted timer ticks no more;
a bad expression is a 400 naming the field; the source URL never shows its password."""

from __future__ import annotations

import asyncio

import aio_pika
import orjson
import pytest
from alibabacloud_fc20230330 import models as fc
from alibabacloud_tea_openapi.exceptions import ClientException
from darabonba.runtime import RuntimeOptions

from tests.conftest import Namespace, declare_queue, running_worker
from tests.integration.test_gateway import call, running_gateway, sdk
from tests.integration.test_source_triggers import declare_plain

SECRET_URL = "amqp://guest:guest@127.0.0.1:5672/"


def create_input(name: str, kind: str, config: dict[str, object]) -> fc.CreateTriggerRequest:
    return fc.CreateTriggerRequest(
        body=fc.CreateTriggerInput(
            trigger_name=name, trigger_type=kind, trigger_config=orjson.dumps(config).decode()
        )
    )


class Ticks:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.arrived = asyncio.Event()

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        from asyncinvoke import contract

        self.ids.append(contract.unpack(message.body)["requestContext"]["requestId"])
        await message.ack()
        self.arrived.set()

    async def next(self, timeout: float = 5) -> None:
        self.arrived.clear()
        await asyncio.wait_for(self.arrived.wait(), timeout)


async def test_the_fc_sdk_creates_lists_updates_and_deletes_both_kinds_of_trigger(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection
) -> None:
    results, source = namespace.queue_name("results"), namespace.queue_name("src")
    await declare_queue(amqp, results)
    functions_file = namespace.functions(f"""
        [functions.tick]
        handler = "tests.support.handlers:echo"
        on_success = "queue:{results}"
        """)
    ticks = Ticks()
    channel = await amqp.channel()
    tag = await (await channel.get_queue(results, ensure=False)).consume(ticks.on_message)
    async with (
        running_worker(namespace, functions_file),
        running_gateway(namespace, functions_file) as gateway,
    ):
        client, options = sdk(gateway), RuntimeOptions()

        with pytest.raises(ClientException) as refused:
            await call(
                client.create_trigger_with_options,
                "tick",
                create_input("bad", "timer", {"cronExpression": "0 */5 * * *"}),
                {},
                options,
            )
        assert refused.value.status_code == 400 and "cronExpression" in refused.value.message

        created = await call(
            client.create_trigger_with_options,
            "tick",
            create_input(
                "beat", "timer", {"cronExpression": "@every 1s", "payload": "p", "enable": True}
            ),
            {},
            options,
        )
        assert created.body.trigger_name == "beat" and created.body.trigger_type == "timer"
        await ticks.next()
        await ticks.next()

        source_config = {"queueName": source, "url": SECRET_URL, "batchSize": 10, "batchWindow": 1}
        await call(
            client.create_trigger_with_options,
            "tick",
            create_input("orders", "rabbitmq", source_config),
            {},
            options,
        )
        got = await call(client.get_trigger_with_options, "tick", "orders", {}, options)
        assert got.body.status == "Unhealthy"  # the source queue does not exist yet
        assert "guest:guest" not in orjson.dumps(got.body.to_map()).decode()
        await declare_plain(amqp, source)
        got = await call(client.get_trigger_with_options, "tick", "orders", {}, options)
        assert got.body.status == "Ready"

        listed = await call(
            client.list_triggers_with_options, "tick", fc.ListTriggersRequest(limit=1), {}, options
        )
        assert [t.trigger_name for t in listed.body.triggers] == ["beat"]
        rest = await call(
            client.list_triggers_with_options,
            "tick",
            fc.ListTriggersRequest(next_token=listed.body.next_token),
            {},
            options,
        )
        assert [t.trigger_name for t in rest.body.triggers] == ["orders"]

        # Disable the timer: no more ticks.
        await call(
            client.update_trigger_with_options,
            "tick",
            "beat",
            fc.UpdateTriggerRequest(
                body=fc.UpdateTriggerInput(
                    trigger_config=orjson.dumps(
                        {"cronExpression": "@every 1s", "payload": "p", "enable": False}
                    ).decode()
                )
            ),
            {},
            options,
        )
        await asyncio.sleep(0.3)  # a tick already on its way
        seen = len(ticks.ids)
        await asyncio.sleep(2.2)
        assert len(ticks.ids) == seen
        # Enable it again: it ticks again (from now, not the ticks it missed).
        await call(
            client.update_trigger_with_options,
            "tick",
            "beat",
            fc.UpdateTriggerRequest(
                body=fc.UpdateTriggerInput(
                    trigger_config=orjson.dumps(
                        {"cronExpression": "@every 1s", "payload": "p", "enable": True}
                    ).decode()
                )
            ),
            {},
            options,
        )
        await ticks.next()
        assert len(ticks.ids) == seen + 1

        # Update the source's batch size; the redacted URL sent back keeps the secret.
        shown = orjson.loads(got.body.trigger_config)
        shown["runOptions"]["batchWindow"]["CountBasedWindow"] = 20
        updated = await call(
            client.update_trigger_with_options,
            "tick",
            "orders",
            fc.UpdateTriggerRequest(
                body=fc.UpdateTriggerInput(trigger_config=orjson.dumps(shown).decode())
            ),
            {},
            options,
        )
        assert (
            orjson.loads(updated.body.trigger_config)["runOptions"]["batchWindow"][
                "CountBasedWindow"
            ]
            == 20
        )
        assert updated.body.status == "Ready"
        stored = gateway.triggers.get("tick", "orders")
        assert stored.config.url == SECRET_URL  # type: ignore[union-attr]

        for name in ("beat", "orders"):
            await call(client.delete_trigger_with_options, "tick", name, {}, options)
        # Deleted: no more ticks.
        await asyncio.sleep(0.3)
        seen = len(ticks.ids)
        await asyncio.sleep(2.2)
        assert len(ticks.ids) == seen
        with pytest.raises(ClientException) as missing:
            await call(client.get_trigger_with_options, "tick", "beat", {}, options)
        assert missing.value.status_code == 404
        listed = await call(
            client.list_triggers_with_options, "tick", fc.ListTriggersRequest(), {}, options
        )
        assert listed.body.triggers == []
    await channel.close()
    assert tag
