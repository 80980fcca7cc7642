"""asyncinvoke: asynchronous function invocation on RabbitMQ."""

from asyncinvoke.client import Client
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
    PublishTimeout,
    TaskExists,
    TaskExistsError,
    TaskFinished,
    TaskNotFound,
    TaskStoreUnavailable,
    UnknownFunctionError,
    UnroutableError,
)
from asyncinvoke.runners import Context

__version__ = "0.1.0"

__all__ = [
    "AsyncInvokeError",
    "BrokerBlocked",
    "BrokerUnavailable",
    "CallTimeout",
    "Client",
    "ConfigError",
    "Context",
    "FunctionError",
    "InvalidMessage",
    "InvokeManyError",
    "NonRetryableError",
    "PayloadTooLarge",
    "PublishError",
    "PublishTimeout",
    "TaskExists",
    "TaskExistsError",
    "TaskFinished",
    "TaskNotFound",
    "TaskStoreUnavailable",
    "UnknownFunctionError",
    "UnroutableError",
    "__version__",
]
