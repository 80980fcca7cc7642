"""asyncinvoke: asynchronous function invocation on RabbitMQ.

The names below are imported on first use: a handler process (``executor =
"process"``) that imports ``Context`` or ``NonRetryableError`` from here starts without
loading the client and its AMQP and HTTP libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncinvoke.client import Client, InvokeManyError, UnknownFunctionError
    from asyncinvoke.context import Context
    from asyncinvoke.errors import (
        AsyncInvokeError,
        BrokerBlocked,
        BrokerUnavailable,
        ConfigError,
        InvalidMessage,
        NonRetryableError,
        PayloadTooLarge,
        PublishError,
        PublishTimeout,
        UnroutableError,
    )

__version__ = "0.1.0"

_HOMES = {
    "Client": "asyncinvoke.client",
    "InvokeManyError": "asyncinvoke.client",
    "UnknownFunctionError": "asyncinvoke.client",
    "Context": "asyncinvoke.context",
    **{
        name: "asyncinvoke.errors"
        for name in (
            "AsyncInvokeError",
            "BrokerBlocked",
            "BrokerUnavailable",
            "ConfigError",
            "InvalidMessage",
            "NonRetryableError",
            "PayloadTooLarge",
            "PublishError",
            "PublishTimeout",
            "UnroutableError",
        )
    },
}

__all__ = [
    "AsyncInvokeError",
    "BrokerBlocked",
    "BrokerUnavailable",
    "Client",
    "ConfigError",
    "Context",
    "InvalidMessage",
    "InvokeManyError",
    "NonRetryableError",
    "PayloadTooLarge",
    "PublishError",
    "PublishTimeout",
    "UnknownFunctionError",
    "UnroutableError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'asyncinvoke' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
