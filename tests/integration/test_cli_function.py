"""``asyncinvoke function``: the live configuration from the command line, as an operator
runs it (``python -m asyncinvoke`` in a subprocess), reaching a worker that runs meanwhile,
and ``topology show`` naming each value's source."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson

from tests.conftest import ROOT, Namespace, running_worker, wait_for

FUNCTIONS = """
    [defaults]
    max_retries = 2

    [functions.slow]
    handler = "tests.support.handlers:sleep"
    concurrency = 4
"""


def _run(namespace: Namespace, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncinvoke", *args],
        env=namespace.env(ASYNCINVOKE_CONFIG=str(namespace.tmp_path / "functions.toml")),
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


async def cli(namespace: Namespace, *args: str) -> subprocess.CompletedProcess[str]:
    result = await asyncio.to_thread(_run, namespace, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def json_of(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    return dict(orjson.loads(result.stdout))


async def test_the_cli_sets_pauses_resumes_and_deletes_and_a_running_worker_follows(
    namespace: Namespace,
) -> None:
    functions_file = namespace.functions(FUNCTIONS)
    path = str(functions_file.path)
    async with running_worker(namespace, functions_file) as worker:
        slow = worker.functions["slow"]
        put = json_of(await cli(
            namespace, "function", "config", "put", "slow", "--max-retries", "0",
            "--on-failure", "acs:fc:cn-hangzhou:1:functions/slow", "--json",
        ))
        assert put["maxAsyncRetryAttempts"] == 0
        assert put["destinationConfig"] == {"onSuccess": None, "onFailure": "function:slow"}
        assert put["sources"] == {
            "max_retries": "api", "on_failure": "api", "max_event_age": "default",
            "task_mode": "default", "on_success": "default", "concurrency": path,
        }
        await wait_for(lambda: slow.spec.max_retries == 0, 2, "the worker to take it")

        paused = json_of(await cli(namespace, "function", "pause", "slow", "--json"))
        assert (paused["paused"], paused["reservedConcurrency"]) == (True, 0)
        await wait_for(lambda: slow.paused, 2, "the worker to pause")
        shown = json_of(await cli(namespace, "topology", "show", "--json"))
        policy = shown["functions"]["slow"]  # type: ignore[index]
        assert (policy["paused"], policy["max_retries"], policy["concurrency"]) == (True, 0, 4)
        assert policy["configVersion"] == paused["configVersion"]
        assert policy["sources"]["max_retries"] == "api"
        assert policy["sources"]["max_event_age"] == "default"

        resumed = json_of(await cli(namespace, "function", "resume", "slow", "--json"))
        assert resumed["paused"] is False and resumed["reservedConcurrency"] == 4
        await wait_for(lambda: not slow.paused, 2, "the worker to resume")

        two = json_of(await cli(namespace, "function", "concurrency", "put", "slow", "2", "--json"))
        assert (two["reservedConcurrency"], two["sources"]["concurrency"]) == (2, "api")
        await wait_for(lambda: slow.spec.concurrency == 2, 2, "the worker to take it")
        back = json_of(await cli(namespace, "function", "concurrency", "delete", "slow", "--json"))
        assert (back["reservedConcurrency"], back["sources"]["concurrency"]) == (4, path)
        await wait_for(lambda: slow.spec.concurrency == 4, 2, "the worker to drop it")

        deleted = json_of(await cli(namespace, "function", "config", "delete", "slow", "--json"))
        assert deleted["maxAsyncRetryAttempts"] == 2
        assert deleted["sources"]["max_retries"] == f"{path} [defaults]"  # type: ignore[index]
        await wait_for(lambda: slow.spec.max_retries == 2, 2, "the worker to drop it")
