"""FC timer expressions: the three forms, the errors that point at the field, and DST."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncinvoke.errors import InvalidTrigger
from asyncinvoke.triggers import cron

# croniter's work varies with the machine's load: no per-example deadline.
LOADED_MACHINE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

BERLIN = ZoneInfo("Europe/Berlin")


def ms(*args: int, tz: ZoneInfo = BERLIN, fold: int = 0) -> int:
    return int(datetime(*args, tzinfo=tz, fold=fold).timestamp()) * 1000  # type: ignore[misc]


def local(ms_: int) -> str:
    return datetime.fromtimestamp(ms_ / 1000, BERLIN).isoformat()


def test_six_fields_read_seconds_first() -> None:
    every_five_minutes = cron.parse("0 */5 * * * *")
    start = ms(2026, 1, 5, 10, 2, 30, tz=ZoneInfo("UTC"))
    assert every_five_minutes.next_after(start) == ms(2026, 1, 5, 10, 5, 0, tz=ZoneInfo("UTC"))
    every_ten_seconds = cron.parse("*/10 * * * * *")
    assert every_ten_seconds.next_after(start) == start + 10_000


def test_cron_tz_moves_the_wall_clock_to_that_zone() -> None:
    eight_in_shanghai = cron.parse("CRON_TZ=Asia/Shanghai 0 0 8 * * *")
    start = ms(2026, 6, 1, 0, 0, 0, tz=ZoneInfo("UTC"))
    assert cron.utc_iso(eight_in_shanghai.next_after(start)) == "2026-06-02T00:00:00Z"


@pytest.mark.parametrize(
    ("text", "interval_ms"),
    [
        ("@every 30s", 30_000),
        ("@every 5m", 300_000),
        ("@every 1h", 3_600_000),
        ("@every 1h30m", 5_400_000),
    ],
)
def test_every_reads_hours_minutes_and_seconds(text: str, interval_ms: int) -> None:
    schedule = cron.parse(text)
    assert isinstance(schedule, cron.Every)
    assert schedule.interval_ms == interval_ms


@pytest.mark.parametrize(
    "text",
    [
        "0 */5 * * *",
        "0 0 0 30 2 *",
        "@every 0s",
        "@every 5x",
        "@every",
        "CRON_TZ=Mars/Base 0 * * * * *",
        "61 * * * * *",
        "",
        "CRON_TZ=Europe/Berlin @every 5s",
    ],
)
def test_an_invalid_expression_names_the_cron_expression_field(text: str) -> None:
    with pytest.raises(InvalidTrigger) as caught:
        cron.parse(text, trigger="nightly")
    assert caught.value.field == "cronExpression"
    assert "nightly" in str(caught.value)


def test_a_time_the_spring_forward_day_skips_fires_right_after_the_gap() -> None:
    daily = cron.parse("CRON_TZ=Europe/Berlin 0 30 2 * * *")
    fired = daily.next_after(ms(2026, 3, 28, 12, 0, 0))
    assert local(fired) == "2026-03-29T03:00:00+02:00"
    assert local(daily.next_after(fired)) == "2026-03-30T02:30:00+02:00"


def test_a_wall_clock_time_the_fall_back_day_repeats_fires_at_each_instant_once() -> None:
    daily = cron.parse("CRON_TZ=Europe/Berlin 0 30 2 * * *")
    first = daily.next_after(ms(2026, 10, 24, 12, 0, 0))
    second = daily.next_after(first)
    assert (local(first), local(second)) == (
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:30:00+01:00",
    )
    assert second - first == 3_600_000
    assert local(daily.next_after(second)) == "2026-10-26T02:30:00+01:00"


def test_a_step_keeps_real_time_intervals_through_the_repeated_hour() -> None:
    every_twenty = cron.parse("CRON_TZ=Europe/Berlin 0 */20 * * * *")
    tick = ms(2026, 10, 25, 1, 50, 0)
    gaps = []
    for _ in range(9):
        following = every_twenty.next_after(tick)
        gaps.append(following - tick)
        tick = following
    assert gaps == [600_000] + [1_200_000] * 8


@LOADED_MACHINE
@given(
    st.integers(min_value=0, max_value=4_000_000_000_000),
    st.sampled_from(
        [
            "@every 7s",
            "*/15 * * * * *",
            "CRON_TZ=Europe/Berlin 0 30 2 * * *",
            "CRON_TZ=America/New_York 0 0 * * * 1-5",
        ]
    ),
)
def test_the_next_tick_is_a_whole_second_strictly_after_and_the_same_from_anywhere_before(
    after_ms: int, text: str
) -> None:
    schedule = cron.parse(text)
    tick = schedule.next_after(after_ms)
    assert tick > after_ms
    assert tick % 1000 == 0
    # Two schedulers starting at different moments before the tick agree on it.
    assert schedule.next_after(tick - 1) == tick
    assert schedule.next_after(max(after_ms, tick - 1000)) == tick
