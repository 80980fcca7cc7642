"""The configuration store across a broker restart (``stop_app; start_app`` on the suite's
private node): a store that was running reads what was written while and after the broker
was away, applies every change once and in order, and writes again."""

from __future__ import annotations

import asyncio

import pytest

from asyncinvoke.broker import Broker
from asyncinvoke.docstore import DocumentStore
from tests.chaos.conftest import NodeNamespace
from tests.conftest import wait_for
from tests.support.private_broker import PrivateBroker

pytestmark = pytest.mark.timeout(180)
KIND = "test-kind"


async def test_a_running_store_follows_the_stream_across_a_broker_restart(
    node_namespace: NodeNamespace, broker_node: PrivateBroker
) -> None:
    settings, names = node_namespace.settings, node_namespace.names
    async with Broker(settings) as broker, DocumentStore(broker, names) as reader:
        heard: list[int] = []
        reader.subscribe(lambda change: heard.append(change.version))
        async with Broker(settings) as other, DocumentStore(other, names) as writer:
            await writer.put(KIND, "kept", {"n": 1})
            await writer.put(KIND, "gone", {"n": 1})
        await wait_for(lambda: reader.get(KIND, "gone") is not None, 10, "the first writes")
        await asyncio.to_thread(broker_node.stop_app)
        await asyncio.to_thread(broker_node.start_app)
        async with Broker(settings) as other, DocumentStore(other, names) as writer:
            await writer.put(KIND, "kept", {"n": 2})
            await writer.delete(KIND, "gone")
            await writer.put(KIND, "new", {"n": 1})
        await wait_for(lambda: reader.get(KIND, "new") is not None, 60, "the reader to catch up")
        assert reader.get(KIND, "gone") is None
        kept = reader.get(KIND, "kept")
        assert kept is not None and kept.document == {"n": 2}
        assert heard == sorted(set(heard)), heard  # each change once, in log order
        # The reconnected store writes and reads its own write back.
        mine = await reader.put(KIND, "after", {"n": 1}, timeout_s=30)
        assert reader.get(KIND, "after") == mine
