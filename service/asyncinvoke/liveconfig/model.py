"""Live function configuration, pure: FC's request bodies → stored documents, stored
documents over the functions file → the effective ``FunctionSpec`` with each field's
source, and the effective configuration → FC's response shapes.

Two kinds of document per function live in the configuration store (``docstore``):

    "async-config"   maxAsyncRetryAttempts, maxAsyncEventAgeInSeconds, asyncTask,
                     onSuccess, onFailure (destinations in our own form)
    "concurrency"    reservedConcurrency: 0 pauses the function, N is the per-worker
                     concurrency

Only the fields a Put names are stored, and each one overrides the file's value for that
field alone (precedence field by field); deleting the document returns every field to the
file. A field's source is ``api`` or the file's own source (its path, ``[defaults]``, the
code, or ``default``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from asyncinvoke.errors import InvalidConfig
from asyncinvoke.functions import (
    MAX_EVENT_AGE_LIMIT_S,
    MAX_RETRIES_LIMIT,
    FunctionSpec,
    parse_destination,
)

ASYNC_CONFIG = "async-config"  # docstore kinds
CONCURRENCY = "concurrency"
LATEST = "LATEST"
SOURCE_API = "api"
MAX_RESERVED_CONCURRENCY = 10000  # the functions file's limit for concurrency

RETRIES = "maxAsyncRetryAttempts"
EVENT_AGE = "maxAsyncEventAgeInSeconds"
ASYNC_TASK = "asyncTask"
ON_SUCCESS = "onSuccess"
ON_FAILURE = "onFailure"
RESERVED = "reservedConcurrency"

# Each API field, and the functions-file key it overrides.
FILE_KEYS = {
    RETRIES: "max_retries",
    EVENT_AGE: "max_event_age",
    ASYNC_TASK: "task_mode",
    ON_SUCCESS: "on_success",
    ON_FAILURE: "on_failure",
    RESERVED: "concurrency",
}
_PUT_FIELDS = {RETRIES, EVENT_AGE, ASYNC_TASK, "destinationConfig", "qualifier"}
_FC_FUNCTION_ARN = re.compile(r"^acs:fc:[^:]*:[^:]*:functions/([^/:]+)$")
_MNS_QUEUE_ARN = re.compile(r"^acs:mns:[^:]*:[^:]*:/queues/([^/]+)/messages$")
DESTINATION_FORMS = (
    "queue:NAME, function:NAME, an http(s):// URL, acs:fc:<region>:<account>:functions/NAME "
    "or acs:mns:<region>:<account>:/queues/NAME/messages"
)


def check_qualifier(qualifier: str | None) -> None:
    """Only LATEST (or none) exists here: no versions or aliases."""
    if qualifier not in (None, "", LATEST):
        raise InvalidConfig(
            "qualifier",
            f"qualifier {qualifier!r}: only {LATEST} exists here (asyncinvoke has no versions "
            f"or aliases); leave the qualifier out or use {LATEST}",
        )


def _integer(body: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidConfig(name, f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def destination(raw: object, field_name: str) -> str:
    """A destination in our form (``queue:NAME``, ``function:NAME``, a URL), from our own
    form or from an FC function ARN or MNS queue ARN."""
    if not isinstance(raw, str):
        raise InvalidConfig(field_name, f"{field_name} must be a string, got {raw!r}")
    text = raw.strip()
    if match := _FC_FUNCTION_ARN.fullmatch(text):
        text = f"function:{match[1]}"
    elif match := _MNS_QUEUE_ARN.fullmatch(text):
        text = f"queue:{match[1]}"
    try:
        return str(parse_destination(text))
    except ValueError:
        raise InvalidConfig(
            field_name, f"{field_name} {raw!r} is not a destination; use {DESTINATION_FORMS}"
        ) from None


def parse_async_config(body: object) -> dict[str, Any]:
    """PutAsyncInvokeConfig's body (FC's PutAsyncInvokeConfigInput) → the stored document."""
    if not isinstance(body, dict):
        raise InvalidConfig("body", "the body must be a JSON object (PutAsyncInvokeConfigInput)")
    unknown = sorted(set(body) - _PUT_FIELDS)
    if unknown:
        known = ", ".join(sorted(_PUT_FIELDS - {"qualifier"}))
        raise InvalidConfig(unknown[0], f"unknown field {unknown[0]!r}; known: {known}")
    document: dict[str, Any] = {}
    retries = _integer(body, RETRIES, 0, MAX_RETRIES_LIMIT)
    if retries is not None:
        document[RETRIES] = retries
    age = _integer(body, EVENT_AGE, 1, MAX_EVENT_AGE_LIMIT_S)
    if age is not None:
        document[EVENT_AGE] = age
    task = body.get(ASYNC_TASK)
    if task is not None:
        if not isinstance(task, bool):
            raise InvalidConfig(ASYNC_TASK, f"{ASYNC_TASK} must be true or false, got {task!r}")
        document[ASYNC_TASK] = task
    destinations = body.get("destinationConfig")
    if destinations is not None:
        if not isinstance(destinations, dict) or set(destinations) - {ON_SUCCESS, ON_FAILURE}:
            raise InvalidConfig(
                "destinationConfig",
                "destinationConfig must be an object with onSuccess and/or onFailure, each "
                '{"destination": "..."}',
            )
        for name in (ON_SUCCESS, ON_FAILURE):
            target = destinations.get(name)
            if target is None:
                continue
            path = f"destinationConfig.{name}.destination"
            if not isinstance(target, dict) or "destination" not in target:
                raise InvalidConfig(path, f'{path} is missing: use {{"destination": "..."}}')
            document[name] = destination(target["destination"], path)
    return document


def parse_concurrency(body: object) -> dict[str, Any]:
    """PutConcurrencyConfig's body (FC's PutConcurrencyInput) → the stored document."""
    if not isinstance(body, dict) or RESERVED not in body:
        raise InvalidConfig(RESERVED, f"{RESERVED} is required: 0 pauses the function")
    reserved = _integer(body, RESERVED, 0, MAX_RESERVED_CONCURRENCY)
    assert reserved is not None
    return {RESERVED: reserved}


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored document as the model reads it (a ``docstore.Entry``, without I/O)."""

    document: Mapping[str, Any]
    version: int
    created_ms: int
    modified_ms: int


@dataclass(frozen=True, slots=True)
class Effective:
    """A function's configuration in force: the file's spec with the API's fields over it.

    ``version`` is the newest stored version among the function's documents (0: none),
    what every attempt records; ``paused`` is a reservedConcurrency of 0.
    """

    spec: FunctionSpec
    version: int = 0
    paused: bool = False
    sources: Mapping[str, str] = field(default_factory=dict)  # file key → where it came from
    async_config: Stored | None = None
    concurrency: Stored | None = None


def effective(
    base: FunctionSpec,
    base_sources: Mapping[str, str],
    async_config: Stored | None,
    concurrency: Stored | None,
) -> Effective:
    spec = base
    sources = {key: base_sources.get(key, "functions file") for key in FILE_KEYS.values()}
    paused = False
    if async_config is not None:
        doc = async_config.document
        changes: dict[str, Any] = {}
        if RETRIES in doc:
            changes["max_retries"] = int(doc[RETRIES])
        if EVENT_AGE in doc:
            changes["max_event_age_s"] = int(doc[EVENT_AGE])
        if ASYNC_TASK in doc:
            changes["task_mode"] = bool(doc[ASYNC_TASK])
        if ON_SUCCESS in doc:
            changes["on_success"] = parse_destination(str(doc[ON_SUCCESS]))
        if ON_FAILURE in doc:
            changes["on_failure"] = parse_destination(str(doc[ON_FAILURE]))
        spec = replace(spec, **changes)
        sources.update({FILE_KEYS[name]: SOURCE_API for name in doc if name in FILE_KEYS})
    if concurrency is not None:
        reserved = int(concurrency.document.get(RESERVED, spec.concurrency))
        paused = reserved == 0
        if not paused:
            spec = replace(spec, concurrency=reserved)
        sources["concurrency"] = SOURCE_API
    versions = [stored.version for stored in (async_config, concurrency) if stored is not None]
    return Effective(spec, max(versions, default=0), paused, sources, async_config, concurrency)


# -- FC's response shapes ---------------------------------------------------------------------


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def times(stored: Stored | None, file_modified_ms: int) -> dict[str, str]:
    """createdTime / lastModifiedTime: the API document's, or the functions file's."""
    if stored is None:
        return {"createdTime": iso(file_modified_ms), "lastModifiedTime": iso(file_modified_ms)}
    return {"createdTime": iso(stored.created_ms), "lastModifiedTime": iso(stored.modified_ms)}


def concurrency_output(arn: str, name: str, live: Effective) -> dict[str, Any]:
    """FC's ConcurrencyConfig; 0 while paused, else the per-worker concurrency in force."""
    reserved = 0 if live.paused else live.spec.concurrency
    return {
        "functionArn": arn,
        "functionName": name,
        RESERVED: reserved,
        "asyncinvoke": {
            "meaning": "per-worker concurrency (FC: for the whole fleet); 0 pauses the function",
            "paused": live.paused,
            "source": live.sources.get("concurrency"),
            "version": live.concurrency.version if live.concurrency is not None else 0,
        },
    }


def view(live: Effective, file_modified_ms: int) -> dict[str, Any]:
    """The configuration in force, as the CLI prints it (``--json``) and scripts read it:
    FC's field names, the pause, the version, and each file key's source."""
    spec = live.spec
    destinations = {
        name: str(target) if target is not None else None
        for name, target in ((ON_SUCCESS, spec.on_success), (ON_FAILURE, spec.on_failure))
    }
    newest = max(
        (stored for stored in (live.async_config, live.concurrency) if stored is not None),
        key=lambda stored: stored.version,
        default=None,
    )
    return {
        "functionName": spec.name,
        "configVersion": live.version,
        "paused": live.paused,
        RETRIES: spec.max_retries,
        EVENT_AGE: spec.max_event_age_s,
        ASYNC_TASK: spec.task_mode,
        "destinationConfig": destinations,
        RESERVED: 0 if live.paused else spec.concurrency,
        "sources": dict(live.sources),
        "api": {
            ASYNC_CONFIG: dict(live.async_config.document) if live.async_config else None,
            CONCURRENCY: dict(live.concurrency.document) if live.concurrency else None,
        },
        **times(newest, file_modified_ms),
    }
