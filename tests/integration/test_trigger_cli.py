"""``asyncinvoke trigger``, run as an operator runs it: create, list, get, update, delete,
``--json``, a refused expression that names the field, and the functions file's triggers."""

from __future__ import annotations

import asyncio
import json

import aio_pika

from asyncinvoke import topology
from asyncinvoke.broker import Broker
from tests.conftest import Namespace, write_functions
from tests.integration.test_cli_output import _run, cli


async def test_trigger_commands_manage_timers_and_sources_with_json_output(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection
) -> None:
    config = write_functions(
        namespace.tmp_path,
        """
        [functions.report]
        handler = "tests.support.handlers:echo"
        [[functions.report.triggers]]
        name = "nightly"
        type = "timer"
        cron = "CRON_TZ=Europe/Berlin 0 0 2 * * *"
        """,
    )
    loaded = namespace.functions(config.read_text())
    async with Broker(namespace.settings) as broker:
        await topology.declare(broker.publisher, namespace.names, loaded.functions.values())
    env = {"ASYNCINVOKE_CONFIG": str(config)}

    refused = await asyncio.to_thread(
        _run,
        namespace,
        ("trigger", "create", "report", "bad", "--type", "timer", "--cron", "0 * * * *"),
        env,
    )
    assert refused.returncode == 1 and "cronExpression" in refused.stderr

    created = json.loads(
        (
            await cli(
                namespace,
                "trigger",
                "create",
                "report",
                "every5",
                "--type",
                "timer",
                "--cron",
                "@every 5s",
                "--payload",
                "x",
                "--json",
                **env,
            )
        ).stdout
    )
    assert (created["functionName"], created["triggerName"], created["status"]) == (
        "report",
        "every5",
        "Ready",
    )
    assert json.loads(created["triggerConfig"])["cronExpression"] == "@every 5s"

    got = json.loads(
        (
            await cli(
                namespace,
                "trigger",
                "create",
                "report",
                "orders",
                "--type",
                "rabbitmq",
                "--queue",
                "nowhere",
                "--url",
                "amqp://guest:guest@127.0.0.1:5672/",
                "--batch-size",
                "10",
                "--json",
                **env,
            )
        ).stdout
    )
    assert got["status"] == "Unhealthy" and "nowhere" in got["statusReason"]
    assert "guest:guest" not in json.dumps(got)

    disabled = json.loads(
        (
            await cli(
                namespace, "trigger", "update", "report", "every5", "--disable", "--json", **env
            )
        ).stdout
    )
    assert disabled["status"] == "Disabled"
    assert json.loads(disabled["triggerConfig"])["payload"] == "x"

    lines = (await cli(namespace, "trigger", "list", "report", "--json", **env)).stdout
    listed = [json.loads(line) for line in lines.splitlines()]
    assert [t["triggerName"] for t in listed] == ["every5", "nightly", "orders"]
    assert listed[1]["triggerConfig"] == json.dumps(
        {"cronExpression": "CRON_TZ=Europe/Berlin 0 0 2 * * *", "payload": "", "enable": True},
        separators=(",", ":"),
    )

    await cli(namespace, "trigger", "delete", "report", "every5", **env)
    from_file = await asyncio.to_thread(
        _run, namespace, ("trigger", "delete", "report", "nightly"), env
    )
    assert from_file.returncode == 1 and "functions.toml" in from_file.stderr
