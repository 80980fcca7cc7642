"""Function Compute's OpenAPI (2023-03-30) as the gateway speaks it: names, request
parsing, response shapes and errors. Pure: no I/O, no aiohttp.

The shapes are the ones the official SDK's models parse (``alibabacloud_fc20230330``):
AsyncTask, ListAsyncTasksOutput ``{tasks, nextToken}``, AsyncConfig, and errors as
``{Code, Message, RequestId}``.

    FcError                    an error answer: HTTP status + FC error code
    ├── InvalidArgument        400  a header, query parameter or id is malformed
    ├── AccessDenied           403  no or wrong signature, unknown key, stale date, reused nonce
    ├── NotFound               404  no such function, task or path
    ├── Conflict               409  the task id is taken, the task already ended, a re-run
    │                               of a task that has not ended
    ├── EntityTooLarge         413  the body is over ASYNCINVOKE_MAX_PAYLOAD_BYTES
    ├── ServiceUnavailable     503  RabbitMQ is not reachable now
    └── InvocationTimeout      504  no reply to a synchronous invocation in time
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy, MultiMapping

from asyncinvoke import contract
from asyncinvoke.contract import ErrorInfo
from asyncinvoke.errors import (
    AsyncInvokeError,
    BrokerUnavailable,
    CallTimeout,
    InvalidConfig,
    InvalidMessage,
    PublishError,
    StoreUnavailable,
    TaskExistsError,
    TaskFinished,
    TaskNotEnded,
    TaskNotFound,
    TaskNotRerunnable,
    TaskStoreUnavailable,
    UnknownFunctionError,
)
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.settings import redact_url
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import (
    MAX_PAGE_LIMIT,
    Page,
    Task,
    decode_page_token,
)
from asyncinvoke.tasks.views import async_task
from asyncinvoke.topology import Names

API_VERSION = "2023-03-30"
API_PREFIX = f"/{API_VERSION}/functions"

INVOCATION_TYPE = "x-fc-invocation-type"
ASYNC_DELAY = "x-fc-async-delay"
ASYNC_TASK_ID = "x-fc-async-task-id"
REQUEST_ID = "x-fc-request-id"
ERROR_TYPE = "x-fc-error-type"

ASYNC = "Async"
SYNC = "Sync"
DEFAULT_LIST_LIMIT = 20
# Times and counts from a query end up as 64-bit integers in SQLite or PostgreSQL: one
# outside that range is a 400 here, never an overflow there (a 500).
MAX_INTEGER = 2**63 - 1
# ASCII digits only: str.isdigit() also takes "²" and "٣", which int() then refuses or reads.
_WHOLE = re.compile(r"[0-9]{1,19}")

JSON = "application/json"
BINARY = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"


class FcError(AsyncInvokeError):
    status = 500
    default_code = "InternalServerError"

    def __init__(self, message: str, *, code: str | None = None):
        # A message may quote a header that was not UTF-8 (aiohttp keeps such bytes as
        # lone surrogates): made printable here, or the JSON answer could not be encoded.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class InvalidArgument(FcError):
    status = 400
    default_code = "InvalidArgument"


class AccessDenied(FcError):
    status = 403
    default_code = "AccessDenied"


class NotFound(FcError):
    status = 404
    default_code = "PathNotSupported"


class Conflict(FcError):
    status = 409
    default_code = "Conflict"


class EntityTooLarge(FcError):
    status = 413
    default_code = "EntityTooLarge"


class ServiceUnavailable(FcError):
    status = 503
    default_code = "ServiceUnavailable"


class InvocationTimeout(FcError):
    status = 504
    default_code = "FunctionTimeout"


def function_not_found(function: str) -> NotFound:
    return NotFound(
        f"function '{function}' does not exist: it is not in the gateway's functions file",
        code="FunctionNotFound",
    )


def task_not_found(function: str, task_id: str) -> NotFound:
    return NotFound(
        f"async task '{task_id}' of function '{function}' does not exist",
        code="AsyncTaskNotFound",
    )


def error_body(error: FcError, request_id: str) -> bytes:
    return orjson.dumps({"Code": error.code, "Message": error.message, "RequestId": request_id})


def from_error(exc: Exception) -> FcError | None:
    """The FC error answer for an asyncinvoke error; None for an unexpected one."""
    if isinstance(exc, FcError):
        return exc
    if isinstance(exc, UnknownFunctionError):
        return NotFound(str(exc), code="FunctionNotFound")
    if isinstance(exc, TaskExistsError):
        return Conflict(str(exc), code="AsyncTaskAlreadyExists")
    if isinstance(exc, TaskNotFound):
        return NotFound(str(exc), code="AsyncTaskNotFound")
    if isinstance(exc, TaskFinished):
        return Conflict(str(exc), code="AsyncTaskFinished")
    if isinstance(exc, TaskNotEnded):
        return Conflict(str(exc), code="AsyncTaskNotEnded")
    if isinstance(exc, TaskNotRerunnable):
        return Conflict(str(exc), code="AsyncTaskNotRerunnable")
    if isinstance(exc, InvalidMessage | InvalidConfig):
        return InvalidArgument(str(exc))
    if isinstance(exc, StoreUnavailable):
        return ServiceUnavailable(f"{exc}; try again shortly")
    if isinstance(exc, CallTimeout):
        return InvocationTimeout(str(exc))
    if isinstance(exc, PublishError | BrokerUnavailable):
        return ServiceUnavailable(f"RabbitMQ did not take the invocation: {exc}")
    if isinstance(exc, TaskStoreUnavailable):
        return ServiceUnavailable(f"{exc}; try again shortly")
    return None


def from_http_exception(exc: web.HTTPException, method: str, path: str) -> FcError:
    """aiohttp's own refusals (no route, wrong method, body too large) in FC's shape."""
    if exc.status == 413:
        return EntityTooLarge(f"payload size exceeds maximum allowed size: {exc.text}")
    if exc.status in (404, 405):
        error: FcError = NotFound(f"'{method}' against '{path}' is not supported",
                                  code="PathNotSupported")
    else:
        error = FcError(exc.text or exc.reason, code=exc.reason.replace(" ", ""))
    error.status = exc.status
    return error


# -- InvokeFunction ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invocation:
    """What the x-fc-* headers of an InvokeFunction request ask for."""

    asynchronous: bool
    delay_s: int = 0
    task_id: str | None = None
    task: bool | None = None  # task mode asked for or refused; None: the function's setting
    meta: tuple[tuple[str, str], ...] = ()  # for the envelope's meta (FC 2.0's trace id)


def parse_invocation(
    headers: CIMultiDictProxy[str], max_delay_s: int, task_id_header: str = ASYNC_TASK_ID
) -> Invocation:
    kind = headers.get(INVOCATION_TYPE, SYNC)
    if kind.lower() == ASYNC.lower():
        asynchronous = True
    elif kind.lower() == SYNC.lower():
        asynchronous = False
    else:
        raise InvalidArgument(f"{INVOCATION_TYPE} must be {ASYNC} or {SYNC}, got {kind!r}")
    raw_delay = headers.get(ASYNC_DELAY)
    task_id = headers.get(task_id_header)
    if not asynchronous and (raw_delay is not None or task_id is not None):
        given = ASYNC_DELAY if raw_delay is not None else task_id_header
        raise InvalidArgument(f"{given} applies to {ASYNC} invocations only")
    delay = 0
    if raw_delay is not None:
        digits = raw_delay.strip()
        if not _WHOLE.fullmatch(digits) or not 0 <= int(digits) <= max_delay_s:
            raise InvalidArgument(
                f"{ASYNC_DELAY} must be whole seconds between 0 and {max_delay_s}, "
                f"got {raw_delay!r}"
            )
        delay = int(digits)
    if task_id is not None and not contract.ID_RE.fullmatch(task_id):
        raise InvalidArgument(
            f"{task_id_header} must match {contract.ID_RE.pattern}, got {task_id!r}"
        )
    return Invocation(asynchronous, delay, task_id)


def result_body(value: Any) -> tuple[bytes, str]:
    """A synchronous result as FC returns it: bytes and text as they are, the rest as JSON."""
    if isinstance(value, bytes):
        return value, BINARY
    if isinstance(value, str):
        return value.encode(), TEXT
    return contract.to_json(value), JSON


def function_error_response(
    invocation_id: str, error: ErrorInfo, error_type: str
) -> web.Response:
    """A failed synchronous invocation, as FC answers it: 200 and x-fc-error-type."""
    return web.Response(
        status=200,
        body=function_error_body(error),
        headers={REQUEST_ID: invocation_id, ERROR_TYPE: error_type, "Content-Type": JSON},
    )


def function_error_body(error: ErrorInfo) -> bytes:
    """The body of a failed synchronous invocation, as FC's runtimes report errors."""
    return contract.to_json(error.to_wire())


# -- ListAsyncTasks ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListQuery:
    status: Status | None = None
    prefix: str | None = None
    limit: int = DEFAULT_LIST_LIMIT
    next_token: str | None = None
    newest_first: bool = True
    started_from: int | None = None
    started_to: int | None = None
    include_payload: bool = False


def _integer(query: MultiMapping[str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if not _WHOLE.fullmatch(raw) or not 0 <= int(raw) <= MAX_INTEGER:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise InvalidArgument(
            f"{name} must be a whole number between 0 and {MAX_INTEGER}, got {shown!r}"
        )
    return int(raw)


def _next_token(query: MultiMapping[str]) -> str | None:
    """The token as the store handed it out; one it could not have made is a 400 here."""
    token = query.get("nextToken") or None
    if token is None:
        return None
    refusal = InvalidArgument(
        "nextToken is not one this gateway handed out: pass the nextToken of the previous "
        "page unchanged, or none for the first page"
    )
    try:
        created_at, last_id = decode_page_token(token)
    except ValueError:
        raise refusal from None
    if not 0 <= created_at <= MAX_INTEGER or not contract.ID_RE.fullmatch(last_id):
        raise refusal
    return token


def _prefix(query: MultiMapping[str]) -> str | None:
    prefix = query.get("prefix") or None
    # PostgreSQL takes no NUL in text, and neither store takes a lone surrogate (what
    # aiohttp makes of bytes that are not UTF-8). Any other prefix is asked, even one
    # that matches no id.
    if prefix is not None and ("\x00" in prefix or not _is_utf8(prefix)):
        raise InvalidArgument(
            f"prefix must be UTF-8 text without NUL characters, got {prefix[:40]!r}"
        )
    return prefix


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _boolean(query: MultiMapping[str], name: str) -> bool:
    raw = query.get(name, "false")
    # The Python SDK sends str(bool): "True" / "False".
    if raw.lower() not in ("true", "false"):
        raise InvalidArgument(f"{name} must be true or false, got {raw!r}")
    return raw.lower() == "true"


def parse_list_query(query: MultiMapping[str]) -> ListQuery:
    raw_status = query.get("status")
    status = None
    if raw_status:
        try:
            status = Status(raw_status)
        except ValueError:
            known = ", ".join(s.value for s in Status)
            raise InvalidArgument(f"status must be one of {known}; got {raw_status!r}") from None
    limit = _integer(query, "limit")
    if limit is None:
        limit = DEFAULT_LIST_LIMIT
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_PAGE_LIMIT}, got {limit}")
    order = query.get("sortOrderByTime", "desc").lower()
    if order not in ("asc", "desc"):
        raise InvalidArgument(f"sortOrderByTime must be asc or desc, got {order!r}")
    return ListQuery(
        status=status,
        prefix=_prefix(query),
        limit=limit,
        next_token=_next_token(query),
        newest_first=order == "desc",
        started_from=_integer(query, "startedTimeBegin"),
        started_to=_integer(query, "startedTimeEnd"),
        include_payload=_boolean(query, "includePayload"),
    )


def list_output(page: Page, include_payload: bool) -> dict[str, Any]:
    output: dict[str, Any] = {
        "tasks": [_fc_task(task, include_payload) for task in page.tasks],
    }
    if page.next_token:
        output["nextToken"] = page.next_token
    return output


def task_output(task: Task) -> dict[str, Any]:
    return _fc_task(task, include_payload=True)


def _fc_task(task: Task, include_payload: bool) -> dict[str, Any]:
    view = async_task(task, include_payload=include_payload)
    for number, event in enumerate(view["events"]):
        event["eventId"] = number
    return view


# -- GetAsyncInvokeConfig ------------------------------------------------------------------


def function_arn(names: Names, function: str) -> str:
    """An ARN in FC's form; the namespace stands where FC has the region and account."""
    return f"acs:fc:asyncinvoke:{names.ns}:functions/{function}"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def async_config(spec: FunctionSpec, names: Names, modified_ms: int) -> dict[str, Any]:
    """The function's effective policy as FC's AsyncConfig; the rest of it (timeout,
    backoff, ...) under ``asyncinvoke``, which FC's SDKs ignore. URLs are shown without
    their passwords: whoever may read a config may not necessarily call its webhooks."""
    on_failure = redacted(str(spec.on_failure)) if spec.on_failure else f"queue:{names.failed}"
    destinations: dict[str, Any] = {"onFailure": {"destination": on_failure}}
    if spec.on_success is not None:
        destinations["onSuccess"] = {"destination": redacted(str(spec.on_success))}
    return {
        "functionArn": function_arn(names, spec.name),
        "asyncTask": spec.task_mode,
        "maxAsyncRetryAttempts": spec.max_retries,
        "maxAsyncEventAgeInSeconds": spec.max_event_age_s,
        "destinationConfig": destinations,
        "createdTime": _iso(modified_ms),
        "lastModifiedTime": _iso(modified_ms),
        "asyncinvoke": shown_policy(spec),
    }


def shown_policy(spec: FunctionSpec) -> dict[str, Any]:
    """The function's policy as it may be shown (here and by ``topology show``): URLs of
    an HTTP function or a webhook without their passwords, which a response, a terminal's
    scrollback or a CI log must not keep."""
    policy = spec.policy()
    for key in ("target", "on_success", "on_failure"):
        value = policy.get(key)
        if isinstance(value, str):
            policy[key] = redacted(value)
    return policy


def redacted(text: str) -> str:
    """``text`` with the password of a URL in it replaced; any other text as it is."""
    try:
        return redact_url(text)
    except ValueError:  # a port that is not a number: show no part of the URL
        return text.split("://", 1)[0] + "://..." if "://" in text else text
