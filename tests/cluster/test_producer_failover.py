"""A producer across a node's death: a Client invoking in a loop, and the HTTP gateway.

The Client and the gateway are both connected to the node that is killed (-9). Every
``invoke`` that returned an id runs; every ``invoke`` that raised says the publish was
not confirmed (nothing is lost silently). The gateway fails over with its client and
does not answer 503: another node is reachable all along.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from asyncinvoke import AsyncInvokeError, BrokerUnavailable, Client, PublishError, functions
from asyncinvoke.gateway.app import Gateway
from tests.cluster.conftest import ClusterNamespace
from tests.cluster.helpers import free_port, tail, warnings_seen
from tests.conftest import WorkerProcess, declare_queue, write_functions
from tests.support.cluster import amqp_port
from tests.support.traffic import Seen, consume, wait_until

pytestmark = pytest.mark.timeout(240)

TOTAL = 3000
KILL_AT = 600
PUBLISH_TIMEOUT_S = 5.0


def node_of(url: str) -> int:
    return next(n for n in (1, 2, 3) if f":{amqp_port(n)}/" in url)


async def gateway_on(space: ClusterNamespace, file: functions.FunctionsFile,
                     node: int) -> Gateway:
    """A gateway whose client landed on ``node`` (each picks its first node at random)."""
    for _ in range(12):
        gateway = Gateway(space.settings, file, {})
        await gateway.start("127.0.0.1", free_port())
        if node_of(gateway.client.broker.node) == node:
            return gateway
        await gateway.stop()
    pytest.fail(f"12 gateways in a row did not start on node {node}")


async def _post_loop(url: str, stop: asyncio.Event, answers: list[tuple[float, int, str]]) -> None:
    async with aiohttp.ClientSession() as http:
        n = 0
        while not stop.is_set():
            n += 1
            async with http.post(
                f"{url}/2023-03-30/functions/ok/invocations",
                data=f'{{"via": "gateway", "n": {n}}}',
                headers={"x-fc-invocation-type": "Async"},
            ) as response:
                answers.append(
                    (time.monotonic(), response.status, response.headers.get("x-fc-request-id", ""))
                )


async def test_a_client_and_the_gateway_lose_nothing_when_their_node_dies(
    cluster_namespace: ClusterNamespace, cluster_amqp: Any
) -> None:
    space = cluster_namespace
    cluster = space.cluster
    results = space.queue_name("results")
    config = write_functions(
        space.tmp_path,
        f"""
        [functions.ok]
        handler = "tests.support.handlers:echo"
        concurrency = 64
        on_success = "queue:{results}"
        """,
    )
    file = space.functions(config.read_text())
    await declare_queue(cluster_amqp, results)
    worker = await WorkerProcess(space, config).start()
    seen = Seen()
    await consume(cluster_amqp, results, seen, failed=False)
    settings = space.settings.with_overrides(publish_timeout_s=PUBLISH_TIMEOUT_S)
    returned: list[str] = []
    raised: list[AsyncInvokeError] = []
    answers: list[tuple[float, int, str]] = []
    stop_posting = asyncio.Event()
    gateway: Gateway | None = None
    try:
        async with Client(settings=settings) as client:
            victim = node_of(client.broker.node)
            gateway = await gateway_on(space, file, victim)
            posting = asyncio.create_task(_post_loop(gateway.url, stop_posting, answers))
            killed_at = 0.0
            loop_began = time.monotonic()
            for n in range(TOTAL):
                if n == KILL_AT:
                    killed_at = time.monotonic()
                    await asyncio.to_thread(cluster.kill, victim)
                try:
                    returned.append(await client.invoke("ok", {"n": n}))
                except AsyncInvokeError as exc:
                    raised.append(exc)
            loop_s = time.monotonic() - loop_began
            client_node = node_of(client.broker.node)
            gateway_node = node_of(gateway.client.broker.node)
            stop_posting.set()
            await posting
        after_kill = [(at - killed_at, status) for at, status, _ in answers if at >= killed_at]
        gateway_ids = [i for _, status, i in answers if status == 202]
        refused = [(round(at, 2), status) for at, status in after_kill if status != 202]
        expected = set(returned) | set(gateway_ids)
        await wait_until(lambda: expected <= set(seen.successes), 90,
                         "every accepted invocation to run", lambda: tail([worker]))
        await asyncio.sleep(1)  # invocations that raised but reached the broker, if any
        ran_anyway = len(seen.successes) - len(expected)
        unclear = [exc for exc in raised
                   if not isinstance(exc, PublishError | BrokerUnavailable)
                   or "not confirmed" not in str(exc)]
        slowest = max((at for at, _ in after_kill[:200]), default=0.0)
        print(
            f"\nproducer failover: client {len(returned)} returned, {len(raised)} raised "
            f"(of {TOTAL}, in {loop_s:.1f} s), lost {len(expected - set(seen.successes))}, "
            f"of the raised {ran_anyway} ran anyway, success duplicates "
            f"{sum(n - 1 for n in seen.successes.values())}; client moved from node "
            f"{victim} to {client_node}; gateway {len(answers)} requests "
            f"({len(after_kill)} after the kill), non-202 answers {refused[:5]}, moved to "
            f"node {gateway_node}; first 200 requests after the kill within {slowest:.1f} s"
        )
        print(f"raised: {[str(exc) for exc in raised[:3]]}; worker's warnings: "
              f"{warnings_seen([worker])}")
        assert client_node != victim and gateway_node != victim
        assert not unclear, [str(exc) for exc in unclear[:3]]
        assert not refused, f"the gateway refused while other nodes were up: {refused[:5]}"
        assert len(after_kill) > 0
    finally:
        stop_posting.set()
        if gateway is not None:
            await gateway.stop()
        await worker.kill()
