"""The workers' vouchers for each other's redeliveries, on the control exchange.

``redelivery.Redeliveries`` keeps what this worker handled when its connection dropped,
and what other workers vouched for; this module is its I/O. Once its connection is back,
a worker broadcasts what it remembers on the namespace's control exchange (``{"vouch":
[[message id, body digest, settled], ...], "from": sender}``), and every worker takes
the others' broadcasts (the worker's control dispatcher hands them to ``take``). A lost
broadcast only leaves a redelivery a suspect, which is safe.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from asyncinvoke import contract
from asyncinvoke.broker import Broker
from asyncinvoke.observability import get_logger
from asyncinvoke.redelivery import Redeliveries

log = get_logger(component="worker")

TELL_RETRY_S = 1.0


class Vouching:
    """The broadcasts of ``Redeliveries``: this worker's vouchers out, other workers' in,
    on the namespace's control exchange (``{"vouch": [...], "from": sender}``)."""

    def __init__(self, redeliveries: Redeliveries, broker: Broker, exchange: str):
        self.redeliveries = redeliveries
        self.broker = broker
        self.exchange = exchange
        self.sender = uuid.uuid4().hex  # its own broadcasts come back to it: skipped

    async def tell_forever(self) -> None:
        """Broadcast what this worker remembers as it is remembered, once connected."""
        redeliveries = self.redeliveries
        while True:
            await redeliveries.untold.wait()
            if not await self.broker.wait_connected(TELL_RETRY_S):
                continue
            vouchers = redeliveries.to_tell()
            try:
                await self.broker.publish(
                    self.exchange, "", contract.pack({"vouch": vouchers, "from": self.sender}),
                    mandatory=False,
                )
            except Exception as exc:  # the connection went again: told once it is back
                redeliveries.retell(vouchers)
                log.info("vouch_not_sent", count=len(vouchers), error=str(exc))
                await asyncio.sleep(TELL_RETRY_S)
            else:
                log.info("vouched", count=len(vouchers))

    def take(self, command: dict[str, Any]) -> None:
        """A ``vouch`` broadcast read off the control exchange (the worker's dispatcher);
        only other workers' are taken."""
        if command.get("from") == self.sender:
            return
        taken = self.redeliveries.vouch(command["vouch"])
        log.info("vouchers_received", count=taken)
