"""Deaths read from a task's history (tasks.tracker.deaths, orphaned): what lets a
task-mode poison message be counted across the deferrals that make it a new message."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from asyncinvoke import policy
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import Event, Task
from asyncinvoke.tasks.tracker import deaths, orphaned

NOW = 1_700_000_000_000
E, R, T, F = Status.ENQUEUED, Status.RUNNING, Status.RETRYING, Status.FAILED


def task(*statuses: Status, lease_until: int | None = None) -> Task:
    events = tuple(Event(status, NOW + n) for n, status in enumerate(statuses))
    return Task(id="t", function="f", status=statuses[-1], created_at=NOW, updated_at=NOW,
                lease_until=lease_until, events=events)


def test_an_attempt_that_ended_is_no_death() -> None:
    assert deaths(task(E, R, Status.SUCCEEDED)) == 0
    assert deaths(task(E, R, T, R, T, R)) == 0


def test_each_claim_taken_over_from_a_dead_worker_is_one_death() -> None:
    assert deaths(task(E, R, R)) == 1
    assert deaths(task(E, R, R, R, R)) == 3
    assert deaths(task(E, R, R, T, R, R)) == 2


def test_deaths_before_a_replay_do_not_count_after_it() -> None:
    assert deaths(task(E, R, R, R, F, E, R)) == 0
    assert deaths(task(E, R, R, R, F, E, R, R)) == 1


@given(st.lists(st.sampled_from([T, Status.DEQUEUED]), max_size=10), st.integers(0, 20))
def test_one_more_takeover_is_one_more_death(waits: list[Status], takeovers: int) -> None:
    history = [E, R, *waits, R, *[R] * takeovers]
    assert deaths(task(*history)) == takeovers + (0 if waits else 1)


def test_a_running_task_whose_lease_ran_out_is_orphaned() -> None:
    assert orphaned(task(E, R, lease_until=NOW - 1), NOW)
    assert not orphaned(task(E, R, lease_until=NOW), NOW)  # still held, as a claim sees it
    assert not orphaned(task(E, R, T), NOW)
    assert not orphaned(task(E, R, Status.STOPPING, lease_until=NOW - 1), NOW)


@given(st.integers(1, 1000))
def test_a_poison_runs_once_and_then_delivery_limit_times_more(delivery_limit: int) -> None:
    spec = FunctionSpec("f", delivery_limit=delivery_limit)
    assert not policy.poisoned(0, spec)
    assert not policy.poisoned(delivery_limit, spec)
    assert policy.poisoned(delivery_limit + 1, spec)
