"""Retries against the real broker: how many attempts, how far apart, and how each ends.

Attempts are observed through the handlers' CALLS (the worker runs in this
process); endings through the records in the destination and failure queues.
"""

from __future__ import annotations

import itertools
import time

from asyncinvoke import Client, contract
from tests.conftest import Namespace, collect, declare_queue, running_worker
from tests.integration.helpers import (
    Connection,
    assert_empty,
    assert_header,
    attempts_of,
    by_request_id,
    publish_raw,
)

# Beyond the backoff itself a retry pays for confirms, the ladder's hops and the worker's
# hold of the sub-second remainder: a few ms, but a stall of the shared test machine (2
# cores, several suites at once) adds hundreds. The bound catches a wrong schedule, not a
# slow one: how late a retry starts is how late a delayed invocation starts (the same
# due time through the same ladder), which the delay benchmark measures
# (tests/bench/bench_delay.py, target p99 <= 50 ms).
OVERHEAD_S = 1.0
# asyncio timers may fire up to a clock tick early; time.time() is not monotonic.
CLOCK_SLACK_S = 0.01


def backoff_bounds(
    retry: int, initial: float, multiplier: float, cap: float, jitter: float
) -> tuple[float, float]:
    """The shortest and longest gap allowed before retry number ``retry`` (0 for the first)."""
    base = min(cap, initial * multiplier**retry)
    return base * (1 - jitter) - CLOCK_SLACK_S, min(cap, base * (1 + jitter)) + OVERHEAD_S


async def test_fails_twice_then_succeeds_on_the_third_attempt(
    namespace: Namespace, amqp: Connection
) -> None:
    succeeded = namespace.queue_name("succeeded")
    await declare_queue(amqp, succeeded)
    spec = namespace.functions(f"""
        [functions.flaky]
        handler = "tests.support.handlers:fail_until"
        max_retries = 2
        backoff = {{ initial = 0.05, multiplier = 1.0, jitter = 0.0 }}
        on_success = "queue:{succeeded}"
    """)
    async with running_worker(namespace, spec), Client(settings=namespace.settings) as client:
        recovers = await client.invoke("flaky", {"fail_times": 2})
        never_recovers = await client.invoke("flaky", {"fail_times": 3})
        successes = by_request_id(await collect(amqp, succeeded, 1, timeout=10))
        failures = by_request_id(await collect(amqp, namespace.names.failed, 1, timeout=10))
    await assert_empty(
        amqp, succeeded, namespace.names.failed, namespace.names.function_queue("flaky")
    )

    assert set(successes) == {recovers}
    message, record = successes[recovers]
    assert_header(message, recovers, "flaky", contract.SUCCESS)
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["responsePayload"] == "ok on attempt 2"
    assert record["responseContext"]["functionError"] == ""
    assert [attempt for attempt, _ in attempts_of("flaky", recovers)] == [0, 1, 2]

    assert set(failures) == {never_recovers}
    message, record = failures[never_recovers]
    assert_header(message, never_recovers, "flaky", contract.RETRIES_EXHAUSTED)
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert [attempt for attempt, _ in attempts_of("flaky", never_recovers)] == [0, 1, 2]


async def test_always_failing_ends_retries_exhausted_with_backoff_between_attempts(
    namespace: Namespace, amqp: Connection
) -> None:
    # Gaps of ~0.5 s (held in the worker), ~2 s (the ladder) and 3 s (capped by max): the
    # sub-second path, the ladder path and the cap. Each step is more than OVERHEAD_S
    # from its neighbours, so a schedule one step off, or an ignored cap, breaks a bound.
    initial, multiplier, cap, jitter, max_retries = 0.5, 4.0, 3.0, 0.1, 3
    spec = namespace.functions(f"""
        [functions.doomed]
        handler = "tests.support.handlers:always_fail"
        max_retries = {max_retries}

        [functions.doomed.backoff]
        initial = {initial}
        multiplier = {multiplier}
        max = {cap}
        jitter = {jitter}
    """)
    async with running_worker(namespace, spec), Client(settings=namespace.settings) as client:
        doomed = await client.invoke("doomed", {"n": 1})
        failures = by_request_id(await collect(amqp, namespace.names.failed, 1, timeout=25))
    await assert_empty(amqp, namespace.names.failed, namespace.names.function_queue("doomed"))

    assert set(failures) == {doomed}
    message, record = failures[doomed]
    assert_header(message, doomed, "doomed", contract.RETRIES_EXHAUSTED)
    assert record["requestContext"]["approximateInvokeCount"] == max_retries + 1
    assert record["responseContext"]["functionError"] == contract.UNHANDLED
    assert record["responsePayload"]["errorType"] == "ValueError"
    assert record["invocation"]["id"] == doomed
    assert "attempt" not in record["invocation"]

    runs = attempts_of("doomed", doomed)
    assert [attempt for attempt, _ in runs] == list(range(max_retries + 1))
    for retry, ((_, before), (_, after)) in enumerate(itertools.pairwise(runs)):
        low, high = backoff_bounds(retry, initial, multiplier, cap, jitter)
        gap = after - before
        assert low <= gap <= high, f"gap before retry {retry}: {gap:.3f} s not in [{low}, {high}]"


async def test_non_retryable_error_ends_after_one_attempt(
    namespace: Namespace, amqp: Connection
) -> None:
    spec = namespace.functions("""
        [functions.picky]
        handler = "tests.support.handlers:refuse"
        max_retries = 3
        backoff = { initial = 0.05 }
    """)
    async with running_worker(namespace, spec), Client(settings=namespace.settings) as client:
        refused = await client.invoke("picky", {"n": 1})
        failures = by_request_id(await collect(amqp, namespace.names.failed, 1, timeout=10))
    await assert_empty(amqp, namespace.names.failed, namespace.names.function_queue("picky"))

    assert set(failures) == {refused}
    message, record = failures[refused]
    assert_header(message, refused, "picky", contract.NON_RETRYABLE)
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["responseContext"]["functionError"] == contract.HANDLED
    assert record["responsePayload"]["errorType"] == "NonRetryableError"
    assert [attempt for attempt, _ in attempts_of("picky", refused)] == [0]


async def test_an_invocation_older_than_max_event_age_is_never_started(
    namespace: Namespace, amqp: Connection
) -> None:
    spec = namespace.functions("""
        [functions.fresh_only]
        handler = "tests.support.handlers:echo"
        max_event_age = 1
    """)
    stale = f"stale_{namespace.ns}"
    async with running_worker(namespace, spec):
        created_at = time.time_ns() // 1_000_000 - 5000
        wire = {
            "v": 1,
            "id": stale,
            "fn": "fresh_only",
            "payload": {"n": 1},
            "created_at": created_at,
        }
        await publish_raw(amqp, namespace.names, wire)
        failures = by_request_id(await collect(amqp, namespace.names.failed, 1, timeout=10))
    await assert_empty(amqp, namespace.names.failed, namespace.names.function_queue("fresh_only"))

    assert set(failures) == {stale}
    message, record = failures[stale]
    assert_header(message, stale, "fresh_only", contract.EVENT_AGE_EXCEEDED)
    assert record["responsePayload"]["errorType"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert record["invocation"] == wire
    assert attempts_of("fresh_only", stale) == []


async def test_a_retry_that_would_run_past_max_event_age_is_not_scheduled(
    namespace: Namespace, amqp: Connection
) -> None:
    spec = namespace.functions("""
        [functions.short_lived]
        handler = "tests.support.handlers:always_fail"
        max_event_age = 1
        max_retries = 3
        backoff = { initial = 2.0, jitter = 0.0 }
    """)
    async with running_worker(namespace, spec), Client(settings=namespace.settings) as client:
        aging = await client.invoke("short_lived", {"n": 1})
        failures = by_request_id(await collect(amqp, namespace.names.failed, 1, timeout=10))
    await assert_empty(amqp, namespace.names.failed, namespace.names.function_queue("short_lived"))

    assert set(failures) == {aging}
    message, record = failures[aging]
    assert_header(message, aging, "short_lived", contract.EVENT_AGE_EXCEEDED)
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert [attempt for attempt, _ in attempts_of("short_lived", aging)] == [0]


async def test_an_attempt_past_its_timeout_is_a_retried_timeout_error(
    namespace: Namespace, amqp: Connection
) -> None:
    timeout, backoff = 0.2, 0.05
    spec = namespace.functions(f"""
        [defaults]
        timeout = {timeout}
        max_retries = 1
        backoff = {{ initial = {backoff}, jitter = 0.0 }}

        [functions.slow]
        handler = "tests.support.handlers:sleep"

        [functions.slow_sync]
        handler = "tests.support.handlers:sync_sleep"
    """)
    async with running_worker(namespace, spec), Client(settings=namespace.settings) as client:
        sent = {
            await client.invoke("slow", {"seconds": 5}): "slow",
            await client.invoke("slow_sync", {"seconds": 0.5}): "slow_sync",
        }
        failures = by_request_id(await collect(amqp, namespace.names.failed, 2, timeout=10))
    await assert_empty(
        amqp,
        namespace.names.failed,
        namespace.names.function_queue("slow"),
        namespace.names.function_queue("slow_sync"),
    )

    assert set(failures) == set(sent)
    for invocation_id, function in sent.items():
        message, record = failures[invocation_id]
        assert_header(message, invocation_id, function, contract.RETRIES_EXHAUSTED)
        assert record["responseContext"]["functionError"] == contract.TIMEOUT
        assert record["responsePayload"]["errorType"] == "TimeoutError"
        assert record["requestContext"]["approximateInvokeCount"] == 2
        runs = attempts_of(function, invocation_id)
        assert [attempt for attempt, _ in runs] == [0, 1]
        assert runs[1][1] - runs[0][1] >= timeout + backoff - CLOCK_SLACK_S
