"""Every error asyncinvoke raises on purpose, in one tree.

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
    ├── PlacementUnknown       rabbitmqctl could not tell the queues' leaders and members
    ├── UnknownFunctionError   the function has no queue in the namespace (Client)
    │   └── FunctionNotConfigured  not in the functions file: no live configuration for it
    ├── FunctionError          a synchronous call's function failed (Client.call)
    ├── CallTimeout            no reply to a synchronous call in time (Client.call)
    ├── InvokeManyError        some publishes of an invoke_many were not confirmed
    ├── TaskExists             the task id is taken (also named TaskExistsError)
    ├── TaskNotFound           no task with that id
    ├── TaskFinished           the task already ended (a stop came too late)
    ├── TaskNotRerunnable      a task cannot be run again (no payload kept)
    │   └── TaskNotEnded       a re-run of a task that has not ended
    ├── SyncClientClosed       a SyncClient was used after close()
    ├── TaskStoreUnavailable   the task store cannot be reached or cannot write now (transient)
    ├── StoreUnavailable       the configuration stream cannot be read or a change confirmed
    ├── InvalidDocument        a configuration document, its kind or name is not storable
    ├── InvalidConfig          a live configuration value is out of range or form (names the field)
    ├── FunctionPaused         the function was paused (reservedConcurrency 0) before an attempt
    ├── HttpDeliveryError      an HTTP destination refused a record or could not be reached
    ├── NonRetryableError      raised by a handler: fail now, do not retry
    ├── Throttled              raised by a handler: busy now, try later (spends no retry)
    ├── HandlerProcessDied     a handler's own process (executor = "process") ended mid-attempt
    ├── NotStarted             an attempt queued behind one whose process ended; it never ran
    ├── QueueBusy              the console: another browse holds the failure queue now
    ├── TriggerError           a trigger (timer or RabbitMQ source)
    │   ├── InvalidTrigger     a definition is wrong (names the field)
    │   ├── TriggerNotFound    no trigger of that name on the function
    │   ├── TriggerExists      the function has a trigger of that name already
    │   └── SourceGone         a RabbitMQ trigger's source queue or broker went away
    ├── ManagementUnavailable  the console: RabbitMQ's management API gave no counts
    ├── DlqError               the dead-letter tool (``asyncinvoke dlq``)
    │   ├── QueueMissing       {ns}.failed does not exist
    │   ├── EmptyQueue         {ns}.failed holds no record
    │   ├── NothingSelected    no record matches the selection
    │   │   └── RecordNotFound no record with that id
    │   ├── Busy               another dlq command is reading the queue
    │   ├── BrowseInterrupted  the broker closed the channel or connection mid-way
    │   ├── BadReplayFile      a --from-file line is not an exported record
    │   ├── NotReplayable      a record's original invocation cannot be sent again
    │   ├── RecordsSkipped     some selected records cannot be replayed; they stay
    │   └── ReplayIncomplete   some replays were not confirmed; their records stay
    └── FcError                an HTTP error answer of the gateway (in gateway/fcapi.py,
                               where its 4xx/5xx subclasses are drawn)

Each error carries the thing it is about, so a message can name it. This module imports
nothing else of asyncinvoke, so every module can import it: what an error carries from
other modules is typed by the small protocols below.
"""

from __future__ import annotations

from collections.abc import Sized
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # an annotation only: contract imports this module
    from asyncinvoke.contract import ErrorInfo


class _Selection(Protocol):
    def describe(self) -> str: ...


class _EndedTask(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def status(self) -> Enum: ...


class _ReplayCounts(Protocol):
    @property
    def source(self) -> str: ...

    @property
    def selected(self) -> int: ...

    @property
    def replayed(self) -> int: ...

    @property
    def skipped(self) -> Sized: ...


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
    """The connection (or channel) to the node was lost after the message may have gone
    out and before the broker confirmed it: the broker may or may not have it (transient;
    the client fails over to the next node). ``node``: the node's URL, password hidden."""

    def __init__(
        self, message: str, *, node: str = "", exchange: str = "", routing_key: str = ""
    ):
        super().__init__(message, exchange=exchange, routing_key=routing_key)
        self.node = node


class BrokerUnavailable(AsyncInvokeError):
    """No connection to the broker could be made."""


class PlacementUnknown(AsyncInvokeError):
    """The broker could not be asked where its queues live (``topology show
    --rabbitmq-node``): no rabbitmqctl here, or the node did not answer."""


class UnknownFunctionError(AsyncInvokeError):
    def __init__(self, function: str, namespace: str):
        super().__init__(
            f"function {function!r} has no queue in namespace {namespace!r}: start a worker "
            f"whose functions file has it, or run 'asyncinvoke topology declare'"
        )
        self.function = function


class FunctionNotConfigured(UnknownFunctionError):
    """Live configuration for a function that is not in the functions file."""

    def __init__(self, function: str, path: str):
        AsyncInvokeError.__init__(
            self,
            f"function {function!r} does not exist: it is not in the functions file {path}; "
            "a configuration can only be set for a known function",
        )
        self.function = function


class FunctionError(AsyncInvokeError):
    """A synchronous call's function failed: ``info`` says how; ``error`` is the same as
    its errorType/errorMessage/stackTrace map."""

    def __init__(self, function: str, info: ErrorInfo, function_error: str, status: int):
        super().__init__(f"{function}: {info.summary()}")
        self.function = function
        self.info = info
        self.error = info.to_wire()
        self.function_error = function_error
        self.status_code = status


class CallTimeout(AsyncInvokeError):
    def __init__(self, function: str, invocation_id: str, timeout: float):
        super().__init__(
            f"{function}: no reply for invocation {invocation_id} within {timeout:g} s "
            "(is a worker serving it?)"
        )
        self.function = function
        self.invocation_id = invocation_id


class InvokeManyError(AsyncInvokeError):
    """Some publishes of an invoke_many failed; ``accepted`` were confirmed."""

    def __init__(self, accepted: list[str], failed: dict[str, BaseException]):
        first_id, first_error = next(iter(failed.items()))
        super().__init__(
            f"{len(failed)} of {len(accepted) + len(failed)} invocations were not accepted "
            f"(first: {first_id}: {first_error})"
        )
        self.accepted = accepted
        self.failed = failed


class TaskExists(AsyncInvokeError):
    """A task id is used once. A store raises it without ``status``; the client, which
    reads the task that holds the id, names its status and how to get a fresh id."""

    def __init__(self, task_id: str, status: str | None = None):
        if status is None:
            message = f"task {task_id!r} already exists: a task id is used once"
        else:
            message = (
                f"task {task_id!r} already exists ({status}): in task mode an id is used "
                "once; leave --id out for a generated one"
            )
        super().__init__(message)
        self.task_id = task_id
        self.status = status


TaskExistsError = TaskExists


class TaskNotFound(AsyncInvokeError):
    def __init__(self, task_id: str):
        super().__init__(f"no task {task_id!r}")
        self.task_id = task_id


class TaskFinished(AsyncInvokeError):
    def __init__(self, task: _EndedTask):
        super().__init__(f"task {task.id!r} already ended as {task.status.value}")
        self.task = task


class TaskNotRerunnable(AsyncInvokeError):
    """A re-run (``asyncinvoke task rerun``) that cannot be made; ``task`` is the task."""

    def __init__(self, task: _EndedTask, reason: str):
        super().__init__(f"task {task.id!r} cannot be run again: {reason}")
        self.task = task


class TaskNotEnded(TaskNotRerunnable):
    """Only an ended task runs again: one still waiting or running would then run twice."""

    def __init__(self, task: _EndedTask):
        super().__init__(
            task,
            f"it has not ended (it is {task.status.value}); stop it first "
            "('asyncinvoke task stop') or wait for it to end",
        )


class SyncClientClosed(AsyncInvokeError):
    """A ``SyncClient`` was called after it was closed (by ``close()``, its ``with``
    block, or the interpreter's exit)."""

    def __init__(self) -> None:
        super().__init__("this SyncClient was closed: make a new one")


class TaskStoreUnavailable(AsyncInvokeError):
    """The task store is down, unreachable or locked: worth trying again, not the fault
    of the invocation at hand. ``store`` names the store (never with its password)."""

    def __init__(self, store: str, reason: str):
        super().__init__(f"task store {store} is unavailable: {reason}")
        self.store = store
        self.reason = reason


class StoreUnavailable(AsyncInvokeError):
    """The namespace's configuration stream ({ns}.config) could not be read, or a change
    to it was not confirmed or read back in time."""

    def __init__(self, message: str, *, stream: str):
        super().__init__(message)
        self.stream = stream


class InvalidDocument(AsyncInvokeError, ValueError):
    """A document for the configuration store, or its kind or name, cannot be stored."""


class InvalidConfig(AsyncInvokeError, ValueError):
    """A live configuration value (PutAsyncInvokeConfig, PutConcurrencyConfig, the CLI)
    is out of range or form; ``field`` names it, the message gives the range or forms."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class FunctionPaused(AsyncInvokeError):
    """The worker's pipeline: the function was paused after a delivery was received and
    before its attempt started; the delivery goes back to its queue."""


class NonRetryableError(AsyncInvokeError):
    """Raise from a handler to end the invocation now, without retries."""


class Throttled(AsyncInvokeError):
    """Raise from a handler when what it needs is busy (rate-limited, overloaded): the
    attempt is retried through the delay ladder after ``retry_after`` seconds (or the
    function's backoff when None), and it does not count against ``max_retries``; the
    function's ``throttle_budget`` bounds how long throttles go on (then the record's
    condition is ``ThrottleExhausted``). An HTTP function answering 429 or 503, or one
    that cannot be connected to, is throttled the same way."""

    def __init__(self, message: str = "throttled", *, retry_after: float | None = None):
        if retry_after is not None and not (0 <= retry_after < float("inf")):
            raise ValueError(f"retry_after must be a number of seconds >= 0, got {retry_after!r}")
        super().__init__(message)
        self.retry_after = retry_after


class HttpDeliveryError(AsyncInvokeError):
    """An HTTP destination answered other than 2xx, or could not be reached."""

    def __init__(self, url: str, detail: str):
        super().__init__(f"POST {url}: {detail}")
        self.url = url


class DlqError(AsyncInvokeError):
    """Base of the dead-letter tool's errors: each one line that says what to do."""


class QueueMissing(DlqError):
    def __init__(self, queue: str):
        super().__init__(
            f"queue {queue!r} does not exist: nothing has failed in this namespace yet, or "
            "ASYNCINVOKE_NAMESPACE is wrong ('asyncinvoke topology declare' creates it)"
        )
        self.queue = queue


class EmptyQueue(DlqError):
    def __init__(self, queue: str):
        super().__init__(f"the failure queue {queue!r} is empty: no failed invocations")
        self.queue = queue


class NothingSelected(DlqError):
    def __init__(self, queue: str, selector: _Selection, scanned: int):
        super().__init__(
            f"no record in {queue!r} matches {selector.describe()} ({scanned} records read)"
        )
        self.queue = queue
        self.selector = selector


class RecordNotFound(NothingSelected):
    def __init__(self, queue: str, invocation_id: str, scanned: int):
        DlqError.__init__(
            self,
            f"no record with id {invocation_id!r} in {queue!r} ({scanned} records read); "
            "'asyncinvoke dlq list' shows the ids",
        )
        self.queue = queue
        self.invocation_id = invocation_id


class Busy(DlqError):
    def __init__(self, queue: str):
        super().__init__(
            f"another 'asyncinvoke dlq' command is reading {queue!r} right now; run this one "
            "when it has finished (a reader holds the records it has read)"
        )
        self.queue = queue


class BrowseInterrupted(DlqError):
    def __init__(self, queue: str, reason: str):
        super().__init__(
            f"lost the broker while reading {queue!r} ({reason}); unsettled records "
            "went back to the queue, nothing was lost"
        )
        self.queue = queue


class BadReplayFile(DlqError):
    def __init__(self, path: str, line: int, reason: str):
        super().__init__(f"{path}:{line}: {reason}; nothing was replayed")
        self.path = path
        self.line = line


class NotReplayable(DlqError):
    """A record whose original invocation cannot be sent again; it stays in the queue."""


class RecordsSkipped(DlqError):
    def __init__(self, report: _ReplayCounts):
        super().__init__(
            f"{len(report.skipped)} selected record(s) cannot be replayed and stay in "
            f"{report.source!r} (reasons above; 'asyncinvoke dlq show ID' has the details)"
        )
        self.report = report


class ReplayIncomplete(DlqError):
    def __init__(self, report: _ReplayCounts, error: BaseException):
        super().__init__(
            f"replay stopped after {report.replayed} of {report.selected} records: {error}; "
            f"the {report.selected - report.replayed} not replayed are still in "
            f"{report.source!r}"
        )
        self.report = report


class HandlerProcessDied(AsyncInvokeError):
    """The handler's process (``executor = "process"``) ended in the middle of an attempt."""


class NotStarted(AsyncInvokeError):
    """An attempt waited behind another in a handler process that ended: it never ran, and
    goes to another process."""


class QueueBusy(AsyncInvokeError):
    """Another browse holds the failure queue now (the console's, or a dlq command's)."""


class TriggerError(AsyncInvokeError):
    """A trigger: a timer or a RabbitMQ source that invokes a function."""


class InvalidTrigger(TriggerError):
    """A trigger definition is wrong; ``field`` names the field (``cronExpression``,
    ``triggerConfig.batchSize``) so an API answer or a file error can point at it."""

    def __init__(self, message: str, *, field: str, trigger: str = ""):
        where = f"trigger {trigger!r}: " if trigger else ""
        super().__init__(f"{where}{field}: {message}")
        self.reason = message
        self.field = field
        self.trigger = trigger


class TriggerNotFound(TriggerError):
    def __init__(self, function: str, trigger: str):
        super().__init__(
            f"function {function!r} has no trigger {trigger!r}; "
            f"'asyncinvoke trigger list {function}' shows its triggers"
        )
        self.function = function
        self.trigger = trigger


class TriggerExists(TriggerError):
    def __init__(self, function: str, trigger: str):
        super().__init__(
            f"function {function!r} has a trigger {trigger!r} already; update it, or "
            "delete it first"
        )
        self.function = function
        self.trigger = trigger


class SourceGone(TriggerError):
    """A RabbitMQ trigger's source queue was deleted, or its connection dropped, while it
    was consumed; the trigger is unhealthy and consumes again once it can."""


class ManagementUnavailable(AsyncInvokeError):
    """RabbitMQ's management HTTP API did not give the queues' counts; the message names
    the API's address and why (the console then shows what its own process knows)."""
