"""What the dead-letter backlog reader sends to the broker and how it reads the answer
(the backlog, the stranding and the heal themselves run against the real cluster:
tests/cluster/test_stranded_dead_letters.py)."""

from __future__ import annotations

import re

from asyncinvoke import stranded


def test_a_queue_name_reaches_the_program_as_bytes_only() -> None:
    name = 'ns.fn."),halt(),io:format("x'
    program = stranded._program("/", [name])
    literal = stranded._binary(name)
    assert re.fullmatch(r"<<(\d+,)*\d+>>", literal)
    assert bytes(int(b) for b in literal[2:-2].split(",")) == name.encode()
    assert "halt()" not in program
    assert literal in program and stranded._binary("/") in program


def test_the_backlog_is_read_per_queue_and_a_silent_leader_is_left_out() -> None:
    output = "ns.delay.00\t218\nns.fn.ok\t0\nns.delay.03\t-1\nnot a line\nok\n"
    assert stranded.parse_backlog(output) == {"ns.delay.00": 218, "ns.fn.ok": 0}


def test_a_name_with_a_tab_keeps_its_count() -> None:
    assert stranded.parse_backlog("odd\tname\t7\n") == {"odd\tname": 7}


def test_a_leader_is_moved_only_where_its_queue_keeps_a_majority() -> None:
    nodes = {"rabbit@a", "rabbit@b", "rabbit@c"}
    three = stranded.Stranded("ns.delay.00", "rabbit@a", ("rabbit@a", "rabbit@b", "rabbit@c"), 5)
    assert stranded.why_not_movable(three, nodes) is None
    reason = stranded.why_not_movable(three, nodes - {"rabbit@c"})
    assert reason is not None and "rabbit@c" in reason and "back" in reason
    alone = stranded.Stranded("ns.delay.00", "rabbit@a", ("rabbit@a",), 5)
    assert "one replica" in str(stranded.why_not_movable(alone, nodes))


def test_a_missing_or_failing_rabbitmq_tool_is_a_clear_error() -> None:
    import pytest

    from asyncinvoke.errors import PlacementUnknown
    from asyncinvoke.placement import run_cli

    with pytest.raises(PlacementUnknown, match="rabbitmqctl-nowhere is not installed here: "
                                               "the backlog unknown"):
        run_cli(["rabbitmqctl-nowhere", "-n", "rabbit@x"], "the backlog")
    with pytest.raises(PlacementUnknown, match="sh -c echo refused >&2; exit 3 failed: refused"):
        run_cli(["sh", "-c", "echo refused >&2; exit 3"], "the backlog")
    assert run_cli(["sh", "-c", "printf 'q\\t3\\n'"], "the backlog") == "q\t3\n"
