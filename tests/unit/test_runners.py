"""Running one attempt under its timeout, without a broker."""

from __future__ import annotations

import asyncio
import threading
import time
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
    runner = PythonRunner(spec, handler, watchdog)
    try:
        return await asyncio.wait_for(runner.run(ENVELOPE, make_context(ENVELOPE, spec)), 5)
    finally:
        runner.close()
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
    assert outcome.error is not None
    assert outcome.error.message == "the database did not answer"


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
    assert outcome.error is not None
    assert outcome.error.error_type == type(error).__name__


async def test_the_result_and_the_context_reach_the_handler() -> None:
    seen: list[Context] = []

    def echo(event: Any, context: Context) -> Any:
        seen.append(context)
        return event

    outcome = await _run(echo, timeout_s=5)
    assert outcome.ok and outcome.result == {"x": 1}
    assert (seen[0].invocation_id, seen[0].function, seen[0].attempt) == ("a", "f", 0)
    assert 0 < seen[0].remaining_s() <= 5


async def test_a_sync_attempt_that_waits_for_a_thread_starts_its_timeout_when_it_gets_one() -> None:
    spec = FunctionSpec("f", handler="m:f", timeout_s=0.5, concurrency=1)

    def sleeper(event: Any, context: Context) -> str:
        time.sleep(event["seconds"])
        return "slept"

    watchdog = Watchdog()
    runner = PythonRunner(spec, sleeper, watchdog)
    first = Envelope(id="first", fn="f", payload={"seconds": 0.4}, created_at=0)
    second = Envelope(id="second", fn="f", payload={"seconds": 0.3}, created_at=0)
    try:
        running = asyncio.create_task(runner.run(first, make_context(first, spec)))
        await asyncio.sleep(0.05)  # the first holds the function's only thread
        waiting = asyncio.create_task(runner.run(second, make_context(second, spec)))
        outcomes = await asyncio.wait_for(asyncio.gather(running, waiting), 5)
    finally:
        runner.close()
        watchdog.close()
    # The second waited about 0.35 s for the thread, then ran 0.3 s: 0.65 s in all, more
    # than its timeout, but its run alone is within it.
    assert [outcome.ok for outcome in outcomes] == [True, True]
    assert outcomes[1].duration_ms < 500


async def test_a_sync_attempt_that_finds_no_free_thread_within_its_timeout_says_so() -> None:
    release = threading.Event()
    spec = FunctionSpec("stuck", handler="m:f", timeout_s=0.2, concurrency=1)

    def hang(event: Any, context: Context) -> str:
        release.wait(10)
        return "released"

    watchdog = Watchdog()
    runner = PythonRunner(spec, hang, watchdog)
    try:
        hung = asyncio.create_task(runner.run(ENVELOPE, make_context(ENVELOPE, spec)))
        await asyncio.sleep(0.05)
        waited = await asyncio.wait_for(runner.run(ENVELOPE, make_context(ENVELOPE, spec)), 5)
        release.set()
        timed_out = await asyncio.wait_for(hung, 5)
    finally:
        release.set()
        runner.close()
        watchdog.close()
    assert timed_out.function_error == contract.TIMEOUT
    assert waited.function_error == contract.TIMEOUT and waited.retryable
    assert waited.error is not None
    assert "not started" in waited.error.message
    assert "'stuck'" in waited.error.message


async def test_a_function_whose_sync_handlers_hang_leaves_another_its_threads() -> None:
    release = threading.Event()
    stuck_spec = FunctionSpec("stuck", handler="m:f", timeout_s=0.1, concurrency=2)
    healthy_spec = FunctionSpec("healthy", handler="m:f", timeout_s=2, concurrency=1)

    def hang(event: Any, context: Context) -> str:
        release.wait(10)
        return "released"

    def answer(event: Any, context: Context) -> str:
        return "answered"

    watchdog = Watchdog()
    stuck = PythonRunner(stuck_spec, hang, watchdog)
    healthy = PythonRunner(healthy_spec, answer, watchdog)
    try:
        hung = [
            asyncio.create_task(stuck.run(ENVELOPE, make_context(ENVELOPE, stuck_spec)))
            for _ in range(4)
        ]
        await asyncio.sleep(0.3)  # the first two have timed out; their threads hang on
        outcome = await asyncio.wait_for(
            healthy.run(ENVELOPE, make_context(ENVELOPE, healthy_spec)), 5
        )
        stuck_threads = [t for t in threading.enumerate() if t.name.startswith("handler-stuck")]
        release.set()
        stuck_outcomes = await asyncio.wait_for(asyncio.gather(*hung), 5)
    finally:
        release.set()
        stuck.close()
        healthy.close()
        watchdog.close()
    assert outcome.ok and outcome.result == "answered"
    assert len(stuck_threads) == stuck_spec.concurrency
    # Two ran into their timeout; the two behind them found no free thread within theirs.
    assert [o.function_error for o in stuck_outcomes] == [contract.TIMEOUT] * 4
    unstarted = [o.error is not None and o.error.message.startswith("not started")
                 for o in stuck_outcomes]
    assert sorted(unstarted) == [False, False, True, True]
