"""The functions page's "Unacked" column is the broker's own count, from the management
API, over every consumer: here a gateway with no worker in its process shows what a
worker in another process holds, and the figure falls back to zero when that worker dies.

The shared broker has no management plugin (and plugins are not enabled on it for a
test), so this runs on a private node with the plugin on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from asyncinvoke.client import Client
from asyncinvoke.worker import prefetch_for
from tests.conftest import ROOT
from tests.console.support import Served, wait_until
from tests.support import private_broker

CONCURRENCY = 2
HELD = prefetch_for(CONCURRENCY)  # what the worker holds: running, and waiting to run
INVOKED = HELD + 2
SLOW = f"""
[defaults]
max_retries = 0
timeout = 120

[functions.slow]
handler = "tests.support.handlers:sleep"
concurrency = {CONCURRENCY}
"""


@pytest.fixture(scope="module")
def node_starting() -> Iterator[Future[private_broker.PrivateBroker]]:
    """The node, started while the browser starts (each takes seconds)."""
    with ThreadPoolExecutor(1) as pool:
        starting = pool.submit(private_broker.start, management=True)
        try:
            yield starting
        finally:
            with contextlib.suppress(private_broker.BrokerNotAvailable):
                starting.result().discard()


def _started(starting: Future[private_broker.PrivateBroker]) -> private_broker.PrivateBroker:
    try:
        return starting.result()
    except private_broker.BrokerNotAvailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"this test needs a private RabbitMQ node: {exc}")
        pytest.skip(f"no private RabbitMQ node: {exc}")


def _cell(driver: Any, key: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, f'[data-live="{key}"]').text)


def test_unacked_is_the_brokers_count_over_workers_in_other_processes(
    node_starting: Future[private_broker.PrivateBroker],
    driver: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    node = _started(node_starting)
    gateway = Served(
        tmp_path_factory.mktemp("unacked"), command="gateway", amqp_url=node.url,
        functions_toml=SLOW, ASYNCINVOKE_MANAGEMENT_URL=node.management_url,
    ).launch()
    worker: subprocess.Popen[bytes] | None = None
    try:
        with (gateway.log.parent / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "asyncinvoke", "worker", "--config", str(gateway.config)],
                env=gateway.env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT,
            )
        gateway.wait_ready()

        async def invoke() -> None:
            async with Client(settings=gateway.settings) as client:
                await client.invoke_many([("slow", {"seconds": 120})] * INVOKED)

        asyncio.run(invoke())
        driver.get(gateway.url + "/console/functions")
        source = driver.find_element(By.ID, "unacked-source").text
        assert f"management API at http://127.0.0.1:{node.management_port}" in source
        assert "guest" not in source  # the API's credentials are not shown
        # The live refresh brings the broker's figures, whatever the page showed first.
        wait_until(
            lambda: (_cell(driver, "slow.unacked"), _cell(driver, "slow.ready"))
            == (str(HELD), str(INVOKED - HELD)),
            30, f"{HELD} unacked and {INVOKED - HELD} ready shown",
            lambda: f"shown: {_cell(driver, 'slow.unacked')} unacked\n{gateway.tail()}",
        )
        assert _cell(driver, "slow.consumers") == "1"

        worker.kill()  # its deliveries go back to the queue: none is unacknowledged now
        worker.wait(15)
        wait_until(
            lambda: (_cell(driver, "slow.unacked"), _cell(driver, "slow.ready"))
            == ("0", str(INVOKED)),
            30, f"0 unacked and {INVOKED} ready shown after the worker died",
            lambda: f"shown: {_cell(driver, 'slow.unacked')} unacked\n{gateway.tail()}",
        )
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(15)
        gateway.stop()
