"""The supervisor's own decisions: backoff, how a child ended, when a child counts as ready."""

from __future__ import annotations

import signal
from types import SimpleNamespace
from typing import Any

import pytest

from asyncinvoke.errors import ConfigError
from asyncinvoke.observability import describe_exit
from asyncinvoke.settings import cpu_count, parse_processes
from asyncinvoke.supervisor import Child, restart_delay


def test_restart_backoff_doubles_from_half_a_second_up_to_thirty() -> None:
    assert [restart_delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_an_exit_is_told_by_its_signal_name_or_its_status() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert describe_exit(3) == "exited with status 3"


def _child(returncode: Any = None) -> Child:
    child = Child(0)
    child.process = SimpleNamespace(returncode=returncode, pid=42)  # type: ignore[assignment]
    return child


def test_a_child_is_ready_after_ready_and_only_while_its_heartbeats_are_on_time() -> None:
    child = _child()
    assert child.not_ready(now=0.0, watchdog_s=1.0) == "starting"
    child.heard(b"READY=1\nSTATUS=connected", now=10.0)
    assert child.not_ready(now=10.5, watchdog_s=1.0) is None
    assert child.not_ready(now=11.5, watchdog_s=1.0) is not None  # no beat for 1.5 s
    child.heard(b"WATCHDOG=1\nSTATUS=connected", now=11.6)
    assert child.not_ready(now=12.0, watchdog_s=1.0) is None
    child.heard(b"STOPPING=1", now=12.1)
    assert child.not_ready(now=12.2, watchdog_s=1.0) == "starting"


def test_a_dead_child_is_not_ready() -> None:
    child = _child(returncode=-9)
    child.heard(b"READY=1", now=0.0)
    assert child.not_ready(now=0.0, watchdog_s=1.0) == "restarting"


def test_processes_take_a_number_or_auto() -> None:
    assert parse_processes("3") == 3
    assert parse_processes("auto") == cpu_count() >= 1
    for bad in ("0", "x", "257"):
        with pytest.raises(ConfigError, match="ASYNCINVOKE_PROCESSES"):
            parse_processes(bad)
