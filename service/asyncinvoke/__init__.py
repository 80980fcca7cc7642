"""asyncinvoke: asynchronous function invocation on RabbitMQ."""

from asyncinvoke.app import App, Function
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
    PublishInterrupted,
    PublishTimeout,
    SyncClientClosed,
    TaskExists,
    TaskExistsError,
    TaskFinished,
    TaskNotFound,
    TaskStoreUnavailable,
    UnknownFunctionError,
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
    "TaskNotFound",
    "TaskStoreUnavailable",
    "UnknownFunctionError",
    "UnroutableError",
    "__version__",
]
