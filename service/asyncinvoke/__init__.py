"""asyncinvoke: asynchronous function invocation on RabbitMQ.

The names below are imported on first use: a handler process (``executor =
"process"``) that imports ``Context`` or ``NonRetryableError`` from here starts without
loading the client and its AMQP and HTTP libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncinvoke.app import App, Function
    from asyncinvoke.client import Client
    from asyncinvoke.context import Context
    from asyncinvoke.errors import (
        AsyncInvokeError,
        BrokerBlocked,
        BrokerUnavailable,
        CallTimeout,
        ConfigError,
        FunctionError,
        InvalidMessage,
        InvokeManyError,
        NonRetryableError,
        PayloadTooLarge,
        PublishError,
        PublishInterrupted,
        PublishTimeout,
        SyncClientClosed,
        TaskExists,
        TaskExistsError,
        TaskFinished,
        TaskNotEnded,
        TaskNotFound,
        TaskNotRerunnable,
        TaskStoreUnavailable,
        Throttled,
        UnknownFunctionError,
        UnroutableError,
    )
    from asyncinvoke.sync_client import SyncClient

__version__ = "0.1.0"

_HOMES = {
    "App": "asyncinvoke.app",
    "Function": "asyncinvoke.app",
    "Client": "asyncinvoke.client",
    "SyncClient": "asyncinvoke.sync_client",
    "Context": "asyncinvoke.context",
    **{
        name: "asyncinvoke.errors"
        for name in (
            "AsyncInvokeError",
            "BrokerBlocked",
            "BrokerUnavailable",
            "CallTimeout",
            "ConfigError",
            "FunctionError",
            "InvalidMessage",
            "InvokeManyError",
            "NonRetryableError",
            "PayloadTooLarge",
            "PublishError",
            "PublishInterrupted",
            "PublishTimeout",
            "SyncClientClosed",
            "TaskExists",
            "TaskExistsError",
            "TaskFinished",
            "TaskNotEnded",
            "TaskNotFound",
            "TaskNotRerunnable",
            "TaskStoreUnavailable",
            "Throttled",
            "UnknownFunctionError",
            "UnroutableError",
        )
    },
}

__all__ = [
    "App",
    "AsyncInvokeError",
    "BrokerBlocked",
    "BrokerUnavailable",
    "CallTimeout",
    "Client",
    "ConfigError",
    "Context",
    "Function",
    "FunctionError",
    "InvalidMessage",
    "InvokeManyError",
    "NonRetryableError",
    "PayloadTooLarge",
    "PublishError",
    "PublishInterrupted",
    "PublishTimeout",
    "SyncClient",
    "SyncClientClosed",
    "TaskExists",
    "TaskExistsError",
    "TaskFinished",
    "TaskNotEnded",
    "TaskNotFound",
    "TaskNotRerunnable",
    "TaskStoreUnavailable",
    "Throttled",
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
