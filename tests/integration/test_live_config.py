"""Live function configuration end to end: the official FC SDK (alibabacloud-fc20230330,
unchanged) sets it on the gateway, the workers apply it without a restart, and every
attempt records the configuration version it ran under.

Workers and gateways run in this process and loop (their own broker connections each).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest
from alibabacloud_fc20230330 import models as fc
from alibabacloud_tea_openapi.exceptions import ClientException

from asyncinvoke import contract, topology
from asyncinvoke.client import Client
from asyncinvoke.gateway import Gateway
from asyncinvoke.worker import Worker
from tests.conftest import Namespace, collect, declare_queue, running_worker, wait_for
from tests.integration.test_gateway import (
    call,
    invoke,
    invoke_headers,
    running_gateway,
    sdk,
    task_store,
)
from tests.support import handlers

FAILING = """
    [defaults]
    max_retries = 2
    backoff = { initial = 1.0, multiplier = 1.0, max = 1.0, jitter = 0.0 }

    [functions.flaky]
    handler = "tests.support.handlers:always_fail"
"""


def slow_functions(namespace: Namespace, done: str, concurrency: int = 2) -> Any:
    handlers.CALLS["slow"].clear()
    return namespace.functions(f"""
        [functions.slow]
        handler = "tests.support.handlers:sleep"
        concurrency = {concurrency}
        max_retries = 0
        on_success = "queue:{done}"
    """)


async def http(gateway: Gateway, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A request to a gateway without keys (loopback), as any HTTP client sends it."""
    async with aiohttp.ClientSession() as session, session.request(
        method, gateway.url + path, data=None if body is None else orjson.dumps(body),
        timeout=aiohttp.ClientTimeout(total=30),
    ) as response:
        raw = await response.read()
        return response.status, orjson.loads(raw) if raw else None


def record_of(message: aio_pika.abc.AbstractIncomingMessage) -> dict[str, Any]:
    return dict(contract.unpack(message.body))


async def test_the_sdk_puts_retries_and_a_failure_queue_and_deleting_returns_to_the_file(
    namespace: Namespace,
    amqp: aio_pika.abc.AbstractConnection,
    capfd: pytest.CaptureFixture[str],
) -> None:
    target = namespace.queue_name("x")
    await declare_queue(amqp, target)
    handlers.CALLS["flaky"].clear()
    functions_file = namespace.functions(FAILING)
    store = task_store(namespace)
    async with running_worker(namespace, functions_file, task_store=store) as worker, (
        running_gateway(namespace, functions_file, task_store=store)
    ) as gateway:
        client = sdk(gateway)
        mns_arn = f"acs:mns:cn-hangzhou:1234:/queues/{target}/messages"
        body = fc.PutAsyncInvokeConfigInput(
            max_async_retry_attempts=0,
            destination_config=fc.DestinationConfig(on_failure=fc.Destination(destination=mns_arn)),
        )
        put = await call(
            client.put_async_invoke_config, "flaky", fc.PutAsyncInvokeConfigRequest(body=body)
        )
        assert put.body.max_async_retry_attempts == 0
        assert put.body.destination_config.on_failure.destination == f"queue:{target}"
        assert put.body.max_async_event_age_in_seconds == 86400  # the file's, field by field
        assert put.body.created_time and put.body.last_modified_time
        version = gateway.live.effective("flaky").version
        assert version > 0
        await worker.applier.wait_applied("flaky", version, 5)  # type: ignore[union-attr]
        listed = await call(
            client.list_async_invoke_configs,
            fc.ListAsyncInvokeConfigsRequest(function_name="flaky"),
        )
        assert [c.max_async_retry_attempts for c in listed.body.configs] == [0]

        first = await call(invoke, client, "flaky", b"{}", invoke_headers("Async"))
        first_id = first.headers["x-fc-request-id"]
        [message] = await collect(amqp, target, 1, 20)
        context = record_of(message)["requestContext"]
        assert (context["requestId"], context["condition"]) == (first_id, "RetriesExhausted")
        assert context["approximateInvokeCount"] == 1
        assert context["configVersion"] == version
        assert [call_[0] for call_ in handlers.CALLS["flaky"]].count(first_id) == 1
        logged = [line for line in capfd.readouterr().out.splitlines() if first_id in line]
        assert any(
            "attempt" in line and f"config_version={version}" in line for line in logged
        ), logged

        await call(client.delete_async_invoke_config, "flaky", fc.DeleteAsyncInvokeConfigRequest())
        back = await call(
            client.get_async_invoke_config, "flaky", fc.GetAsyncInvokeConfigRequest()
        )
        assert back.body.max_async_retry_attempts == 2
        assert back.body.destination_config.on_failure.destination == (
            f"queue:{namespace.names.failed}"
        )
        await worker.applier.wait_applied("flaky", gateway.store.version, 5)  # type: ignore[union-attr]
        second = await call(invoke, client, "flaky", b"{}", invoke_headers("Async"))
        [failed] = await collect(amqp, namespace.names.failed, 1, 20)
        context = record_of(failed)["requestContext"]
        assert context["requestId"] == second.headers["x-fc-request-id"]
        assert (context["approximateInvokeCount"], context["configVersion"]) == (3, 0)
        with pytest.raises(ClientException) as again:
            await call(
                client.delete_async_invoke_config, "flaky", fc.DeleteAsyncInvokeConfigRequest()
            )
        assert (again.value.status_code, again.value.code) == (404, "AsyncConfigNotFound")


def _in_force(switches: dict[int, float], moment: float) -> int:
    """The version a worker had in force at ``moment`` (0 before its first switch)."""
    return max((v for v, at in switches.items() if at <= moment), default=0)


async def test_changes_under_load_reach_both_workers_within_2_s_and_attempts_record_theirs(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection
) -> None:
    done = namespace.queue_name("done")
    await declare_queue(amqp, done)
    functions_file = slow_functions(namespace, done)
    total, changes = 120, 3
    async with running_worker(namespace, functions_file) as one, running_worker(
        namespace, functions_file
    ) as two, running_gateway(namespace, functions_file, keys={}) as gateway:
        switches: list[dict[int, float]] = [{}, {}]
        for number, worker in enumerate((one, two)):
            assert worker.live is not None
            worker.live.listen(
                lambda _name, live, seen=switches[number]: seen.setdefault(
                    live.version, time.time()
                )
            )
        async with Client(settings=namespace.settings) as client:
            ids = await client.invoke_many([("slow", {"seconds": 0.05})] * total)
        lags = []
        for change in range(1, changes + 1):
            await wait_for(
                lambda change=change: len(handlers.CALLS["slow"]) >= change * total // 4,
                30, "the load to go on",
            )
            sent = time.time()
            status, shown = await http(
                gateway, "PUT", "/2023-03-30/functions/slow/async-invoke-config",
                {"maxAsyncRetryAttempts": change},
            )
            assert status == 200, shown
            version = shown["asyncinvoke"]["configVersion"]
            await wait_for(lambda v=version: all(v in seen for seen in switches), 5, "both")
            lags += [seen[version] - sent for seen in switches]
        records = [record_of(message) for message in await collect(amqp, done, total, 30)]
    started = {call_[0]: call_[2] for call_ in handlers.CALLS["slow"]}
    print(f"\nlive change → worker: {len(lags)} measurements, max {max(lags) * 1000:.1f} ms, "
          f"mean {sum(lags) / len(lags) * 1000:.1f} ms")
    assert max(lags) < 2.0, lags
    assert {record["requestContext"]["requestId"] for record in records} == set(ids)
    seen_versions = set()
    for record in records:
        context = record["requestContext"]
        at = started[context["requestId"]]
        # The version is taken when the attempt starts, just before its handler notes the
        # time (a loop turn or two: 20 ms of slack); either worker may have run it.
        allowed = {
            _in_force(switches[worker], moment)
            for worker in (0, 1)
            for moment in (at - 0.02, at)
        } | {
            version
            for worker in (0, 1)
            for version, moment in switches[worker].items()
            if at - 0.02 <= moment <= at
        }
        assert context["configVersion"] in allowed, (context, at, switches)
        seen_versions.add(context["configVersion"])
    assert len(seen_versions) >= 3, seen_versions  # the changes came in the middle


async def test_a_pause_under_load_starts_nothing_once_acknowledged_and_resume_loses_nothing(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection
) -> None:
    done = namespace.queue_name("done")
    await declare_queue(amqp, done)
    functions_file = slow_functions(namespace, done)
    queue = namespace.names.function_queue("slow")
    async with running_worker(namespace, functions_file) as one, running_worker(
        namespace, functions_file
    ) as two, running_gateway(namespace, functions_file, keys={}) as gateway, Client(
        settings=namespace.settings
    ) as client:
        workers: tuple[Worker, ...] = (one, two)
        ids = await client.invoke_many([("slow", {"seconds": 0.1})] * 40)
        await wait_for(lambda: len(handlers.CALLS["slow"]) >= 8, 20, "8 attempts")
        sent = time.time()
        status, shown = await http(
            gateway, "PUT", "/2023-03-30/functions/slow/concurrency", {"reservedConcurrency": 0}
        )
        assert (status, shown["reservedConcurrency"], shown["asyncinvoke"]["paused"]) == (
            200, 0, True
        )
        version = shown["asyncinvoke"]["version"]
        for worker in workers:  # each worker acknowledges: its consumers are cancelled
            await worker.applier.wait_applied("slow", version, 5)  # type: ignore[union-attr]
        acknowledged = time.time()
        print(f"\npause acknowledged by both workers {(acknowledged - sent) * 1000:.1f} ms "
              "after the PUT was sent")
        # Those due now and those that come due while paused (delays) all wait in the queue.
        ids += [await client.invoke("slow", {"seconds": 0.1}) for _ in range(5)]
        ids += [await client.invoke("slow", {"seconds": 0.1}, delay=1) for _ in range(5)]
        await wait_for(lambda: not any(worker.in_flight for worker in workers), 10, "in flight")
        started_before = {call_[0] for call_ in handlers.CALLS["slow"]}
        waiting = len(ids) - len(started_before)

        async def depth() -> int | None:
            return await topology.queue_depth(amqp, queue)

        deadline = time.monotonic() + 10
        while await depth() != waiting:
            assert time.monotonic() < deadline, (await depth(), waiting)
            await asyncio.sleep(0.1)
        late = [call_ for call_ in handlers.CALLS["slow"] if call_[2] > acknowledged]
        assert late == [], late
        assert waiting >= 20

        status, _ = await http(gateway, "DELETE", "/2023-03-30/functions/slow/concurrency")
        assert status == 204
        records = [record_of(message) for message in await collect(amqp, done, len(ids), 30)]
    assert sorted(record["requestContext"]["requestId"] for record in records) == sorted(ids)


BAD_PUTS: list[tuple[dict[str, Any], str]] = [
    ({"max_async_retry_attempts": 9}, "maxAsyncRetryAttempts must be an integer from 0 to 8"),
    ({"max_async_retry_attempts": -1}, "maxAsyncRetryAttempts must be an integer from 0 to 8"),
    ({"max_async_event_age_in_seconds": 0}, "from 1 to 604800"),
    ({"max_async_event_age_in_seconds": 604801}, "from 1 to 604800"),
    (
        {"destination_config": fc.DestinationConfig(
            on_success=fc.Destination(destination="sqs:q")
        )},
        "destinationConfig.onSuccess.destination 'sqs:q' is not a destination; use queue:NAME",
    ),
    (
        {"destination_config": fc.DestinationConfig(
            on_failure=fc.Destination(destination="acs:fc:cn:1:services/s/functions/f")
        )},
        "acs:mns:<region>:<account>:/queues/NAME/messages",
    ),
]


async def test_every_bad_value_is_fcs_400_naming_the_field_and_range_and_unknown_is_404(
    namespace: Namespace,
) -> None:
    functions_file = namespace.functions(FAILING)
    async with running_gateway(namespace, functions_file, task_store=task_store(namespace)) as gw:
        client = sdk(gw)
        refusals: list[tuple[Any, ...]] = [
            (client.put_async_invoke_config, "flaky",
             fc.PutAsyncInvokeConfigRequest(body=fc.PutAsyncInvokeConfigInput(**fields)), message)
            for fields, message in BAD_PUTS
        ]
        refusals += [
            (client.put_async_invoke_config, "flaky", fc.PutAsyncInvokeConfigRequest(
                body=fc.PutAsyncInvokeConfigInput(max_async_retry_attempts=1), qualifier="prod"
            ), "qualifier 'prod': only LATEST exists here"),
            (client.get_async_invoke_config, "flaky",
             fc.GetAsyncInvokeConfigRequest(qualifier="1"), "only LATEST exists here"),
            (client.put_concurrency_config, "flaky", fc.PutConcurrencyConfigRequest(
                body=fc.PutConcurrencyInput(reserved_concurrency=-1)
            ), "reservedConcurrency must be an integer from 0 to 10000, got -1"),
            (client.put_concurrency_config, "flaky", fc.PutConcurrencyConfigRequest(
                body=fc.PutConcurrencyInput(reserved_concurrency=10001)
            ), "reservedConcurrency must be an integer from 0 to 10000"),
        ]
        for operation, *args, message in refusals:
            with pytest.raises(ClientException) as refused:
                await call(operation, *args)
            assert (refused.value.status_code, refused.value.code) == (400, "InvalidArgument")
            assert message in refused.value.message, (message, refused.value.message)
        unknown: list[tuple[Any, ...]] = [
            (client.put_async_invoke_config, "nope", fc.PutAsyncInvokeConfigRequest(
                body=fc.PutAsyncInvokeConfigInput(max_async_retry_attempts=1)
            )),
            (client.get_async_invoke_config, "nope", fc.GetAsyncInvokeConfigRequest()),
            (client.put_concurrency_config, "nope", fc.PutConcurrencyConfigRequest(
                body=fc.PutConcurrencyInput(reserved_concurrency=1)
            )),
            (client.get_concurrency_config, "nope"),
        ]
        for operation, *args in unknown:
            with pytest.raises(ClientException) as missing:
                await call(operation, *args)
            assert (missing.value.status_code, missing.value.code) == (404, "FunctionNotFound")
        # Nothing of it was stored.
        assert gw.store.list("async-config") == [] and gw.store.list("concurrency") == []


async def test_concurrent_puts_from_two_gateways_last_write_wins_and_each_answer_was_stored(
    namespace: Namespace,
) -> None:
    functions_file = namespace.functions(FAILING)
    path = "/2023-03-30/functions/flaky/async-invoke-config"
    async with running_gateway(namespace, functions_file, keys={}) as one, running_gateway(
        namespace, functions_file, keys={}
    ) as two:
        stored: dict[int, int] = {}  # the log, as a third reader sees it: version → retries
        one.store.subscribe(
            lambda change: stored.update(
                {change.version: change.entry.document["maxAsyncRetryAttempts"]}
            ) if change.entry is not None else None
        )
        overtaken = 0
        for round_ in range(8):
            answers = await asyncio.gather(
                http(one, "PUT", path, {"maxAsyncRetryAttempts": 1}),
                http(two, "PUT", path, {"maxAsyncRetryAttempts": 2}),
            )
            await one.store.sync()
            await two.store.sync()
            final = [(await http(gw, "GET", path))[1] for gw in (one, two)]
            assert final[0] == final[1], round_
            winner = max(stored)
            assert final[0]["maxAsyncRetryAttempts"] == stored[winner]
            assert final[0]["asyncinvoke"]["configVersion"] == winner
            for (status, shown), asked in zip(answers, (1, 2), strict=True):
                assert status == 200
                version = shown["asyncinvoke"]["configVersion"]
                # What the answer shows is what the log holds at its version: the loser
                # of a race is shown the winner's value, never its own request echoed.
                assert shown["maxAsyncRetryAttempts"] == stored[version], (shown, stored)
                overtaken += shown["maxAsyncRetryAttempts"] != asked
        print(f"\nconcurrent puts: {overtaken} of 16 answers showed the other gateway's write")


async def test_the_fc2_face_puts_gets_lists_and_deletes_the_async_config(
    namespace: Namespace,
) -> None:
    from tests.integration.test_gateway_fc2 import tea_client

    functions_file = namespace.functions(FAILING)
    async with running_gateway(namespace, functions_file, task_store=task_store(namespace)) as gw:
        from alibabacloud_fc_open20210406 import models as fc21

        client = tea_client(gw)
        put = await call(
            client.put_function_async_invoke_config, "default", "flaky",
            fc21.PutFunctionAsyncInvokeConfigRequest(
                max_async_retry_attempts=1, stateful_invocation=True,
                destination_config=fc21.DestinationConfig(
                    on_success=fc21.Destination(destination="acs:fc:cn:1:functions/flaky")
                ),
            ),
        )
        assert (put.body.max_async_retry_attempts, put.body.stateful_invocation) == (1, True)
        assert put.body.destination_config.on_success.destination == "function:flaky"
        listed = await call(
            client.list_function_async_invoke_configs, "default", "flaky",
            fc21.ListFunctionAsyncInvokeConfigsRequest(),
        )
        assert [c.max_async_retry_attempts for c in listed.body.configs] == [1]
        await call(
            client.delete_function_async_invoke_config, "default", "flaky",
            fc21.DeleteFunctionAsyncInvokeConfigRequest(),
        )
        got = await call(
            client.get_function_async_invoke_config, "default", "flaky",
            fc21.GetFunctionAsyncInvokeConfigRequest(),
        )
        assert (got.body.max_async_retry_attempts, got.body.stateful_invocation) == (2, False)
        with pytest.raises(ClientException) as refused:
            await call(
                client.put_function_async_invoke_config, "default", "flaky",
                fc21.PutFunctionAsyncInvokeConfigRequest(max_async_retry_attempts=99),
            )
        assert refused.value.status_code == 400
        assert "maxAsyncRetryAttempts must be an integer from 0 to 8" in str(refused.value)



async def test_the_config_lists_page_by_function_name_with_next_token(
    namespace: Namespace,
) -> None:
    functions_file = namespace.functions("""
        [functions.a]
        handler = "m:f"
        [functions.b]
        handler = "m:f"
        concurrency = 3
        [functions.c]
        handler = "m:f"
    """)
    async with running_gateway(namespace, functions_file, task_store=task_store(namespace)) as gw:
        client = sdk(gw)
        first = await call(
            client.list_async_invoke_configs, fc.ListAsyncInvokeConfigsRequest(limit=2)
        )
        assert [c.function_arn.rsplit("/", 1)[1] for c in first.body.configs] == ["a", "b"]
        rest = await call(client.list_async_invoke_configs, fc.ListAsyncInvokeConfigsRequest(
            limit=2, next_token=first.body.next_token
        ))
        assert [c.function_arn.rsplit("/", 1)[1] for c in rest.body.configs] == ["c"]
        assert rest.body.next_token is None
        concurrency = await call(
            client.list_concurrency_configs, fc.ListConcurrencyConfigsRequest(limit=5)
        )
        assert [
            (c.function_arn.rsplit("/", 1)[1], c.reserved_concurrency)
            for c in concurrency.body.configs
        ] == [("a", 16), ("b", 3), ("c", 16)]
        with pytest.raises(ClientException) as refused:
            await call(client.list_async_invoke_configs, fc.ListAsyncInvokeConfigsRequest(
                limit=101
            ))
        assert refused.value.status_code == 400 and "limit" in refused.value.message



async def test_a_worker_started_while_paused_consumes_nothing_until_the_resume(
    namespace: Namespace, amqp: aio_pika.abc.AbstractConnection
) -> None:
    done = namespace.queue_name("done")
    await declare_queue(amqp, done)
    functions_file = slow_functions(namespace, done)
    async with running_gateway(namespace, functions_file, keys={}) as gateway:
        await gateway.config.put_concurrency("slow", b'{"reservedConcurrency": 0}')
        async with running_worker(namespace, functions_file) as worker, Client(
            settings=namespace.settings
        ) as client:
            assert worker.functions["slow"].paused
            queue = namespace.names.function_queue("slow")
            # Not subscribed at all: the broker counts no consumer on the function's queue.
            async with amqp.channel() as channel:
                declared = await channel.declare_queue(queue, passive=True)
                assert declared.declaration_result.consumer_count == 0
            ids = [await client.invoke("slow", {"seconds": 0}) for _ in range(3)]
            assert await topology.queue_depth(amqp, queue) == 3
            assert handlers.CALLS["slow"] == []
            await gateway.config.delete_concurrency("slow")
            records = [record_of(message) for message in await collect(amqp, done, 3, 20)]
    assert sorted(record["requestContext"]["requestId"] for record in records) == sorted(ids)
