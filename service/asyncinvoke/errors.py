"""Every error asyncinvoke raises on purpose.

    AsyncInvokeError
    ├── ConfigError            the functions file or a setting is wrong (names file, function, key)
    ├── InvalidMessage         an envelope cannot be decoded or breaks the contract
    │   └── PayloadTooLarge    over the size limit
    ├── PublishError           the broker refused, returned or did not confirm a publish
    │   ├── UnroutableError    no queue is bound for the routing key
    │   └── PublishTimeout     no confirm in time (the broker may have the message)
    │       ├── BrokerBlocked  a resource alarm (memory, disk) blocks publishing
    │       └── PublishInterrupted  the connection was lost before the confirm came
    ├── BrokerUnavailable      no connection to the broker could be made
    ├── TaskStoreUnavailable   the task store cannot be reached or cannot write now (transient)
    └── NonRetryableError      raised by a handler: fail now, do not retry

Each error carries the thing it is about, so a message can name it.
"""

from __future__ import annotations

from typing import Any


class AsyncInvokeError(Exception):
    """Base of every error raised by asyncinvoke."""


class ConfigError(AsyncInvokeError):
    """The functions file or a setting is wrong."""

    def __init__(self, message: str, *, path: str = "", function: str = "", key: str = ""):
        where = ": ".join(
            part
            for part in (
                path,
                f"function {function!r}" if function else "",
                f"key {key!r}" if key else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.function = function
        self.key = key


class InvalidMessage(AsyncInvokeError):
    """An envelope that cannot be decoded or breaks the AMQP contract.

    ``partial`` holds what could be decoded (a dict) so the failure record keeps
    as much of the original as possible; ``reason`` says what is wrong.
    """

    def __init__(self, reason: str, *, partial: dict[str, Any] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.partial = partial


class PayloadTooLarge(InvalidMessage):
    """An invocation over ASYNCINVOKE_MAX_PAYLOAD_BYTES."""


class PublishError(AsyncInvokeError):
    """The broker did not confirm a publish."""

    def __init__(self, message: str, *, exchange: str = "", routing_key: str = ""):
        super().__init__(message)
        self.exchange = exchange
        self.routing_key = routing_key


class UnroutableError(PublishError):
    """The broker returned a mandatory publish: nothing is bound for it."""


class PublishTimeout(PublishError):
    """No confirm came in time: the broker may or may not have the message (transient)."""


class BrokerBlocked(PublishTimeout):
    """RabbitMQ blocks publishing while a resource alarm (memory or disk) lasts.

    ``reason`` is the broker's own words ("low on memory"); ``published`` says whether
    the message had gone out before the alarm was known (then the broker may still take
    it when the alarm clears) or was held back (then it was not published at all).
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        published: bool,
        exchange: str = "",
        routing_key: str = "",
    ):
        super().__init__(message, exchange=exchange, routing_key=routing_key)
        self.reason = reason
        self.published = published


class PublishInterrupted(PublishTimeout):
    """The connection (or channel) to the node was lost while a publish awaited its
    confirm, or before it could go out: as after a timeout, the broker may or may not
    have the message (transient; a failover to another node follows). ``node`` is the
    node's URL, its password hidden."""

    def __init__(self, message: str, *, node: str, exchange: str = "", routing_key: str = ""):
        super().__init__(message, exchange=exchange, routing_key=routing_key)
        self.node = node


class BrokerUnavailable(AsyncInvokeError):
    """No connection to the broker could be made."""


class TaskStoreUnavailable(AsyncInvokeError):
    """The task store is down, unreachable or locked: worth trying again, not the fault
    of the invocation at hand. ``store`` names the store (never with its password)."""

    def __init__(self, store: str, reason: str):
        super().__init__(f"task store {store} is unavailable: {reason}")
        self.store = store
        self.reason = reason


class NonRetryableError(AsyncInvokeError):
    """Raise from a handler to end the invocation now, without retries."""
