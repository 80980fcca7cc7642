"""The cluster suite: tests against a real 3-node RabbitMQ cluster (rabbitmq/cluster.sh).

The cluster is started once for the suite and removed at the end; each test gets its
own namespace on it, and leaves every node running again. Without rabbitmq-server (or
root) the tests skip, and under CI=true they fail instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from asyncinvoke import failover
from asyncinvoke.nodes import NodeRing, parse_nodes
from tests.support import cluster as local_cluster
from tests.support.suite_broker import NamespaceOn, for_the_suite


def _stop(running: local_cluster.Cluster) -> None:
    if not local_cluster.keep():
        running.stop()


@pytest.fixture(scope="session")
def cluster() -> Iterator[local_cluster.Cluster]:
    yield from for_the_suite(
        local_cluster.start,
        local_cluster.ClusterNotAvailable,
        _stop,
        suite="cluster",
        needs="the local 3-node cluster",
    )


class ClusterNamespace(NamespaceOn):
    """A namespace on the cluster: clients, workers and subprocesses get the URL list."""

    def __init__(self, tmp_path: Path, cluster: local_cluster.Cluster):
        super().__init__(tmp_path, cluster.urls)
        self.cluster = cluster

    async def cleanup(self) -> None:
        """Every node is up again for the next test, and the namespace is deleted (its
        queues would otherwise weigh on where the next test's leaders are placed)."""
        for n in sorted(self.cluster.down):
            await asyncio.to_thread(self.cluster.restart, n)
        await super().cleanup(self.url.split(",")[0])


@pytest.fixture
async def cluster_namespace(
    tmp_path: Path, cluster: local_cluster.Cluster
) -> AsyncIterator[ClusterNamespace]:
    space = ClusterNamespace(tmp_path, cluster)
    yield space
    await space.cleanup()


@pytest.fixture
async def cluster_amqp(
    cluster_namespace: ClusterNamespace,
) -> AsyncIterator[failover.FailoverConnection]:
    """A reading connection that fails over like the service's own (it starts on node 1)."""
    ring = NodeRing(parse_nodes(cluster_namespace.cluster.urls), start=0)
    connection = await failover.connect(ring, name="test-reader", reconnect_interval_s=0.5)
    yield connection
    await connection.close()
