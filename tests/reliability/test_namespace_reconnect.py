"""What a reconnect restores, and what it must not: on the shared broker, only the
worker's own connection is dropped (found by its client-provided name).

A namespace an operator deleted while a worker (or a gateway) ran stays deleted through
its reconnect, and readiness says what is missing; declared again, it is consumed again.
With the namespace in place, a reconnect restores the consumers, the timers' leader
(the baton) and the configuration stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq
import pytest

from asyncinvoke import Client, contract, subscription, topology
from asyncinvoke.broker import Broker
from asyncinvoke.docstore import DocumentStore
from asyncinvoke.gateway import Gateway
from asyncinvoke.liveconfig.live import LiveConfig
from asyncinvoke.worker import Worker
from tests.conftest import AMQP_URL, Namespace, collect, declare_queue, records_of, wait_for
from tests.support.connections import close_connections_named, named_worker

FUNCTIONS = """
    [functions.echo]
    handler = "tests.support.handlers:echo"
    on_success = "queue:{results}"
    [functions.tick]
    handler = "tests.support.handlers:echo"
    on_success = "queue:{ticks}"
    [[functions.tick.triggers]]
    name = "beat"
    type = "timer"
    cron = "@every 1s"
"""


async def drop_and_reconnect(process: Worker | Gateway) -> None:
    """Close the process's connection on the broker; return once it is restored."""
    broker = process.broker if isinstance(process, Worker) else process.client.broker
    connection: Any = broker.connection
    before = connection.connection_attempt
    assert await close_connections_named(broker.name, "asyncinvoke test: drop") == 1
    await wait_for(
        lambda: connection.connection_attempt > before and broker.is_connected,
        30,
        "the connection restored",
    )


async def exists(connection: aio_pika.abc.AbstractConnection, kind: str, name: str) -> bool:
    async with connection.channel() as channel:
        underlay = await channel.get_underlay_channel()
        try:
            if kind == "queue":
                await underlay.queue_declare(name, passive=True)
            else:
                await underlay.exchange_declare(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
    return True


async def anything_of(
    connection: aio_pika.abc.AbstractConnection, plans: list[topology.Plan]
) -> list[str]:
    """The queues and exchanges of ``plans`` that exist."""
    found = []
    for plan in plans:
        for queue in plan.queues:
            if await exists(connection, "queue", queue.name):
                found.append(queue.name)
        for exchange in plan.exchanges:
            if await exists(connection, "exchange", exchange.name):
                found.append(exchange.name)
    return found


@pytest.fixture
async def connection() -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await aio_pika.connect(AMQP_URL)
    yield connection
    await connection.close()


async def test_a_namespace_deleted_under_a_worker_stays_deleted_through_its_reconnect(
    namespace: Namespace,
    connection: aio_pika.abc.AbstractConnection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(subscription, "RESUBSCRIBE_PAUSE_S", 0.2)
    results, ticks = namespace.queue_name("results"), namespace.queue_name("ticks")
    for queue in (results, ticks):
        await declare_queue(connection, queue)
    functions_file = namespace.functions(FUNCTIONS.format(results=results, ticks=ticks))
    names = namespace.names
    plans = [
        topology.core_plan(names),
        topology.functions_plan(names, functions_file.functions.values()),
    ]
    async with named_worker(namespace, functions_file) as worker:
        await wait_for(lambda: worker.triggers.leadership.is_leader, 10, "a timers' leader")
        # What an operator deleting the namespace does (the CLI's topology.delete).
        for plan in plans:
            await topology.delete(connection, plan)
        await wait_for(
            lambda: len(worker.not_ready()) >= 7, 10, "the deleted queues reported missing"
        )

        await drop_and_reconnect(worker)
        # The reconnect is complete (every channel restored): nothing came back, and the
        # subscriptions' checks since (every 0.2 s here) made nothing either.
        assert not await anything_of(connection, plans)
        reasons = worker.not_ready()
        for missing in (
            names.function_queue("echo"), names.suspect_queue("tick"), names.dead,
            names.unrouted, names.trigger_leader, names.config_stream, names.control,
        ):
            assert any(repr(missing) in reason for reason in reasons), (missing, reasons)
        assert all("asyncinvoke topology declare" in reason for reason in reasons), reasons
        assert not worker.triggers.leadership.is_leader
        assert not await anything_of(connection, plans)

        # Declared again on purpose: consumed again, and the timers have a leader (the
        # worker gives the new, empty baton queue a baton).
        async with connection.channel() as channel:
            await topology.declare(channel, names, functions_file.functions.values())
        await wait_for(lambda: not worker.not_ready(), 15, "ready once declared again")
        await wait_for(lambda: worker.triggers.leadership.is_leader, 15, "a leader again")
        async with Client(settings=namespace.settings) as client:
            invocation_id = await client.invoke("echo", {"after": "declare"})
        (record,) = records_of(await collect(connection, results, 1, 15))
        assert record["requestContext"]["requestId"] == invocation_id


async def test_a_reconnect_restores_consumers_the_timers_leader_and_the_configuration(
    namespace: Namespace, connection: aio_pika.abc.AbstractConnection
) -> None:
    results, ticks = namespace.queue_name("results"), namespace.queue_name("ticks")
    for queue in (results, ticks):
        await declare_queue(connection, queue)
    functions_file = namespace.functions(FUNCTIONS.format(results=results, ticks=ticks))
    async with named_worker(namespace, functions_file) as worker:
        await collect(connection, ticks, 1, 10)
        await drop_and_reconnect(worker)
        reconnected_ms = time.time() * 1000

        # The function queue's consumer.
        async with Client(settings=namespace.settings) as client:
            invocation_id = await client.invoke("echo", {"after": "reconnect"})
        (record,) = records_of(await collect(connection, results, 1, 15))
        assert record["requestContext"]["requestId"] == invocation_id

        # The timers' leader: a tick scheduled after the reconnect runs.
        await wait_for(lambda: worker.triggers.leadership.is_leader, 15, "a leader again")
        async with asyncio.timeout(15):
            while True:
                tick = contract.unpack((await collect(connection, ticks, 1, 15))[0].body)
                if tick["invocation"]["created_at"] > reconnected_ms:
                    break

        # The configuration stream: a change written now reaches the worker.
        async with (
            Broker(namespace.settings, name=f"asyncinvoke-test-writer-{namespace.ns}") as writer,
            DocumentStore(writer, namespace.names) as store,
        ):
            await LiveConfig(store, functions_file).put_concurrency(
                "echo", {"reservedConcurrency": 3}
            )
        live = worker.live
        assert live is not None
        await wait_for(
            lambda: live.effective("echo").spec.concurrency == 3, 15, "the change applied"
        )
        assert not worker.not_ready()
        assert worker.store.problem is None


async def test_a_namespace_deleted_under_a_gateway_stays_deleted_through_its_reconnect(
    namespace: Namespace, connection: aio_pika.abc.AbstractConnection
) -> None:
    """The gateway declares the namespace at start too, and follows the config stream."""
    functions_file = namespace.functions("""
        [functions.echo]
        handler = "tests.support.handlers:echo"
    """)
    names = namespace.names
    plans = [
        topology.core_plan(names),
        topology.functions_plan(names, functions_file.functions.values()),
    ]
    gateway = Gateway(namespace.settings, functions_file, {})
    gateway.client.broker.name = f"asyncinvoke-test-{namespace.ns}"
    await gateway.start("127.0.0.1", 0)
    try:
        assert not gateway.not_ready()
        for plan in plans:
            await topology.delete(connection, plan)
        await drop_and_reconnect(gateway)
        assert not await anything_of(connection, plans)
        await wait_for(lambda: bool(gateway.not_ready()), 10, "the stream reported missing")
        (reason,) = gateway.not_ready()
        assert repr(names.config_stream) in reason and "topology declare" in reason, reason
        assert not await anything_of(connection, plans)
    finally:
        await gateway.stop()
