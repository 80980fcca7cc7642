"""Running one attempt under its timeout, without a broker."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from asyncinvoke import contract
from asyncinvoke.contract import Envelope
from asyncinvoke.errors import NonRetryableError
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.runners import Context, PythonRunner, Watchdog, make_context

ENVELOPE = Envelope(id="a", fn="f", payload={"x": 1}, created_at=0)


async def _run(handler: Any, timeout_s: float = 0.1) -> Any:
    spec = FunctionSpec("f", handler="m:f", timeout_s=timeout_s)
    watchdog = Watchdog()
    with ThreadPoolExecutor(2) as executor:
        runner = PythonRunner(spec, handler, executor, watchdog)
        try:
            return await asyncio.wait_for(runner.run(ENVELOPE, make_context(ENVELOPE, spec)), 5)
        finally:
            watchdog.close()


async def test_an_async_handler_past_its_timeout_is_cancelled_and_reported() -> None:
    cancelled = asyncio.Event()

    async def slow(event: Any, context: Context) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started = time.monotonic()
    outcome = await _run(slow)
    assert outcome.function_error == contract.TIMEOUT and outcome.retryable
    assert cancelled.is_set()
    assert time.monotonic() - started < 1


async def test_a_handler_that_swallows_the_cancel_still_times_out() -> None:
    async def stubborn(event: Any, context: Context) -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "ignored the cancel"
        return "never"

    outcome = await _run(stubborn)
    assert not outcome.ok and outcome.function_error == contract.TIMEOUT


async def test_a_timeout_error_raised_by_the_handler_is_its_own_error() -> None:
    async def own_timeout(event: Any, context: Context) -> None:
        raise TimeoutError("the database did not answer")

    outcome = await _run(own_timeout, timeout_s=5)
    assert outcome.function_error == contract.UNHANDLED
    assert outcome.error["errorMessage"] == "the database did not answer"


async def test_a_sync_handler_past_its_timeout_is_reported_while_its_thread_ends() -> None:
    def slow(event: Any, context: Context) -> str:
        time.sleep(0.3)
        return "late"

    outcome = await _run(slow)
    assert outcome.function_error == contract.TIMEOUT


@pytest.mark.parametrize(
    ("error", "retryable", "function_error"),
    [
        (NonRetryableError("no"), False, contract.HANDLED),
        (ValueError("v"), True, contract.UNHANDLED),
    ],
)
async def test_errors_say_whether_to_retry(
    error: Exception, retryable: bool, function_error: str
) -> None:
    async def failing(event: Any, context: Context) -> None:
        raise error

    outcome = await _run(failing, timeout_s=5)
    assert (outcome.retryable, outcome.function_error) == (retryable, function_error)
    assert outcome.error["errorType"] == type(error).__name__


async def test_the_result_and_the_context_reach_the_handler() -> None:
    seen: list[Context] = []

    def echo(event: Any, context: Context) -> Any:
        seen.append(context)
        return event

    outcome = await _run(echo, timeout_s=5)
    assert outcome.ok and outcome.result == {"x": 1}
    assert (seen[0].invocation_id, seen[0].function, seen[0].attempt) == ("a", "f", 0)
    assert 0 < seen[0].remaining_s() <= 5
