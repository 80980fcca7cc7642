"""One invocation's path end to end, on the real broker, with a worker in this process."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson
import pytest

from asyncinvoke import Client, UnknownFunctionError, contract
from tests.conftest import (
    ROOT,
    Namespace,
    collect,
    declare_queue,
    records_of,
    running_worker,
)
from tests.support import handlers


def _echo_functions(namespace: Namespace, results: str) -> str:
    return f"""
        [functions.echo]
        handler = "tests.support.handlers:echo"
        on_success = "queue:{results}"

        [functions.sync_echo]
        handler = "tests.support.handlers:sync_echo"
        on_success = "queue:{results}"
        concurrency = 4
    """


async def test_invocations_run_and_their_results_reach_the_success_destination(
    namespace: Namespace, amqp
) -> None:
    results = namespace.queue_name("results")
    functions_file = namespace.functions(_echo_functions(namespace, results))
    async with running_worker(namespace, functions_file):
        await declare_queue(amqp, results)
        async with Client(settings=namespace.settings) as client:
            first = await client.invoke("echo", {"n": 1}, meta={"trace": "abc"})
            second = await client.invoke("sync_echo", b"\x00raw bytes")
        got = records_of(await collect(amqp, results, 2, 15))
    by_id = {record["requestContext"]["requestId"]: record for record in got}
    assert set(by_id) == {first, second}
    assert by_id[first]["responsePayload"] == {"n": 1}
    assert by_id[first]["requestContext"]["condition"] == contract.SUCCESS
    assert by_id[first]["requestContext"]["approximateInvokeCount"] == 1
    assert by_id[first]["invocation"]["meta"] == {"trace": "abc"}
    assert by_id[second]["responsePayload"] == b"\x00raw bytes"


async def test_invoke_many_hands_over_every_invocation_in_order(namespace: Namespace, amqp) -> None:
    results = namespace.queue_name("results")
    functions_file = namespace.functions(_echo_functions(namespace, results))
    async with running_worker(namespace, functions_file):
        await declare_queue(amqp, results)
        async with Client(settings=namespace.settings) as client:
            ids = await client.invoke_many([("echo", {"i": i}) for i in range(500)])
        got = records_of(await collect(amqp, results, 500, 30))
    assert len(ids) == len(set(ids)) == 500
    assert {record["requestContext"]["requestId"] for record in got} == set(ids)
    payload_of = {r["requestContext"]["requestId"]: r["responsePayload"] for r in got}
    assert [payload_of[i] for i in ids] == [{"i": i} for i in range(500)]


async def test_invoking_a_function_without_a_queue_is_a_clear_error(namespace: Namespace) -> None:
    functions_file = namespace.functions(_echo_functions(namespace, "unused"))
    async with (
        running_worker(namespace, functions_file),
        Client(settings=namespace.settings) as client,
    ):
        with pytest.raises(UnknownFunctionError, match="'nope' has no queue"):
            await client.invoke("nope", {})


async def test_a_payload_over_the_limit_is_refused_by_the_client(namespace: Namespace) -> None:
    functions_file = namespace.functions(_echo_functions(namespace, "unused"))
    async with (
        running_worker(namespace, functions_file),
        Client(settings=namespace.settings.with_overrides(max_payload_bytes=1000)) as client,
    ):
        with pytest.raises(contract.InvalidMessage, match="over the limit of 1000"):
            await client.invoke("echo", "x" * 2000)


def _cli(namespace: Namespace, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncinvoke", *args],
        env=namespace.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_command_line_declares_shows_and_invokes(namespace: Namespace) -> None:
    handlers.CALLS["echo"].clear()
    functions_file = namespace.functions(_echo_functions(namespace, "unused"))
    config = str(functions_file.path)
    declared = await asyncio.to_thread(_cli, namespace, "topology", "declare", "--config", config)
    assert declared.returncode == 0, declared.stderr
    shown = await asyncio.to_thread(
        _cli, namespace, "topology", "show", "--config", config, "--json"
    )
    assert shown.returncode == 0, shown.stderr
    document = orjson.loads(shown.stdout)
    assert document["functions"]["echo"]["messages"] == 0
    assert document["functions"]["echo"]["max_retries"] == 3
    async with running_worker(namespace, functions_file):
        invoked = await asyncio.to_thread(
            _cli, namespace, "invoke", "echo", "--payload", '{"from": "cli"}', "--id", "cli_1"
        )
        assert invoked.returncode == 0, invoked.stderr
        assert invoked.stdout.strip() == "cli_1"
        for _ in range(500):
            if handlers.CALLS["echo"]:
                break
            await asyncio.sleep(0.01)
    assert [call[0] for call in handlers.CALLS["echo"]] == ["cli_1"]


async def test_command_line_errors_are_one_line_with_a_non_zero_exit(
    namespace: Namespace,
) -> None:
    missing = await asyncio.to_thread(
        _cli, namespace, "topology", "declare", "--config", "/nonexistent/functions.toml"
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0
    assert "/nonexistent/functions.toml: file not found" in missing.stderr
    bad_json = await asyncio.to_thread(_cli, namespace, "invoke", "echo", "--payload", "{bad")
    assert bad_json.returncode != 0
    assert "not valid JSON" in bad_json.stderr
