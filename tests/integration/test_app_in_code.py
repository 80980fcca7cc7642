"""Functions defined in code (tests/support/code_app.py) with a functions file over them:
the effective policy is the file's where it speaks, the code's elsewhere, and
``topology show`` says which; ``f.invoke``, ``f.invoke_sync``, the command line and a
foreign AMQP client (pika) all reach the same handler in an ``--app`` worker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import msgpack
import orjson
import pika
import pytest

from asyncinvoke import Client, contract
from tests.conftest import (
    AMQP_URL,
    ROOT,
    Namespace,
    WorkerProcess,
    collect,
    declare_queue,
    write_functions,
)
from tests.support import code_app
from tests.support.code_app import always_fails, shout

APP = "tests.support.code_app:app"


def _cli(namespace: Namespace, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncinvoke", *args],
        env=namespace.env(), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


def _publish_with_pika(exchange: str, envelope: dict[str, Any]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange=exchange,
            routing_key=str(envelope["fn"]),
            body=msgpack.packb(envelope),
            properties=pika.BasicProperties(delivery_mode=2, content_type="application/msgpack"),
            mandatory=True,
        )
    finally:
        connection.close()


@pytest.mark.timeout(90)
async def test_code_with_a_file_over_it_runs_the_same_handler_whichever_way_it_is_invoked(
    namespace: Namespace, amqp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = namespace.queue_name("results")
    failures = namespace.queue_name("failures")
    for queue in (results, failures):
        await declare_queue(amqp, queue)
    config = write_functions(namespace.tmp_path, f"""
        [defaults]
        max_event_age = 600

        [functions.shout]
        max_retries = 1
        on_success = "queue:{results}"

        [functions.always-fails]
        max_retries = 0
        on_failure = "queue:{failures}"
    """)
    namespace.function_names.update({"shout", "always-fails"})

    # The app's own client reads ASYNCINVOKE_* when first used: point it at this namespace.
    monkeypatch.setenv("ASYNCINVOKE_NAMESPACE", namespace.ns)
    monkeypatch.setenv("ASYNCINVOKE_AMQP_URL", AMQP_URL)
    code_app.app.close()
    worker = WorkerProcess(namespace, config, "--app", APP)
    try:
        # Python starts slowly on a loaded machine: the worker and the command side by side.
        shown, _ = await asyncio.gather(
            asyncio.to_thread(
                _cli, namespace, "topology", "show", "--app", APP, "--config", str(config), "--json"
            ),
            worker.start(),
        )
        assert shown.returncode == 0, shown.stderr
        policy = orjson.loads(shown.stdout)["functions"]["shout"]
        code = "tests.support.code_app (@app.function)"
        assert policy["target"] == "tests.support.code_app:shout"
        assert (policy["max_retries"], policy["timeout"], policy["max_event_age"]) == (1, 10.0, 600)
        assert policy["backoff"]["initial"] == 0.5
        assert policy["concurrency"] == 16
        assert policy["sources"] == {
            "handler": code,
            "timeout": code,
            "backoff": code,
            "max_retries": str(config),
            "on_success": str(config),
            "max_event_age": f"{config} [defaults]",
            "concurrency": "default",
            "delivery_limit": "default",
            "on_failure": "default",
            "task_mode": "default",
            "service": "default",
            "executor": "default",
            "throttle_budget": "default",
        }
        command = asyncio.create_task(asyncio.to_thread(
            _cli, namespace, "invoke", "shout", "--payload", '{"text": "cli"}'
        ))
        ids = {"invoke": await shout.invoke({"text": "invoke"})}
        ids["invoke_sync"] = await asyncio.to_thread(shout.invoke_sync, {"text": "sync"})
        async with Client(settings=namespace.settings) as client:
            ids["client"] = await shout.invoke({"text": "client"}, client=client)
        invoked = await command
        assert invoked.returncode == 0, invoked.stderr
        ids["cli"] = invoked.stdout.strip()
        ids["pika"] = "from_pika"
        await asyncio.to_thread(_publish_with_pika, namespace.names.invoke, {
            "v": 1, "id": "from_pika", "fn": "shout", "payload": {"text": "pika"},
            "created_at": time.time_ns() // 1_000_000,
        })
        failing = await asyncio.to_thread(always_fails.invoke_sync, None)

        records = [contract.unpack(m.body) for m in await collect(amqp, results, len(ids), 30)]
        by_id = {r["requestContext"]["requestId"]: r["responsePayload"] for r in records}
        assert set(by_id) == set(ids.values())
        assert worker.process is not None
        assert {result["pid"] for result in by_id.values()} == {worker.process.pid}
        assert by_id[ids["pika"]]["shout"] == "PIKA"
        assert by_id[ids["invoke_sync"]]["shout"] == "SYNC"

        # The code says 5 retries, the file 0: one attempt, then the failure record.
        [failed] = [contract.unpack(m.body) for m in await collect(amqp, failures, 1, 30)]
        assert failed["requestContext"]["requestId"] == failing
        assert failed["requestContext"]["condition"] == "RetriesExhausted"
        assert failed["requestContext"]["approximateInvokeCount"] == 1
    finally:
        code_app.app.close()
        await worker.kill()
