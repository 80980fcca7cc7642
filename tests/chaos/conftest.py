"""The chaos suite: tests that disrupt a broker run on a RabbitMQ node of their own.

The node is started once for the suite (about 10 s) and thrown away at the end; each
test still gets its own namespace on it. Without rabbitmq-server the tests skip, and
under CI=true they fail instead: a chaos suite that silently did not run proves nothing.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest

from tests.conftest import Namespace
from tests.support import private_broker


@pytest.fixture(scope="session")
def broker_node() -> Iterator[private_broker.PrivateBroker]:
    try:
        node = private_broker.start()
    except private_broker.BrokerNotAvailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the chaos suite needs a private RabbitMQ node: {exc}")
        pytest.skip(f"no private RabbitMQ node: {exc}")
    try:
        yield node
    finally:
        node.stop()


class NodeNamespace(Namespace):
    """A namespace on the private node: clients, workers and subprocesses point at it."""

    def __init__(self, tmp_path: Path, node: private_broker.PrivateBroker):
        super().__init__(tmp_path)
        self.node = node
        self.settings = self.settings.with_overrides(amqp_url=node.url)

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{"ASYNCINVOKE_AMQP_URL": self.node.url, **extra})

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
