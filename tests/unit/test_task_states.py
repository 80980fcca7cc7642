"""The task state machine (SPEC section 6): which status may follow which, and that a
terminal status is never left."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from asyncinvoke.tasks.states import TERMINAL, WAITING, Status, can_transition, is_terminal

STATUSES = list(Status)


def reachable_from(start: Status) -> set[Status]:
    seen = {start}
    frontier = [start]
    while frontier:
        current = frontier.pop()
        for target in STATUSES:
            if can_transition(current, target) and target not in seen:
                seen.add(target)
                frontier.append(target)
    return seen


@given(st.lists(st.sampled_from(STATUSES), max_size=40))
def test_a_terminal_status_is_never_left(targets: list[Status]) -> None:
    current = Status.ENQUEUED
    for target in targets:
        if is_terminal(current):
            assert not can_transition(current, target), f"{current} -> {target}"
        elif can_transition(current, target):
            current = target


def test_terminal_statuses_are_succeeded_failed_stopped_expired_invalid() -> None:
    assert {status for status in STATUSES if is_terminal(status)} == {
        Status.SUCCEEDED,
        Status.FAILED,
        Status.STOPPED,
        Status.EXPIRED,
        Status.INVALID,
    }
    assert TERMINAL.isdisjoint(WAITING)


def test_no_status_moves_to_itself() -> None:
    assert not [status for status in STATUSES if can_transition(status, status)]


def test_nothing_goes_back_to_enqueued() -> None:
    assert not [status for status in STATUSES if can_transition(status, Status.ENQUEUED)]


def test_every_status_is_reachable_from_enqueued() -> None:
    assert reachable_from(Status.ENQUEUED) == set(STATUSES)


def test_every_unfinished_status_can_still_end() -> None:
    for status in set(STATUSES) - TERMINAL:
        assert reachable_from(status) & TERMINAL, status


def test_a_task_that_has_not_started_stops_at_once() -> None:
    for status in WAITING:
        assert can_transition(status, Status.STOPPED), status
        assert not can_transition(status, Status.STOPPING), status


def test_a_running_task_is_asked_to_stop_and_then_stops() -> None:
    assert can_transition(Status.RUNNING, Status.STOPPING)
    assert [s for s in STATUSES if can_transition(Status.STOPPING, s)] == [Status.STOPPED]


def test_a_running_attempt_ends_in_success_failure_or_a_retry() -> None:
    for target in (Status.SUCCEEDED, Status.FAILED, Status.RETRYING):
        assert can_transition(Status.RUNNING, target), target


def test_a_retry_waits_again_and_runs_again() -> None:
    assert can_transition(Status.RETRYING, Status.DEQUEUED)
    assert can_transition(Status.RETRYING, Status.RUNNING)
    assert can_transition(Status.DEQUEUED, Status.RUNNING)


def test_only_a_task_that_has_not_started_expires() -> None:
    expiring = {status for status in STATUSES if can_transition(status, Status.EXPIRED)}
    assert expiring == set(WAITING)


def test_only_a_running_task_succeeds() -> None:
    succeeding = {status for status in STATUSES if can_transition(status, Status.SUCCEEDED)}
    assert succeeding == {Status.RUNNING}
