"""Text made encodable (asyncinvoke/text.py) where it enters a task or a JSON log line:
both stores, and every encoder on the way (orjson, asyncpg, sqlite3), can take it."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from asyncinvoke.observability import json_line
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import Event, Task, encode_events
from asyncinvoke.text import REPLACEMENT_CHARACTER, encodable

R = REPLACEMENT_CHARACTER


def test_a_nul_becomes_the_replacement_character() -> None:
    assert encodable("said \x00 and died") == f"said {R} and died"


def test_a_lone_surrogate_becomes_the_replacement_character() -> None:
    assert encodable("b'\\x80' as \udc80, then \ud800") == f"b'\\x80' as {R}, then {R}"


def test_a_surrogate_pair_becomes_the_character_it_stands_for() -> None:
    assert encodable("smile \ud83d\ude00") == "smile \U0001f600"


def test_clean_text_is_returned_as_it_is() -> None:
    text = "plain, ünïcode, \U0001f600"
    assert encodable(text) is text


def test_keys_and_strings_are_cleaned_at_any_depth() -> None:
    value = {"k\x00": [{"deep\udc80": ("x\x00", 1, None)}], 2: b"\x00 bytes stay"}
    assert encodable(value) == {f"k{R}": [{f"deep{R}": (f"x{R}", 1, None)}], 2: b"\x00 bytes stay"}


def test_an_event_and_a_task_error_are_cleaned_when_made() -> None:
    event = Event(Status.FAILED, 1, "HTTP500: \x00")
    task = Task("t1", "fn", Status.FAILED, 1, 1, error="bad \udc80", events=(event,))
    assert event.detail == f"HTTP500: {R}"
    assert task.error == f"bad {R}"
    assert orjson.loads(encode_events(task.events)) == [["Failed", 1, f"HTTP500: {R}"]]


@given(st.text(alphabet=st.characters(codec=None, exclude_categories=())))
def test_any_text_becomes_encodable_and_free_of_nul(text: str) -> None:
    cleaned = encodable(text)
    cleaned.encode("utf-8")  # raises on a lone surrogate
    assert "\x00" not in cleaned
    orjson.dumps(cleaned)


def test_a_json_log_line_with_a_lone_surrogate_is_written_not_raised() -> None:
    line = json_line({"outcome": "retry", "error": "cannot read \udc80", "n": 1})
    # Escaped, not replaced: the line keeps which code point the text held.
    assert orjson.loads(line) == {"outcome": "retry", "error": "cannot read \\udc80", "n": 1}
