"""JSON log lines never raise on the text they carry."""

from __future__ import annotations

import orjson

from asyncinvoke.observability import json_line
from asyncinvoke.text import escape_surrogates


def test_a_lone_surrogate_in_a_log_field_is_escaped_not_raised() -> None:
    line = json_line({"event": "attempt", "error": "bad \udc80 text", "n": [1, "\ud800"]})
    assert orjson.loads(line) == {
        "event": "attempt",
        "error": "bad \\udc80 text",
        "n": [1, "\\ud800"],
    }


def test_a_log_line_without_surrogates_is_plain_orjson() -> None:
    fields = {"event": "attempt", "text": "héllo ✓", "when": object}
    assert json_line(fields) == orjson.dumps(fields, default=str)


def test_escaping_keeps_pairs_and_other_values() -> None:
    assert escape_surrogates(("a", 1, None, b"\xff")) == ["a", 1, None, b"\xff"]
    assert escape_surrogates({"k\udc80": "😀"}) == {"k\\udc80": "😀"}
