"""The configuration store on the real broker: a stream every store of a namespace reads
alike, durable across restarts, with last-write-wins under concurrent writers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asyncinvoke.broker import Broker
from asyncinvoke.docstore import Change, DocumentStore
from tests.conftest import Namespace

KIND = "test-kind"


@asynccontextmanager
async def store_of(namespace: Namespace) -> AsyncIterator[DocumentStore]:
    async with (
        Broker(namespace.settings) as broker,
        DocumentStore(broker, namespace.names) as store,
    ):
        yield store


async def test_put_get_list_delete_with_versions_and_times(namespace: Namespace) -> None:
    async with store_of(namespace) as store:
        first = await store.put(KIND, "a", {"x": 1})
        second = await store.put(KIND, "a", {"x": 2})
        await store.put(KIND, "b", {"y": 1})
        assert store.get(KIND, "a") == second
        assert second.version > first.version > 0
        assert second.created_ms == first.created_ms <= second.modified_ms
        assert [entry.name for entry in store.list(KIND)] == ["a", "b"]
        assert store.list("other-kind") == []
        removed = await store.delete(KIND, "a")
        assert removed == second
        assert await store.delete(KIND, "a") is None
        assert store.get(KIND, "a") is None


async def test_a_store_started_later_reads_the_whole_log_before_it_is_ready(
    namespace: Namespace,
) -> None:
    async with store_of(namespace) as writer:
        for value in range(20):
            await writer.put(KIND, f"k{value % 5}", {"value": value})
        await writer.delete(KIND, "k0")
        expected = {entry.name: entry for entry in writer.list(KIND)}
    # Everything restarts: a new connection, a new store, nothing but the stream.
    async with store_of(namespace) as reader:
        assert {entry.name: entry for entry in reader.list(KIND)} == expected
        assert sorted(expected) == ["k1", "k2", "k3", "k4"]


async def test_a_change_reaches_another_stores_subscribers_at_once(namespace: Namespace) -> None:
    async with store_of(namespace) as writer, store_of(namespace) as reader:
        heard: asyncio.Queue[tuple[Change, float]] = asyncio.Queue()
        reader.subscribe(lambda change: heard.put_nowait((change, time.perf_counter())))
        lags = []
        for value in range(10):
            started = time.perf_counter()
            written = await writer.put(KIND, "live", {"value": value})
            change, at = await asyncio.wait_for(heard.get(), 5)
            assert change.entry == written
            lags.append(at - started)
        removed = await writer.delete(KIND, "live")
        change, _ = await asyncio.wait_for(heard.get(), 5)
        assert change.entry is None and change.previous == removed
        assert max(lags) < 2.0, lags


async def test_concurrent_writers_agree_on_the_last_write_and_answer_what_was_stored(
    namespace: Namespace,
) -> None:
    async with store_of(namespace) as one, store_of(namespace) as two:
        logged: dict[int, object] = {}  # the log as a third party reads it: version → doc
        one.subscribe(lambda change: logged.update({change.version: change.entry}))
        writes = [
            (store, {"writer": label, "n": n})
            for n in range(10)
            for store, label in ((one, "one"), (two, "two"))
        ]
        answers = await asyncio.gather(*(store.put(KIND, "f", doc) for store, doc in writes))
        await one.sync()
        await two.sync()
        final = one.get(KIND, "f")
        assert final is not None and two.get(KIND, "f") == final
        assert final == logged[max(logged)]  # the last write in the log wins everywhere
        # Every answer is a state the log held (never the request echoed back), and a
        # writer whose write was overtaken before it was read back is shown the winner's.
        for answer in answers:
            assert logged[answer.version] == answer
