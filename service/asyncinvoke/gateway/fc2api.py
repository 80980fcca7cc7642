"""Function Compute 2.0's OpenAPI (2016-08-15 and 2021-04-06) as the gateway speaks it:
paths with services and qualifiers, the x-fc-* headers of InvokeFunction, the
StatefulAsyncInvocation shape, the function's async config, and errors as
``{ErrorCode, ErrorMessage}``. Pure: no I/O.

The same operations as the 2023-03-30 face (``fcapi``), in FC 2.0's shapes: a stateful
async invocation is a task of task mode, and the errors are ``fcapi``'s error types,
written in FC 2.0's JSON. The shapes are the ones the official SDKs parse:
``aliyun-fc2`` (2016-08-15) and ``alibabacloud_fc_open20210406`` (2021-04-06).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace
from typing import Any

import orjson
from multidict import CIMultiDictProxy, MultiDict, MultiMapping

from asyncinvoke import contract
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.gateway import fcapi
from asyncinvoke.gateway.fcapi import FcError, InvalidArgument, NotFound
from asyncinvoke.tasks.store import Page, Task
from asyncinvoke.tasks.views import async_task
from asyncinvoke.topology import Names

API_VERSIONS = ("2016-08-15", "2021-04-06")
_PREFIXES = tuple(f"/{version}/" for version in API_VERSIONS)
VERSION_PATTERN = "|".join(re.escape(version) for version in API_VERSIONS)
# The only version of a function here: asyncinvoke has no versions or aliases.
LATEST = "LATEST"

STATEFUL_ID = "x-fc-stateful-async-invocation-id"
STATEFUL_ENABLE = "x-fc-stateful-async-invocation-enable"
TRACE_ID = "x-fc-trace-id"
# The trace id travels in the envelope's meta under its header's name (context.meta).
TRACE_META_KEY = TRACE_ID
_TRACE_RE = re.compile(r"[\x21-\x7e]{1,256}")

DEFAULT_FUNCTIONS_LIMIT = 20
MAX_FUNCTIONS_LIMIT = 100


def is_fc2_path(path: str) -> bool:
    return path.startswith(_PREFIXES)


def error_body(error: FcError, request_id: str) -> bytes:
    """FC 2.0's error JSON. The request id is also in the x-fc-request-id header, where
    the 2016-08-15 SDKs read it; the Tea SDK reads it from the body."""
    return orjson.dumps(
        {"ErrorCode": error.code, "ErrorMessage": error.message, "RequestId": request_id}
    )


# -- services, qualifiers, functions ------------------------------------------------------


def split_service(segment: str, query_qualifier: str | None) -> str:
    """``svc`` or ``svc.LATEST`` (2016-08-15), with ``?qualifier=LATEST`` (2021-04-06) →
    the service's name. Any other qualifier is a 400: only LATEST exists here."""
    service, dot, path_qualifier = segment.partition(".")
    for qualifier in (path_qualifier if dot else None, query_qualifier or None):
        if qualifier is not None and qualifier != LATEST:
            raise InvalidArgument(
                f"qualifier {qualifier!r}: only {LATEST} exists here (asyncinvoke has no "
                f"versions or aliases); leave the qualifier out or use {LATEST}",
                code="InvalidArgument",
            )
    return service


def service_not_found(service: str) -> NotFound:
    return NotFound(
        f"service '{service}' does not exist: no function of the gateway's functions file "
        f"has service = \"{service}\"",
        code="ServiceNotFound",
    )


def function_not_found(service: str, function: str) -> NotFound:
    return NotFound(
        f"function '{function}' does not exist in service '{service}'",
        code="FunctionNotFound",
    )


def invocation_not_found(service: str, function: str, invocation_id: str) -> NotFound:
    return NotFound(
        f"stateful async invocation '{invocation_id}' of function '{service}/{function}' "
        "does not exist",
        code="StatefulAsyncInvocationNotFound",
    )


def find_function(
    specs: Mapping[str, FunctionSpec], services: Collection[str], service: str, function: str
) -> FunctionSpec:
    """The function a 2.0 path names: ServiceNotFound, or FunctionNotFound when the
    service exists but the function is not in it."""
    if service not in services:
        raise service_not_found(service)
    spec = specs.get(function)
    if spec is None or spec.service != service:
        raise function_not_found(service, function)
    return spec


# -- InvokeFunction ------------------------------------------------------------------------


def _boolean_header(headers: CIMultiDictProxy[str], name: str) -> bool | None:
    raw = headers.get(name)
    if raw is None:
        return None
    if raw.strip().lower() not in ("true", "false"):
        raise InvalidArgument(f"{name} must be true or false, got {raw!r}")
    return raw.strip().lower() == "true"


def parse_invocation(headers: CIMultiDictProxy[str], max_delay_s: int) -> fcapi.Invocation:
    """FC 2.0's InvokeFunction headers: x-fc-invocation-type, x-fc-async-delay,
    x-fc-stateful-async-invocation-id and -enable (task mode and its id), x-fc-trace-id."""
    invocation = fcapi.parse_invocation(headers, max_delay_s, task_id_header=STATEFUL_ID)
    enable = _boolean_header(headers, STATEFUL_ENABLE)
    if enable is not None and not invocation.asynchronous and enable:
        raise InvalidArgument(f"{STATEFUL_ENABLE} applies to {fcapi.ASYNC} invocations only")
    if enable is False and invocation.task_id is not None:
        raise InvalidArgument(
            f"{STATEFUL_ID} names a stateful invocation, but {STATEFUL_ENABLE} is false"
        )
    trace_id = headers.get(TRACE_ID)
    if trace_id is not None and not _TRACE_RE.fullmatch(trace_id):
        raise InvalidArgument(
            f"{TRACE_ID} must be 1 to 256 printable ASCII characters, got {trace_id[:40]!r}"
        )
    meta = ((TRACE_META_KEY, trace_id),) if trace_id is not None else ()
    return replace(invocation, task=enable, meta=meta)


# -- stateful async invocations ------------------------------------------------------------


def stateful_invocation(task: Task, service: str, include_payload: bool = True) -> dict[str, Any]:
    """A task as FC 2.0's StatefulAsyncInvocation."""
    view = async_task(task, include_payload=include_payload)
    for number, event in enumerate(view["events"]):
        event["eventId"] = number
    shaped: dict[str, Any] = {
        "invocationId": view["taskId"],
        "requestId": view["requestId"],
        "serviceName": service,
        "functionName": view["functionName"],
        "qualifier": LATEST,
        "status": view["status"],
        "startedTime": view["startedTime"],
        "endTime": view["endTime"],
        "durationMs": view["durationMs"],
        "alreadyRetriedTimes": view["alreadyRetriedTimes"],
        "invocationErrorMessage": view["taskErrorMessage"],
        "events": view["events"],
    }
    if include_payload:
        shaped["invocationPayload"] = view["taskPayload"]
        shaped["returnPayload"] = view["returnPayload"]
    return shaped


# ListStatefulAsyncInvocations' query, in the names of the 2023-03-30 face's parser.
_LIST_QUERY_NAMES = {
    "invocationIdPrefix": "prefix",
    "status": "status",
    "limit": "limit",
    "nextToken": "nextToken",
    "sortOrderByTime": "sortOrderByTime",
    "startedTimeBegin": "startedTimeBegin",
    "startedTimeEnd": "startedTimeEnd",
    "includePayload": "includePayload",
}


def parse_list_query(query: MultiMapping[str]) -> fcapi.ListQuery:
    """ListStatefulAsyncInvocations' filters and paging (invocationIdPrefix, status,
    startedTimeBegin/End, sortOrderByTime, includePayload, limit, nextToken)."""
    renamed: MultiDict[str] = MultiDict()
    for name, value in query.items():
        if name in _LIST_QUERY_NAMES:
            renamed.add(_LIST_QUERY_NAMES[name], value)
    return fcapi.parse_list_query(renamed)


def list_output(page: Page, service: str, include_payload: bool) -> dict[str, Any]:
    output: dict[str, Any] = {
        "invocations": [
            stateful_invocation(task, service, include_payload) for task in page.tasks
        ],
    }
    if page.next_token:
        output["nextToken"] = page.next_token
    return output


def valid_invocation_id(invocation_id: str) -> bool:
    return contract.ID_RE.fullmatch(invocation_id) is not None


# -- ListStatefulAsyncInvocationFunctions --------------------------------------------------


def stateful_functions(
    specs: Iterable[FunctionSpec], query: MultiMapping[str]
) -> dict[str, Any]:
    """The functions whose invocations are stateful (task mode), as FC 2.0's
    AsyncConfigMeta list, sorted by service and name; nextToken names the next one."""
    raw_limit = query.get("limit") or str(DEFAULT_FUNCTIONS_LIMIT)
    if not raw_limit.isascii() or not raw_limit.isdigit() or not (
        1 <= int(raw_limit) <= MAX_FUNCTIONS_LIMIT
    ):
        raise InvalidArgument(
            f"limit must be a whole number between 1 and {MAX_FUNCTIONS_LIMIT}, "
            f"got {raw_limit[:40]!r}"
        )
    limit = int(raw_limit)
    start = query.get("nextToken") or ""
    keys = sorted(
        f"{spec.service}/{spec.name}" for spec in specs if spec.task_mode
    )
    chosen = [key for key in keys if key >= start]
    page, rest = chosen[:limit], chosen[limit:]
    output: dict[str, Any] = {
        "data": [
            {"serviceName": service, "qualifier": LATEST, "functionName": function}
            for service, _, function in (key.partition("/") for key in page)
        ]
    }
    if rest:
        output["nextToken"] = rest[0]
    return output


# -- GetFunctionAsyncInvokeConfig ----------------------------------------------------------


def async_config(spec: FunctionSpec, names: Names, modified_ms: int) -> dict[str, Any]:
    """The function's effective policy as FC 2.0's AsyncConfig (``statefulInvocation`` is
    task mode); the 2023-03-30 face's ``asyncinvoke`` details come along."""
    config = fcapi.async_config(spec, names, modified_ms)
    return {
        "service": spec.service,
        "function": spec.name,
        "qualifier": LATEST,
        "createdTime": config["createdTime"],
        "lastModifiedTime": config["lastModifiedTime"],
        "destinationConfig": config["destinationConfig"],
        "maxAsyncEventAgeInSeconds": config["maxAsyncEventAgeInSeconds"],
        "maxAsyncRetryAttempts": config["maxAsyncRetryAttempts"],
        "statefulInvocation": config["asyncTask"],
        "asyncinvoke": config["asyncinvoke"],
    }
