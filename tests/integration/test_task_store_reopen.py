"""The store's one way out of an end state, ``reopen`` (a replay from the failure queue),
on both stores: only a task that ended without success is Enqueued again."""

from __future__ import annotations

import pytest

from asyncinvoke.tasks.states import REPLAYABLE, TERMINAL, Status
from asyncinvoke.tasks.store import Claim, TaskStore
from tests.integration.test_task_store import LEASE_MS, NOW, store, stores, task_in

__all__ = ["store", "stores"]  # the fixtures, on both stores

REPLAYED = "replayed by the test"


@pytest.mark.parametrize("status", sorted(REPLAYABLE))
async def test_a_task_that_ended_without_success_is_enqueued_again_and_runs(
    store: TaskStore, status: Status
) -> None:
    before = await task_in(store, status)

    reopened = await store.reopen("inv-1", NOW + 100, REPLAYED)
    read = await store.get("inv-1")
    claimed = await store.claim("inv-1", 0, NOW + 200, LEASE_MS)

    assert reopened is not None
    assert read == reopened
    assert reopened.status is Status.ENQUEUED
    assert reopened.events[:-1] == before.events
    assert (reopened.events[-1].status, reopened.events[-1].detail) == (Status.ENQUEUED, REPLAYED)
    assert reopened.ended_at is None and reopened.lease_until is None
    assert await store.purge(NOW + 10_000) == 0, "a reopened task is not purged"
    assert claimed.claim is Claim.CLAIMED
    assert claimed.task is not None and claimed.task.status is Status.RUNNING


@pytest.mark.parametrize("status", sorted(set(Status) - REPLAYABLE))
async def test_any_other_task_is_not_reopened_and_not_changed(
    store: TaskStore, status: Status
) -> None:
    before = await task_in(store, status)

    assert await store.reopen("inv-1", NOW + 100, REPLAYED) is None
    assert await store.get("inv-1") == before


def test_succeeded_and_stopped_are_never_replayed() -> None:
    assert REPLAYABLE < TERMINAL
    assert Status.SUCCEEDED not in REPLAYABLE
    assert Status.STOPPED not in REPLAYABLE
