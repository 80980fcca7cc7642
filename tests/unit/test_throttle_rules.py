"""Throttles, over values and a clock: a busy function's attempt spends its own budget, not
a retry; Retry-After is honoured; the throttle state travels in the envelope's meta, where
an older worker carries it unread; tasks and the functions file know it."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncinvoke import Throttled, contract, functions, policy
from asyncinvoke.contract import Envelope, ErrorInfo, Outcome
from asyncinvoke.errors import ConfigError, InvalidMessage
from asyncinvoke.functions import Backoff, FunctionSpec
from asyncinvoke.journal import Journal
from asyncinvoke.metrics import Metrics
from asyncinvoke.policy import GiveUp, Retry, Throttle
from asyncinvoke.runners import PythonRunner, Watchdog, make_context, retry_after_ms
from asyncinvoke.tasks.states import WAITING, Status, can_transition
from asyncinvoke.tasks.store import decide_claim, decide_transition, new_task

NOW = 1_700_000_000_000
HOUR_MS = 3_600_000
BUSY = Outcome(ok=False, error=ErrorInfo("HTTP429", "slow down"), status_code=429,
               throttled=True, retry_after_ms=1000)
BUSY_NO_WORD = replace(BUSY, retry_after_ms=None)
FAILURE = Outcome(ok=False, error=ErrorInfo("E", ""))


def envelope(**changes: Any) -> Envelope:
    return replace(Envelope(id="inv_1", fn="f", payload=None, created_at=NOW), **changes)


def spec(**changes: Any) -> FunctionSpec:
    return FunctionSpec("f", handler="m:f", **changes)


# -- policy --------------------------------------------------------------------------------


def test_a_throttle_spends_no_retry_even_when_the_retries_are_spent() -> None:
    last_try = envelope(attempt=3)

    settled = policy.settle(BUSY, last_try, spec(max_retries=3), NOW, random.Random(1))

    assert isinstance(settled, Throttle)
    again = settled.next_envelope(last_try)
    assert (again.attempt, again.throttles, again.throttled_since) == (3, 1, NOW)
    assert again.due_at == settled.due_at and not again.replay
    # ... while a plain failure on the same envelope ends it.
    assert policy.settle(FAILURE, last_try, spec(max_retries=3), NOW) == GiveUp(
        contract.RETRIES_EXHAUSTED
    )


def test_the_budget_counts_from_the_first_throttle_and_its_end_is_throttle_exhausted() -> None:
    budget = spec(throttle_budget_s=10, max_event_age_s=86400)
    throttled_before = envelope(throttles=4, throttled_since=NOW - 8_000, created_at=NOW - 9_000)

    assert isinstance(policy.settle(BUSY, throttled_before, budget, NOW, random.Random(1)),
                      Throttle)  # due at most 1.2 s later: 9.2 s into a budget of 10
    late = policy.settle(BUSY, throttled_before, budget, NOW + 1_000, random.Random(1))
    assert late == GiveUp(contract.THROTTLE_EXHAUSTED)


def test_max_event_age_still_bounds_a_throttled_invocation() -> None:
    old = envelope(created_at=NOW - 59_500)

    settled = policy.settle(BUSY, old, spec(max_event_age_s=60), NOW, random.Random(1))

    assert settled == GiveUp(contract.EVENT_AGE_EXCEEDED)


@given(
    retry_after_ms=st.none() | st.integers(min_value=0, max_value=10**9),
    throttles=st.integers(min_value=0, max_value=1000),
    since_ago_ms=st.integers(min_value=0, max_value=6 * HOUR_MS),
    budget_s=st.integers(min_value=1, max_value=functions.THROTTLE_BUDGET_LIMIT_S),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(),
)
def test_a_throttle_waits_what_the_function_asked_and_never_leaves_its_budget(
    retry_after_ms: int | None, throttles: int, since_ago_ms: int, budget_s: int,
    jitter: float, seed: int,
) -> None:
    busy = replace(BUSY, retry_after_ms=retry_after_ms)
    backoff = Backoff(jitter=jitter)
    throttled = envelope(throttles=throttles, throttled_since=NOW - since_ago_ms,
                         created_at=NOW - since_ago_ms)
    rules = spec(throttle_budget_s=budget_s, max_event_age_s=604800, backoff=backoff)

    settled = policy.settle(busy, throttled, rules, NOW, random.Random(seed))

    if isinstance(settled, Throttle):
        assert settled.wait_ms >= policy.MIN_THROTTLE_WAIT_MS
        if retry_after_ms is not None:
            assert retry_after_ms <= settled.wait_ms
            assert settled.wait_ms <= max(policy.MIN_THROTTLE_WAIT_MS,
                                          round(retry_after_ms * (1 + jitter)) + 1)
        assert settled.due_at == NOW + settled.wait_ms
        assert settled.due_at - settled.since <= budget_s * 1000
        assert settled.since == NOW - since_ago_ms
    else:
        assert settled == GiveUp(contract.THROTTLE_EXHAUSTED)


def test_only_retries_and_throttles_follow_again() -> None:
    assert policy.follows_again(Retry(NOW, 1))
    assert policy.follows_again(Throttle(NOW, 1, NOW))
    assert not policy.follows_again(policy.DONE)
    assert not policy.follows_again(GiveUp(contract.THROTTLE_EXHAUSTED))


# -- Retry-After ---------------------------------------------------------------------------


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    in_90_s = datetime.fromtimestamp((NOW + 90_000) / 1000, UTC)
    assert retry_after_ms("1", NOW) == 1000
    assert retry_after_ms(" 120 ", NOW) == 120_000
    assert retry_after_ms(format_datetime(in_90_s, usegmt=True), NOW) == 90_000
    assert retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == 0  # in the past
    for unreadable in (None, "", "-1", "1.5", "soon", "Wed, 21 Oct 2015 07:28:00", "٣"):
        assert retry_after_ms(unreadable, NOW) is None


# -- the envelope's throttle state, in meta -------------------------------------------------


def _decoded(wire: dict[str, Any]) -> Envelope:
    return contract.decode(contract.pack(wire), received_at_ms=NOW, max_payload_bytes=2**20,
                           max_delay_s=3600)


@given(
    throttles=st.integers(min_value=0, max_value=contract.MAX_THROTTLES),
    since=st.integers(min_value=0, max_value=NOW),
    meta=st.none() | st.dictionaries(st.text(max_size=5).filter(
        lambda key: not key.startswith("asyncinvoke-")), st.text(max_size=5), max_size=3),
)
def test_the_throttle_state_round_trips_through_meta_and_the_callers_meta_stays_its_own(
    throttles: int, since: int, meta: dict[str, str] | None
) -> None:
    sent = envelope(throttles=throttles, throttled_since=since if throttles else None,
                    meta=meta or None)

    received = _decoded(sent.to_wire())

    assert received == sent
    assert received.meta == (meta or None)
    replayed = sent.for_replay()
    assert replayed.get("meta") == (meta or None)


def test_an_older_workers_envelope_has_no_throttles_and_a_throttled_one_stays_readable() -> None:
    plain = {"v": 1, "id": "a", "fn": "f", "payload": 1, "created_at": NOW}
    assert (_decoded(plain).throttles, _decoded(plain).throttled_since) == (0, None)
    throttled = envelope(throttles=2, throttled_since=NOW - 5, meta={"traceparent": "00-x"})
    wire = throttled.to_wire()
    # Only the public keys of SPEC section 4 (an older worker refuses others); meta is text.
    assert set(wire) <= {"v", "id", "fn", "payload", "created_at", "meta"}
    assert wire["meta"] == {"traceparent": "00-x", "asyncinvoke-throttles": "2",
                            "asyncinvoke-throttled-since": str(NOW - 5)}


@pytest.mark.parametrize("value", ["x", "-1", "1.5", "", "٣", str(contract.MAX_THROTTLES + 1)])
def test_a_malformed_throttle_count_in_meta_is_an_invalid_message_naming_the_key(
    value: str,
) -> None:
    wire = {"v": 1, "id": "a", "fn": "f", "payload": 1,
            "meta": {"asyncinvoke-throttles": value}}
    with pytest.raises(InvalidMessage, match="asyncinvoke-throttles"):
        _decoded(wire)


# -- a handler's Throttled -----------------------------------------------------------------


async def test_a_handler_raising_throttled_is_a_throttled_outcome_with_its_retry_after() -> None:
    async def busy(event: Any, context: Any) -> None:
        raise Throttled("the printer is busy", retry_after=2.5)

    def busy_sync(event: Any, context: Any) -> None:
        raise Throttled()

    outcomes = []
    for handler in (busy, busy_sync):
        rules = spec(timeout_s=5)
        watchdog = Watchdog()
        runner = PythonRunner(rules, handler, watchdog)
        try:
            sent = envelope()
            outcomes.append(await asyncio.wait_for(runner.run(sent, make_context(sent, rules)), 5))
        finally:
            runner.close()
            watchdog.close()
    assert [(o.throttled, o.retry_after_ms, o.ok, o.status_code) for o in outcomes] == [
        (True, 2500, False, 429), (True, None, False, 429),
    ]
    assert outcomes[0].error is not None and outcomes[0].error.error_type == "Throttled"
    assert outcomes[0].error.message == "the printer is busy"


@pytest.mark.parametrize("retry_after", [-1, float("nan"), float("inf")])
def test_throttled_refuses_a_retry_after_that_is_no_wait(retry_after: float) -> None:
    with pytest.raises(ValueError, match="retry_after"):
        Throttled(retry_after=retry_after)


# -- tasks, the functions file, metrics -----------------------------------------------------


def test_a_throttled_task_waits_and_gives_back_the_attempt_its_claim_counted() -> None:
    assert Status.THROTTLED in WAITING
    assert can_transition(Status.RUNNING, Status.THROTTLED)
    assert can_transition(Status.THROTTLED, Status.RUNNING)
    claimed = decide_claim(new_task("t", "f", b"\xc0", NOW), 0, NOW, 1000).task
    assert claimed is not None and claimed.attempts == 1
    throttled = decide_transition(claimed, Status.THROTTLED, NOW + 1, "busy", result=None,
                                  error="HTTP429: busy", result_max_bytes=100)
    assert throttled is not None and throttled.attempts == 0
    assert throttled.events[-1].status is Status.THROTTLED


def test_throttle_budget_is_a_functions_file_key_with_fcs_default() -> None:
    loaded = functions.parse(
        '[defaults]\nthrottle_budget = 600\n[functions.a]\nurl = "http://x/"\n'
        '[functions.b]\nurl = "http://x/"\nthrottle_budget = 2\n'
        '[functions.c]\nhandler = "m:f"\n'
    )
    assert [loaded.functions[n].throttle_budget_s for n in "abc"] == [600, 2, 600]
    assert FunctionSpec("f").throttle_budget_s == 18000
    assert loaded.functions["b"].policy()["throttle_budget"] == 2
    with pytest.raises(ConfigError, match=r"'throttle_budget'.*between 1 and 86400"):
        functions.parse('[functions.a]\nurl = "http://x/"\nthrottle_budget = 0\n')


def test_a_throttle_is_counted_apart_from_retries_and_failures() -> None:
    metrics = Metrics(["f"])
    journal = Journal(metrics)

    journal.settled(envelope(), Throttle(NOW + 1000, 1000, NOW), BUSY)
    journal.settled(envelope(), GiveUp(contract.THROTTLE_EXHAUSTED), BUSY)

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert value("asyncinvoke_throttles_total", function="f") == 1
    assert value("asyncinvoke_retries_total", function="f") is None
    assert value("asyncinvoke_failure_records_total", function="f",
                 condition="ThrottleExhausted") == 1
    assert value("asyncinvoke_invocations_total", function="f", outcome="throttled") == 1


def test_a_handler_process_answering_throttled_is_a_throttled_outcome() -> None:
    from asyncinvoke.process_executor import _answer_outcome

    answer = {"ok": False, "error": ErrorInfo("Throttled", "busy").to_wire(),
              "retryable": True, "throttled": True, "retry_after": 1.5}

    outcome = _answer_outcome(answer, 0.0)

    assert (outcome.throttled, outcome.retry_after_ms, outcome.status_code) == (True, 1500, 429)
    assert outcome.error == ErrorInfo("Throttled", "busy")
