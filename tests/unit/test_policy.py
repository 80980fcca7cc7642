"""Admission (due? expired?) and settlement (done, retry or give up) over values and a clock."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncinvoke import contract, ladder, policy
from asyncinvoke.contract import Envelope
from asyncinvoke.errors import InvalidMessage
from asyncinvoke.functions import Backoff, FunctionSpec
from asyncinvoke.policy import DONE, RUN, Expire, Forward, GiveUp, Hold, Outcome, Retry

NOW = 1_700_000_000_000
DAY_S = 86400

FAILURE = Outcome(ok=False, error={"errorType": "E", "errorMessage": "", "stackTrace": []})
SUCCESS = Outcome(ok=True, result="ok")
FATAL = Outcome(ok=False, retryable=False, function_error=contract.HANDLED)

BACKOFFS = st.builds(
    Backoff,
    initial=st.floats(min_value=0.0, max_value=3600.0),
    multiplier=st.floats(min_value=1.0, max_value=100.0),
    max=st.floats(min_value=0.0, max_value=86400.0),
    jitter=st.floats(min_value=0.0, max_value=1.0),
)


def envelope(
    *, created_at: int = NOW, delay: int = 0, attempt: int = 0, due_at: int | None = None
) -> Envelope:
    return Envelope(
        id="inv_1",
        fn="f",
        payload=None,
        created_at=created_at,
        delay=delay,
        attempt=attempt,
        due_at=due_at,
    )


def spec(**changes: Any) -> FunctionSpec:
    return FunctionSpec("f", handler="m:f", **changes)


# -- admission ----------------------------------------------------------------------------


@given(
    created_at=st.integers(min_value=0, max_value=2**45),
    delay=st.integers(min_value=0, max_value=3600),
    due_shift_ms=st.none() | st.integers(min_value=-(10**8), max_value=10**8),
    since_created_ms=st.integers(min_value=-(10**6), max_value=10**9),
    max_event_age_s=st.integers(min_value=1, max_value=604800),
)
def test_admit_never_runs_an_invocation_before_its_due_time(
    created_at: int,
    delay: int,
    due_shift_ms: int | None,
    since_created_ms: int,
    max_event_age_s: int,
) -> None:
    due_at = None if due_shift_ms is None else created_at + due_shift_ms
    invocation = envelope(created_at=created_at, delay=delay, due_at=due_at)
    now = created_at + since_created_ms
    due = invocation.due_at_ms()
    decision = policy.admit(invocation, spec(max_event_age_s=max_event_age_s), now)
    if decision == RUN:
        assert now >= due
        assert now - created_at <= max_event_age_s * 1000
    elif isinstance(decision, Hold):
        assert 0 < decision.ms < ladder.HOLD_LIMIT_MS
        assert now + decision.ms == due
    elif isinstance(decision, Forward):
        assert decision.delay_s >= 1
        after_ladder = now + decision.delay_s * 1000
        # Out of the ladder at least LEAD_MS before its due time; the rest is held.
        assert after_ladder + ladder.LEAD_MS <= due < after_ladder + ladder.HOLD_LIMIT_MS
    else:
        assert isinstance(decision, Expire)
        assert due - now < ladder.HOLD_LIMIT_MS
        assert decision.age_ms > max_event_age_s * 1000
        assert decision.age_ms == max(now, due) - created_at


@given(
    delay=st.integers(min_value=0, max_value=3600),
    offset_ms=st.integers(min_value=0, max_value=999),
    lateness_ms=st.lists(st.integers(min_value=0, max_value=1500), min_size=3, max_size=3),
)
def test_a_delayed_invocation_starts_at_its_due_time_and_never_before(
    delay: int, offset_ms: int, lateness_ms: list[int]
) -> None:
    """Follow one invocation through ladder hops and holds, each possibly late."""
    invocation = envelope(delay=delay, due_at=NOW + delay * 1000 + offset_ms)
    now = NOW
    hops = 0
    while (decision := policy.admit(invocation, spec(), now)) != RUN:
        assert hops < 3, f"still not started after {hops} hops: {decision}"
        if isinstance(decision, Forward):
            now += decision.delay_s * 1000 + lateness_ms[hops]
        else:
            assert isinstance(decision, Hold)
            now += decision.ms
        hops += 1
    assert now >= invocation.due_at_ms()
    if not any(lateness_ms):
        assert now == invocation.due_at_ms()


def test_an_invocation_due_now_runs() -> None:
    assert policy.admit(envelope(), spec(), NOW) == RUN


def test_an_invocation_past_due_runs() -> None:
    assert policy.admit(envelope(), spec(), NOW + 5000) == RUN


def test_less_than_a_second_to_wait_is_held_in_the_worker() -> None:
    assert policy.admit(envelope(due_at=NOW + 979), spec(), NOW) == Hold(979)


def test_up_to_a_second_and_the_lead_is_held_in_the_worker() -> None:
    assert policy.admit(envelope(due_at=NOW + 990), spec(), NOW) == Hold(990)
    assert policy.admit(envelope(due_at=NOW + 1049), spec(), NOW) == Hold(1049)


def test_more_to_wait_goes_back_to_the_ladder_leaving_at_least_the_lead() -> None:
    assert policy.admit(envelope(due_at=NOW + 1050), spec(), NOW) == Forward(1)  # 50 ms held
    assert policy.admit(envelope(due_at=NOW + 4995), spec(), NOW) == Forward(4)  # 995 ms held
    assert policy.admit(envelope(due_at=NOW + 5049), spec(), NOW) == Forward(4)  # 1,049 ms held
    assert policy.admit(envelope(delay=200), spec(), NOW + 500) == Forward(199)


def test_an_invocation_older_than_max_event_age_expires() -> None:
    old = envelope(created_at=NOW - 61_000)
    assert policy.admit(old, spec(max_event_age_s=60), NOW) == Expire(61_000)


def test_an_invocation_exactly_max_event_age_old_still_runs() -> None:
    old = envelope(created_at=NOW - 60_000)
    assert policy.admit(old, spec(max_event_age_s=60), NOW) == RUN


def test_a_delay_longer_than_max_event_age_waits_then_expires_unstarted() -> None:
    invocation = envelope(delay=120)
    assert policy.admit(invocation, spec(max_event_age_s=60), NOW) == Forward(119)
    assert policy.admit(invocation, spec(max_event_age_s=60), NOW + 120_000) == Expire(120_000)


@given(
    ahead_ms=st.integers(min_value=ladder.HOLD_LIMIT_MS, max_value=10 * 365 * DAY_S * 1000),
    via_due_at=st.booleans(),
)
def test_forward_never_asks_more_than_the_ladder_reaches(ahead_ms: int, via_due_at: bool) -> None:
    # Built directly, not decoded: whatever decode lets through (a due time it does not
    # bound, a clock skew it tolerates), admission alone must stay within the ladder.
    if via_due_at:
        invocation = envelope(due_at=NOW + ahead_ms)
    else:
        invocation = envelope(created_at=NOW + ahead_ms)
    decision = policy.admit(invocation, spec(), NOW)
    assert isinstance(decision, Forward)
    assert 1 <= decision.delay_s <= ladder.MAX_DELAY_S


def test_a_creation_time_beyond_the_clock_skew_is_refused_at_decode() -> None:
    created_at = NOW + contract.MAX_CLOCK_SKEW_MS + 1000
    body = contract.pack({"v": 1, "id": "a", "fn": "f", "payload": None, "created_at": created_at})
    with pytest.raises(InvalidMessage, match="in the future"):
        contract.decode(body, received_at_ms=NOW, max_payload_bytes=1024, max_delay_s=3600)


# -- backoff ------------------------------------------------------------------------------


@given(
    backoff=BACKOFFS,
    retry_index=st.integers(min_value=0, max_value=8),
    seed=st.integers(),
)
def test_backoff_stays_within_the_jitter_band_and_under_the_cap(
    backoff: Backoff, retry_index: int, seed: int
) -> None:
    waited_ms = policy.backoff_ms(retry_index, backoff, random.Random(seed))
    base = min(backoff.max, backoff.initial * backoff.multiplier**retry_index)
    low = base * (1 - backoff.jitter) * 1000
    high = min(backoff.max, base * (1 + backoff.jitter)) * 1000
    assert low - 0.5 - 1e-6 <= waited_ms <= high + 0.5 + 1e-6
    assert waited_ms <= round(backoff.max * 1000)
    assert waited_ms >= 0


def test_backoff_without_jitter_doubles_up_to_the_cap() -> None:
    backoff = Backoff(initial=1.0, multiplier=2.0, max=10.0, jitter=0.0)
    assert [policy.backoff_ms(n, backoff) for n in range(6)] == [
        1000,
        2000,
        4000,
        8000,
        10000,
        10000,
    ]


def test_backoff_jitter_spreads_the_waits() -> None:
    backoff = Backoff(initial=10.0, multiplier=1.0, max=100.0, jitter=0.5)
    rng = random.Random(1)
    waits = {policy.backoff_ms(0, backoff, rng) for _ in range(50)}
    assert len(waits) > 10
    assert min(waits) >= 5000
    assert max(waits) <= 15000


# -- settlement ---------------------------------------------------------------------------


@given(attempt=st.integers(min_value=0, max_value=100), since_created_ms=st.integers(0, 10**10))
def test_a_success_is_done_whatever_the_attempt_or_age(attempt: int, since_created_ms: int) -> None:
    settled = policy.settle(SUCCESS, envelope(attempt=attempt), spec(), NOW + since_created_ms)
    assert settled == DONE


@given(attempt=st.integers(min_value=0, max_value=100))
def test_a_non_retryable_failure_gives_up_at_once(attempt: int) -> None:
    settled = policy.settle(FATAL, envelope(attempt=attempt), spec(max_retries=8), NOW)
    assert settled == GiveUp(contract.NON_RETRYABLE)


@given(
    max_retries=st.integers(min_value=0, max_value=8),
    extra=st.integers(min_value=0, max_value=100),
)
def test_a_failure_at_the_last_allowed_attempt_gives_up_exhausted(
    max_retries: int, extra: int
) -> None:
    invocation = envelope(attempt=max_retries + extra)
    settled = policy.settle(FAILURE, invocation, spec(max_retries=max_retries), NOW)
    assert settled == GiveUp(contract.RETRIES_EXHAUSTED)


@given(max_retries=st.integers(min_value=0, max_value=8), seed=st.integers())
def test_a_function_that_always_fails_is_retried_exactly_max_retries_times(
    max_retries: int, seed: int
) -> None:
    function = spec(max_retries=max_retries, max_event_age_s=604800)
    rng = random.Random(seed)
    invocation = envelope()
    now = NOW
    retries = 0
    while isinstance(settled := policy.settle(FAILURE, invocation, function, now, rng), Retry):
        retries += 1
        now = settled.due_at
        invocation = envelope(attempt=invocation.attempt + 1, due_at=settled.due_at)
    assert settled == GiveUp(contract.RETRIES_EXHAUSTED)
    assert retries == max_retries


@given(
    backoff=BACKOFFS,
    attempt=st.integers(min_value=0, max_value=7),
    since_created_ms=st.integers(min_value=0, max_value=10**9),
    max_event_age_s=st.integers(min_value=1, max_value=604800),
    seed=st.integers(),
)
def test_a_retry_is_scheduled_after_its_backoff_and_within_max_event_age(
    backoff: Backoff, attempt: int, since_created_ms: int, max_event_age_s: int, seed: int
) -> None:
    function = spec(max_retries=8, max_event_age_s=max_event_age_s, backoff=backoff)
    now = NOW + since_created_ms
    settled = policy.settle(FAILURE, envelope(attempt=attempt), function, now, random.Random(seed))
    expected_wait = policy.backoff_ms(attempt, backoff, random.Random(seed))
    if isinstance(settled, Retry):
        assert settled.backoff_ms == expected_wait
        assert settled.due_at == now + expected_wait
        assert settled.due_at - NOW <= max_event_age_s * 1000
    else:
        assert settled == GiveUp(contract.EVENT_AGE_EXCEEDED)
        assert now + expected_wait - NOW > max_event_age_s * 1000


def test_a_retry_that_would_start_beyond_max_event_age_gives_up() -> None:
    function = spec(max_event_age_s=60, backoff=Backoff(initial=2.0, jitter=0.0))
    invocation = envelope(created_at=NOW - 59_000)
    assert policy.settle(FAILURE, invocation, function, NOW) == GiveUp(contract.EVENT_AGE_EXCEEDED)


def test_a_retry_that_starts_exactly_at_max_event_age_is_allowed() -> None:
    function = spec(max_event_age_s=60, backoff=Backoff(initial=1.0, jitter=0.0))
    invocation = envelope(created_at=NOW - 59_000)
    assert policy.settle(FAILURE, invocation, function, NOW) == Retry(
        due_at=NOW + 1000, backoff_ms=1000
    )


def test_with_no_retries_the_first_failure_gives_up() -> None:
    settled = policy.settle(FAILURE, envelope(), spec(max_retries=0), NOW)
    assert settled == GiveUp(contract.RETRIES_EXHAUSTED)


# -- task mode ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "configured", "expected"),
    [(None, True, True), (None, False, False), (True, False, True), (False, True, False)],
)
def test_an_invocation_says_whether_it_is_a_task_and_else_its_function_does(
    asked: bool | None, configured: bool, expected: bool
) -> None:
    invocation = replace(envelope(), task=asked)
    assert policy.task_mode(invocation, spec(task_mode=configured)) is expected


def test_a_function_no_longer_configured_tracks_no_task_unless_the_invocation_asks() -> None:
    assert policy.task_mode(envelope(), None) is False
    assert policy.task_mode(replace(envelope(), task=True), None) is True
