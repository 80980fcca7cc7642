"""Synchronous calls go through RabbitMQ with direct reply-to; the worker answers."""

from __future__ import annotations

import asyncio

import pytest

from asyncinvoke import Client, topology
from asyncinvoke.client import CallTimeout, FunctionError
from tests.conftest import Namespace, running_worker
from tests.support import handlers


async def test_call_returns_the_result_and_raises_the_function_error(
    namespace: Namespace,
) -> None:
    functions_file = namespace.functions("""
        [functions.echo]
        handler = "tests.support.handlers:sync_echo"

        [functions.refuse]
        handler = "tests.support.handlers:refuse"

        [functions.broken]
        handler = "tests.support.handlers:always_fail"
        max_retries = 3
    """)
    async with running_worker(namespace, functions_file), Client(
        settings=namespace.settings
    ) as client:
        assert await client.call("echo", {"a": [1, 2]}, timeout=10) == {"a": [1, 2]}
        assert await client.call("echo", b"bytes", timeout=10) == b"bytes"
        with pytest.raises(FunctionError, match="refused: will not get better") as refused:
            await client.call("refuse", None, timeout=10)
        assert refused.value.function_error == "HandledInvocationError"
        calls_before = len(handlers.CALLS["broken"])
        with pytest.raises(FunctionError, match="always fails"):
            await client.call("broken", None, timeout=10)
        # A synchronous call is one attempt: its caller decides whether to try again.
        assert len(handlers.CALLS["broken"]) == calls_before + 1


async def test_a_call_nobody_answers_times_out_and_does_not_run_later(
    namespace: Namespace,
) -> None:
    functions_file = namespace.functions("""
        [functions.echo]
        handler = "tests.support.handlers:echo"
    """)
    handlers.CALLS["echo"].clear()
    async with running_worker(namespace, functions_file):
        pass  # declares the queue; no worker serves it from now on
    async with Client(settings=namespace.settings) as client:
        with pytest.raises(CallTimeout, match="no reply for invocation"):
            await client.call("echo", {"late": True}, timeout=0.5)
    async with running_worker(namespace, functions_file) as worker:
        # The expired call is taken from the queue and acknowledged, not run.
        assert worker.broker.connection is not None
        queue = namespace.names.function_queue("echo")
        async with asyncio.timeout(10):
            while await topology.queue_depth(worker.broker.connection, queue) or worker.in_flight:
                await asyncio.sleep(0.02)
    assert handlers.CALLS["echo"] == []
