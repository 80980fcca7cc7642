"""Hearing RabbitMQ's resource alarms: aiormq's ``connection.blocked`` / ``unblocked``.

aio-pika does not expose either frame. aiormq logs both (with the broker's reason) and
keeps no callback for them, so its log records are the one place they surface; the
brokers listening are told which connection was blocked or unblocked.
"""

from __future__ import annotations

import logging
import weakref
from typing import Protocol


class Listener(Protocol):
    def _on_blocked(self, connection: object, reason: str) -> None: ...

    def _on_unblocked(self, connection: object) -> None: ...


class BlockedWatch(logging.Filter):
    """Hears aiormq's ``connection.blocked`` / ``unblocked``, which aio-pika does not expose.

    aiormq logs both frames (with the broker's reason) and keeps no callback for them,
    so its log records are the one place they surface. A logger drops a record below its
    level before any filter sees it, and quiet commands (the dlq tool) or an operator's
    logging setup may raise aiormq's level: so ``hear_alarms`` keeps aiormq.connection
    at WARNING, and this filter lets its other records through only at the level the
    ``aiormq`` logger above it asks for. The two frames' records are taken here and not
    passed on: the broker logs its own ``broker_blocked`` / ``broker_unblocked`` lines.
    """

    brokers: weakref.WeakSet[Listener] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Connection %r was") and isinstance(record.args, tuple):
            connection = record.args[0]
            if "blocked by" in message and len(record.args) > 1:
                for broker in list(self.brokers):
                    broker._on_blocked(connection, str(record.args[1]))
                return False
            if message.endswith("was unblocked"):
                for broker in list(self.brokers):
                    broker._on_unblocked(connection)
                return False
        return record.levelno >= _AIORMQ_LOG.getEffectiveLevel()


_WATCH = BlockedWatch()
_AIORMQ_LOG = logging.getLogger("aiormq")
_AIORMQ_CONNECTION_LOG = logging.getLogger("aiormq.connection")
_AIORMQ_CONNECTION_LOG.addFilter(_WATCH)


def hear_alarms() -> None:
    """Make sure aiormq.connection's WARNING records (the alarm frames) are made at all."""
    _AIORMQ_CONNECTION_LOG.disabled = False  # dictConfig disables loggers it was not told of
    if not _AIORMQ_CONNECTION_LOG.isEnabledFor(logging.WARNING):
        _AIORMQ_CONNECTION_LOG.setLevel(logging.WARNING)


def listen(broker: Listener) -> None:
    """Tell ``broker`` of the alarm frames (it checks whether the connection is its own)."""
    BlockedWatch.brokers.add(broker)


def forget(broker: Listener) -> None:
    BlockedWatch.brokers.discard(broker)
