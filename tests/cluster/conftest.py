"""The cluster suite: tests against a real 3-node RabbitMQ cluster (rabbitmq/cluster.sh).

The cluster is started once for the suite and removed at the end; each test gets its
own namespace on it, and leaves every node running again. Without rabbitmq-server (or
root) the tests skip, and under CI=true they fail instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from asyncinvoke import failover
from asyncinvoke.nodes import NodeRing, parse_nodes
from tests.conftest import Namespace
from tests.support import cluster as local_cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[local_cluster.Cluster]:
    try:
        running = local_cluster.start()
    except local_cluster.ClusterNotAvailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the cluster suite needs the local 3-node cluster: {exc}")
        pytest.skip(f"no local 3-node cluster: {exc}")
    try:
        yield running
    finally:
        if not local_cluster.keep():
            running.stop()


class ClusterNamespace(Namespace):
    """A namespace on the cluster: clients, workers and subprocesses get the URL list."""

    def __init__(self, tmp_path: Path, cluster: local_cluster.Cluster):
        super().__init__(tmp_path)
        self.cluster = cluster
        self.settings = self.settings.with_overrides(amqp_url=cluster.urls)

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{"ASYNCINVOKE_AMQP_URL": self.cluster.urls, **extra})

    async def cleanup(self) -> None:
        """Every node is up again for the next test; the namespace goes with the cluster."""
        for n in sorted(self.cluster.down):
            await asyncio.to_thread(self.cluster.restart, n)


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
