"""The delay ladder: routing keys, the bindings that read them, and the split of a wait."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncinvoke import ladder

FUNCTION_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,63}", fullmatch=True)
DELAYS = st.integers(min_value=0, max_value=ladder.MAX_DELAY_S)
LEVELS = st.integers(min_value=0, max_value=ladder.LEVELS - 1)


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: '*' is exactly one word, '#' is zero or more words."""

    def match(pattern_words: list[str], key_words: list[str]) -> bool:
        if not pattern_words:
            return not key_words
        head, rest = pattern_words[0], pattern_words[1:]
        if head == "#":
            return any(match(rest, key_words[skip:]) for skip in range(len(key_words) + 1))
        if not key_words:
            return False
        return (head in ("*", key_words[0])) and match(rest, key_words[1:])

    return match(pattern.split("."), key.split("."))


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.c", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("#.c", "c", True),
        ("#.c", "a.b.c", True),
        ("#.c", "a.b.cc", False),
        ("*.#", "a", True),
        ("*", "a.b", False),
    ],
)
def test_the_topic_matcher_of_these_tests_follows_amqp_rules(
    pattern: str, key: str, expected: bool
) -> None:
    assert topic_matches(pattern, key) is expected


def test_routing_key_spells_the_delay_most_significant_bit_first() -> None:
    assert ladder.routing_key(11, "resize") == "0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.1.1.resize"


def test_routing_key_of_no_delay_is_all_zero_bits() -> None:
    assert ladder.routing_key(0, "f") == ".".join(["0"] * ladder.LEVELS) + ".f"


def test_the_ladder_reaches_131071_seconds() -> None:
    assert ladder.MAX_DELAY_S == 131071
    assert ladder.routing_key(131071, "f") == ".".join(["1"] * 17) + ".f"


@pytest.mark.parametrize("delay_s", [-1, ladder.MAX_DELAY_S + 1, 10**9])
def test_routing_key_refuses_a_delay_outside_the_reach(delay_s: int) -> None:
    with pytest.raises(ValueError, match=str(ladder.MAX_DELAY_S)):
        ladder.routing_key(delay_s, "f")


def _read_back(key: str) -> tuple[int, str]:
    """What a key spells: its first LEVELS words are the delay's bits, the rest the function."""
    words = key.split(".", ladder.LEVELS)
    return int("".join(words[: ladder.LEVELS]), 2), words[ladder.LEVELS]


@given(delay_s=DELAYS, function=FUNCTION_NAMES)
def test_delay_and_function_read_back_from_the_routing_key(delay_s: int, function: str) -> None:
    assert _read_back(ladder.routing_key(delay_s, function)) == (delay_s, function)


@given(delay_s=DELAYS, function=FUNCTION_NAMES)
def test_a_routing_key_has_one_word_per_level_then_the_function(
    delay_s: int, function: str
) -> None:
    words = ladder.routing_key(delay_s, function).split(".")
    assert len(words) == ladder.LEVELS + 1
    assert set(words[:-1]) <= {"0", "1"}
    assert words[-1] == function


@given(delay_s=DELAYS, function=FUNCTION_NAMES, level=LEVELS)
def test_a_key_matches_exactly_one_of_park_and_pass_at_each_level(
    delay_s: int, function: str, level: int
) -> None:
    key = ladder.routing_key(delay_s, function)
    parks = topic_matches(ladder.park_pattern(level), key)
    passes = topic_matches(ladder.pass_pattern(level), key)
    assert parks != passes


@given(delay_s=DELAYS, function=FUNCTION_NAMES)
def test_the_levels_that_park_a_message_add_up_to_its_delay(delay_s: int, function: str) -> None:
    key = ladder.routing_key(delay_s, function)
    parked = [
        level for level in range(ladder.LEVELS) if topic_matches(ladder.park_pattern(level), key)
    ]
    assert sum(2**level for level in parked) == delay_s


@given(delay_s=DELAYS, level=LEVELS)
def test_a_level_parks_a_message_when_its_bit_of_the_delay_is_set(delay_s: int, level: int) -> None:
    key = ladder.routing_key(delay_s, "f")
    assert topic_matches(ladder.park_pattern(level), key) is bool(delay_s >> level & 1)


@given(delay_s=DELAYS, function=FUNCTION_NAMES, other=FUNCTION_NAMES)
def test_the_deliver_binding_routes_on_the_function_name_only(
    delay_s: int, function: str, other: str
) -> None:
    key = ladder.routing_key(delay_s, function)
    assert topic_matches(ladder.deliver_pattern(function), key)
    assert topic_matches(ladder.deliver_pattern(other), key) is (other == function)


def test_park_and_pass_patterns_of_the_top_level_look_at_the_first_word() -> None:
    assert ladder.park_pattern(ladder.LEVELS - 1) == "1.#"
    assert ladder.pass_pattern(ladder.LEVELS - 1) == "0.#"
    assert ladder.park_pattern(0) == ".".join(["*"] * 16) + ".1.#"


@given(st.integers(min_value=0, max_value=ladder.MAX_DELAY_S * 1000))
def test_the_ladder_never_holds_past_the_due_time_and_leaves_the_worker_under_the_limit(
    remaining_ms: int,
) -> None:
    seconds = ladder.seconds_to_wait(remaining_ms)
    assert remaining_ms - seconds * 1000 < ladder.HOLD_LIMIT_MS
    if seconds:
        # Out of the ladder at least LEAD_MS before it is due: broker latency is absorbed.
        assert remaining_ms - seconds * 1000 >= ladder.LEAD_MS


@given(st.integers(min_value=1, max_value=ladder.MAX_DELAY_S))
def test_a_delay_enters_at_its_highest_set_bit(delay_s: int) -> None:
    level = ladder.entry_level(delay_s)
    assert 2**level <= delay_s < 2 ** (level + 1)
