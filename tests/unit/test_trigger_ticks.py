"""Which ticks fire: never early, each once across rounds, the window's edge, tick ids."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncinvoke.triggers import cron, ticks

# croniter's work varies with the machine's load: no per-example deadline.
LOADED_MACHINE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

EVERY_2S = cron.parse("@every 2s")
SCHEDULES = st.sampled_from(
    [
        cron.parse("@every 1s"),
        cron.parse("@every 3s"),
        cron.parse("*/5 * * * * *"),
        cron.parse("CRON_TZ=Europe/Berlin 10,20 * * * * *"),
    ]
)


def all_ticks(schedule: cron.Schedule, after_ms: int, until_ms: int) -> list[int]:
    found, tick = [], schedule.next_after(after_ms)
    while tick <= until_ms:
        found.append(tick)
        tick = schedule.next_after(tick)
    return found


def test_ticks_inside_the_window_fire_and_older_ones_are_skipped_and_counted() -> None:
    plan = ticks.plan(EVERY_2S, after_ms=1_000, now_ms=20_500, window_ms=10_000)
    assert plan.fire == (12_000, 14_000, 16_000, 18_000, 20_000)
    assert (plan.skipped, plan.first_skipped_ms, plan.last_skipped_ms) == (5, 2_000, 10_000)
    assert plan.handled_ms == 20_000


def test_a_round_with_nothing_due_changes_nothing() -> None:
    plan = ticks.plan(EVERY_2S, after_ms=20_000, now_ms=21_999, window_ms=60_000)
    assert plan == ticks.TickPlan((), 0, None, None, 20_000, 22_000)


def test_a_long_outage_counts_at_most_so_many_skips_and_still_fires_the_window() -> None:
    every_second = cron.parse("@every 1s")
    plan = ticks.plan(every_second, after_ms=0, now_ms=86_400_000, window_ms=3_000)
    assert plan.skipped == ticks.MAX_COUNTED_SKIPS
    assert plan.fire == (86_397_000, 86_398_000, 86_399_000, 86_400_000)


@LOADED_MACHINE
@given(SCHEDULES, st.integers(0, 10**12), st.integers(0, 200_000), st.integers(0, 120_000))
def test_no_tick_fires_early_and_fired_plus_skipped_are_every_tick_in_between(
    schedule: cron.Schedule, after_ms: int, elapsed_ms: int, window_ms: int
) -> None:
    now = after_ms + elapsed_ms
    plan = ticks.plan(schedule, after_ms, now, window_ms)
    assert all(after_ms < tick <= now for tick in plan.fire)
    assert all(tick >= now - window_ms for tick in plan.fire)
    assert list(plan.fire) == sorted(set(plan.fire))
    expected = all_ticks(schedule, after_ms, now)
    assert plan.skipped + len(plan.fire) == len(expected)
    assert list(plan.fire) == expected[len(expected) - len(plan.fire) :]


@LOADED_MACHINE
@given(SCHEDULES, st.integers(0, 10**12), st.lists(st.integers(0, 9_000), min_size=1, max_size=30))
def test_rounds_at_any_moments_fire_every_tick_exactly_once(
    schedule: cron.Schedule, start_ms: int, steps: list[int]
) -> None:
    # A scheduler that wakes at arbitrary moments (early, late, twice in a row), with a
    # window longer than any gap, fires each tick once and none before its time.
    handled, now, fired = start_ms, start_ms, []
    for step in steps:
        now += step
        plan = ticks.plan(schedule, handled, now, window_ms=60_000)
        assert all(tick <= now for tick in plan.fire)
        fired.extend(plan.fire)
        handled = plan.handled_ms
    assert fired == all_ticks(schedule, start_ms, now)


def test_a_tick_id_is_the_function_trigger_and_time_and_fits_the_contract() -> None:
    assert ticks.tick_id("report", "nightly", 1_700_000_000_000) == "report-nightly-1700000000000"
    long_id = ticks.tick_id("f" * 64, "t" * 128, 1_700_000_000_000)
    assert len(long_id) <= 128
    assert long_id == ticks.tick_id("f" * 64, "t" * 128, 1_700_000_000_000)
    assert long_id != ticks.tick_id("f" * 64, "u" * 128, 1_700_000_000_000)


def test_the_timer_event_is_fcs_shape() -> None:
    event = orjson.loads(ticks.timer_event("nightly", 1_700_000_005_000, "hello"))
    assert event == {
        "triggerTime": "2023-11-14T22:13:25Z",
        "triggerName": "nightly",
        "payload": "hello",
    }
