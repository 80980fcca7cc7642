"""A worker cut off from the broker vouches for what it held, and the worker that gets
those deliveries back does not treat them as suspects (``redelivery.py``, ``vouching.py``).

On the shared broker, only worker A's own connection is closed (found by its name), and
A's reconnects are pointed at a closed port until the broker has handed what A held to B
(as when A's node died): then A reconnects, its attempts end, and it tells.
Without a voucher each would be a suspect: republished and run alone, one at a time, a
second time. With A's voucher, B acknowledges the ones A settled without running them."""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest
from yarl import URL

from asyncinvoke import Client, pipeline
from tests.conftest import Namespace, wait_for
from tests.support import handlers
from tests.support.connections import close_connections_named, named_worker

HELD = 8
FUNCTIONS = f"""
    [functions.vouched]
    handler = "tests.support.handlers:sleep"
    concurrency = {HELD}
"""


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def events(out: str, event: str) -> list[str]:
    """The log lines of ``event`` (console or JSON format alike)."""
    return [line for line in out.splitlines() if re.search(rf"\b{event}\b", line)]


@pytest.mark.timeout(120)
async def test_deliveries_held_by_a_worker_cut_off_are_no_suspects_for_the_next_one(
    namespace: Namespace,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The mechanism, not the default wait, is under test: a loaded machine may be slow.
    monkeypatch.setattr(pipeline, "VOUCH_WAIT_S", 30.0)
    functions_file = namespace.functions(FUNCTIONS)
    handlers.CALLS["vouched"].clear()
    captured: list[str] = []

    def output() -> str:
        captured.append(capsys.readouterr().out)  # readouterr empties the buffer
        return "".join(captured)

    async with named_worker(namespace, functions_file, "a") as a:
        async with Client(settings=namespace.settings) as client:
            ids = await client.invoke_many([("vouched", {"seconds": 5.0})] * HELD)
        await wait_for(lambda: len(a.in_flight) == HELD, 30, "A holding every invocation")
        async with named_worker(namespace, functions_file, "b") as b:
            connection: Any = a.broker.connection
            real_url, connection.url = connection.url, URL(f"amqp://127.0.0.1:{closed_port()}/")
            assert await close_connections_named(a.broker.name, "asyncinvoke test: cut off") == 1
            await wait_for(lambda: len(b.in_flight) == HELD, 30, "B holding A's deliveries")
            assert a.in_flight, "A's attempts still run, cut off"
            connection.url = real_url
            # B gets them back, waits for A's voucher, and acknowledges them unrun.
            try:
                await wait_for(
                    lambda: len(events(output(), "redelivery_settled_elsewhere")) >= HELD,
                    30, "B acknowledging what A settled",
                )
            except pytest.fail.Exception:
                pytest.fail("B did not acknowledge what A settled; the log:\n" + output())
            await wait_for(lambda: not b.in_flight and not a.in_flight, 30, "nothing in flight")
    out = output()
    ran = [invocation for invocation, _, _ in handlers.CALLS["vouched"]]
    assert sorted(ran) == sorted(ids), "each ran exactly once, at A"
    assert not events(out, "suspect"), "no delivery of A's was a suspect"
    assert len(events(out, "redelivery_settled_elsewhere")) == HELD
    assert events(out, "vouchers_received")
