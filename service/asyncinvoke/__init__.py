"""asyncinvoke: asynchronous function invocation on RabbitMQ."""

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
    PublishTimeout,
    UnroutableError,
)
from asyncinvoke.runners import Context

__version__ = "0.1.0"

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
