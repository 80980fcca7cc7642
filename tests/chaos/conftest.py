"""The chaos suite: tests that disrupt a broker run on a RabbitMQ node of their own.

The node is started once for the suite (about 10 s) and thrown away at the end; each
test still gets its own namespace on it. Without rabbitmq-server the tests skip, and
under CI=true they fail instead: a chaos suite that silently did not run proves nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest

from tests.support import private_broker
from tests.support.suite_broker import NamespaceOn, for_the_suite


@pytest.fixture(scope="session")
def broker_node() -> Iterator[private_broker.PrivateBroker]:
    yield from for_the_suite(
        private_broker.start,
        private_broker.BrokerNotAvailable,
        private_broker.PrivateBroker.stop,
        suite="chaos",
        needs="a private RabbitMQ node",
    )


class NodeNamespace(NamespaceOn):
    """A namespace on the private node: clients, workers and subprocesses point at it."""

    def __init__(self, tmp_path: Path, node: private_broker.PrivateBroker):
        super().__init__(tmp_path, node.url)
        self.node = node

    async def cleanup(self) -> None:
        """Nothing: the node and everything on it is thrown away with the suite."""


@pytest.fixture
def node_namespace(tmp_path: Path, broker_node: private_broker.PrivateBroker) -> NodeNamespace:
    return NodeNamespace(tmp_path, broker_node)


@pytest.fixture
async def node_amqp(
    broker_node: private_broker.PrivateBroker,
) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    """A reading connection to the node (it never publishes, so no alarm blocks it)."""
    connection = await aio_pika.connect_robust(broker_node.url)
    yield connection
    await connection.close()
