"""asyncinvoke: asynchronous function invocation on RabbitMQ."""

from asyncinvoke.app import App, Function
from asyncinvoke.client import Client, InvokeManyError, UnknownFunctionError
from asyncinvoke.errors import (
    AsyncInvokeError,
    BrokerBlocked,
    BrokerUnavailable,
    ConfigError,
    InvalidMessage,
    NonRetryableError,
    PayloadTooLarge,
    PublishError,
    PublishInterrupted,
    PublishTimeout,
    SyncClientClosed,
    UnroutableError,
)
from asyncinvoke.runners import Context
from asyncinvoke.sync_client import SyncClient

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncInvokeError",
    "BrokerBlocked",
    "BrokerUnavailable",
    "Client",
    "ConfigError",
    "Context",
    "Function",
    "InvalidMessage",
    "InvokeManyError",
    "NonRetryableError",
    "PayloadTooLarge",
    "PublishError",
    "PublishInterrupted",
    "PublishTimeout",
    "SyncClient",
    "SyncClientClosed",
    "UnknownFunctionError",
    "UnroutableError",
    "__version__",
]
