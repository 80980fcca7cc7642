"""The wire contract (SPEC sections 4 and 5): envelopes and records.

This is the only module that knows the wire keys. Times are integer
milliseconds since the Unix epoch; AMQP float headers are 32-bit in common
clients, so a time never travels as a float.
"""

from __future__ import annotations

import base64
import re
import traceback
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson

from asyncinvoke import ladder
from asyncinvoke.errors import InvalidMessage, PayloadTooLarge

VERSION = 1
CONTENT_TYPE = "application/msgpack"
# AMQP headers of a record (SPEC section 5): filters read them without unpacking the body.
FUNCTION_HEADER = "x-function"
CONDITION_HEADER = "x-condition"
# How far a producer's clock may run ahead of ours before its created_at is refused.
MAX_CLOCK_SKEW_MS = 300_000
# The highest 'attempt' accepted. The service writes at most functions.MAX_RETRIES_LIMIT (8);
# the slack lets an older or newer peer's envelopes through, and the bound keeps the
# increment of a retry inside msgpack's 64-bit integers.
MAX_ATTEMPT = 64
# How far ahead a 'due_at' may lie: the ladder's reach. The service writes at most a
# backoff or a task lease ahead (both capped at a day), and anything beyond one trip down
# the ladder would circle it forever without ever becoming due or expiring.
MAX_DUE_AHEAD_MS = ladder.MAX_DELAY_S * 1000
ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,127}$")
FUNCTION_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")

# Conditions of a record (SPEC section 5).
SUCCESS = "Success"
RETRIES_EXHAUSTED = "RetriesExhausted"
NON_RETRYABLE = "NonRetryableError"
EVENT_AGE_EXCEEDED = "EventAgeExceeded"
INVALID_MESSAGE = "InvalidMessage"
UNKNOWN_FUNCTION = "UnknownFunction"
DELIVERY_LIMIT_EXCEEDED = "DeliveryLimitExceeded"
CONDITIONS = (
    SUCCESS,
    RETRIES_EXHAUSTED,
    NON_RETRYABLE,
    EVENT_AGE_EXCEEDED,
    INVALID_MESSAGE,
    UNKNOWN_FUNCTION,
    DELIVERY_LIMIT_EXCEEDED,
)

# Keys a record carries beside those of SPEC section 5, when it cannot carry everything
# (record_codec.py, records.py): the original invocation's msgpack bytes in base64 when
# 'invocation' cannot hold it; what was replaced by a readable rendering, and why; the
# size of an original message of which the record keeps only the start.
INVOCATION_BASE64 = "invocationBase64"
ENCODING_ERROR = "encodingError"
INVOCATION_BYTES = "invocationBytes"

# functionError values of a record's responseContext.
HANDLED = "HandledInvocationError"
UNHANDLED = "UnhandledInvocationError"
TIMEOUT = "TimeoutError"

_PUBLIC_KEYS = frozenset(
    {"v", "id", "fn", "payload", "created_at", "delay", "attempt", "task", "meta"}
)
# Added by the service, never by a producer: a due time (ms), for a synchronous call
# the time (ms) after which its caller no longer waits for the reply, and the mark of a
# replay from the failure queue (a task that failed may run again; one that succeeded never).
_INTERNAL_KEYS = frozenset({"due_at", "reply_by", "replay"})
_KNOWN_KEYS = _PUBLIC_KEYS | _INTERNAL_KEYS


@dataclass(slots=True)
class Envelope:
    """One invocation as it travels (SPEC section 4)."""

    id: str
    fn: str
    payload: Any
    created_at: int
    delay: int = 0
    attempt: int = 0
    task: bool | None = None
    meta: dict[str, str] | None = None
    due_at: int | None = None  # internal: start no earlier than this (ms)
    reply_by: int | None = None  # internal: a sync caller waits until then (ms)
    replay: bool = False  # internal: sent again by 'dlq replay'

    def due_at_ms(self) -> int:
        """When this invocation may start (ms since the epoch)."""
        if self.due_at is not None:
            return self.due_at
        return self.created_at + self.delay * 1000

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "v": VERSION,
            "id": self.id,
            "fn": self.fn,
            "payload": self.payload,
            "created_at": self.created_at,
        }
        if self.delay:
            wire["delay"] = self.delay
        if self.attempt:
            wire["attempt"] = self.attempt
        if self.task is not None:
            wire["task"] = self.task
        if self.meta:
            wire["meta"] = self.meta
        if self.due_at is not None:
            wire["due_at"] = self.due_at
        if self.reply_by is not None:
            wire["reply_by"] = self.reply_by
        if self.replay:
            wire["replay"] = True
        return wire

    def for_replay(self) -> dict[str, Any]:
        """The envelope as a producer sent it: attempt count and internal keys dropped."""
        wire = self.to_wire()
        wire.pop("attempt", None)
        wire.pop("due_at", None)
        wire.pop("reply_by", None)
        wire.pop("replay", None)
        return wire


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]


def unpack(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def encode(envelope: Envelope) -> bytes:
    return pack(envelope.to_wire())


def _int(data: dict[str, Any], key: str, default: int) -> int:
    value = data.get(key, default)
    if type(value) is not int:
        raise InvalidMessage(
            f"'{key}' must be an integer, got {type(value).__name__}", partial=data
        )
    return value


def decode(
    body: bytes,
    *,
    received_at_ms: int,
    max_payload_bytes: int,
    max_delay_s: int,
) -> Envelope:
    """Bytes → a valid Envelope, or InvalidMessage saying what is wrong."""
    if len(body) > max_payload_bytes:
        raise PayloadTooLarge(
            f"message is {len(body)} bytes, over the limit of {max_payload_bytes} bytes "
            "(raise ASYNCINVOKE_MAX_PAYLOAD_BYTES or send a reference to the data)"
        )
    try:
        data = unpack(body)
    except Exception as exc:
        raise InvalidMessage(f"body is not msgpack: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidMessage(f"envelope must be a msgpack map, got {type(data).__name__}")
    return from_wire(data, received_at_ms=received_at_ms, max_delay_s=max_delay_s)


def from_wire(data: dict[str, Any], *, received_at_ms: int, max_delay_s: int) -> Envelope:
    """Validate a decoded envelope map (SPEC section 4)."""
    version = data.get("v")
    if type(version) is not int or version != VERSION:
        raise InvalidMessage(f"'v' must be {VERSION}, got {version!r}", partial=data)
    missing = [key for key in ("id", "fn", "payload") if key not in data]
    if missing:
        raise InvalidMessage(f"missing required key(s): {', '.join(missing)}", partial=data)
    unknown = data.keys() - _KNOWN_KEYS
    if unknown:
        names = ", ".join(sorted(map(str, unknown)))
        raise InvalidMessage(f"unknown key(s): {names}", partial=data)
    inv_id, fn = data["id"], data["fn"]
    if not isinstance(inv_id, str) or not ID_RE.fullmatch(inv_id):
        raise InvalidMessage(f"'id' must match {ID_RE.pattern}, got {inv_id!r}", partial=data)
    if not isinstance(fn, str) or not FUNCTION_RE.fullmatch(fn):
        raise InvalidMessage(f"'fn' must match {FUNCTION_RE.pattern}, got {fn!r}", partial=data)
    created_at = _int(data, "created_at", received_at_ms)
    if created_at > received_at_ms + MAX_CLOCK_SKEW_MS:
        raise InvalidMessage(
            f"'created_at' is {(created_at - received_at_ms) / 1000:.0f} s in the future; "
            "send the acceptance time in ms since the epoch (or leave it out)",
            partial=data,
        )
    delay = _int(data, "delay", 0)
    if not 0 <= delay <= max_delay_s:
        raise InvalidMessage(
            f"'delay' must be between 0 and {max_delay_s} seconds, got {delay}", partial=data
        )
    attempt = _int(data, "attempt", 0)
    if not 0 <= attempt <= MAX_ATTEMPT:
        raise InvalidMessage(
            f"'attempt' must be between 0 and {MAX_ATTEMPT} (attempts already made), "
            f"got {attempt}; a producer leaves it out",
            partial=data,
        )
    task = data.get("task")
    if task is not None and not isinstance(task, bool):
        raise InvalidMessage(f"'task' must be a boolean, got {type(task).__name__}", partial=data)
    meta = data.get("meta")
    if meta is not None and not (
        isinstance(meta, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    ):
        raise InvalidMessage("'meta' must be a map of strings to strings", partial=data)
    due_at = data.get("due_at")
    if due_at is not None and type(due_at) is not int:
        raise InvalidMessage("'due_at' must be an integer", partial=data)
    if due_at is not None and not 0 <= due_at <= received_at_ms + MAX_DUE_AHEAD_MS:
        raise InvalidMessage(
            f"'due_at' ({due_at}) must be a time in ms since the epoch at most "
            f"{ladder.MAX_DELAY_S} s ahead; it is internal: a producer sends 'delay' instead",
            partial=data,
        )
    reply_by = data.get("reply_by")
    if reply_by is not None and type(reply_by) is not int:
        raise InvalidMessage("'reply_by' must be an integer", partial=data)
    replay = data.get("replay", False)
    if not isinstance(replay, bool):
        raise InvalidMessage("'replay' must be a boolean", partial=data)
    return Envelope(
        id=inv_id,
        fn=fn,
        payload=data["payload"],
        created_at=created_at,
        delay=delay,
        attempt=attempt,
        task=task,
        meta=meta,
        due_at=due_at,
        reply_by=reply_by,
        replay=replay,
    )


# -- synchronous replies -----------------------------------------------------------------
# A synchronous call is an envelope published with AMQP reply_to (direct reply-to) and a
# correlation_id; the worker that runs it answers with one reply map and no retries.


def reply(
    *, ok: bool, result: Any, error: dict[str, Any] | None, function_error: str, status_code: int
) -> bytes:
    return pack(
        {
            "v": VERSION,
            "ok": ok,
            "result": result if ok else None,
            "error": None if ok else error,
            "functionError": function_error,
            "statusCode": status_code,
        }
    )


# -- records (SPEC section 5) ------------------------------------------------------------


def error_payload(exc: BaseException) -> dict[str, Any]:
    return {
        "errorType": type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_exception(exc),
    }


def record(
    *,
    request_id: str,
    function: str,
    condition: str,
    attempts: int,
    request_payload: Any,
    status_code: int,
    function_error: str,
    response: Any,
    invocation: Any,
    now_ms: int,
) -> dict[str, Any]:
    """A destination record, shaped like FC / Lambda destination records."""
    return {
        "v": VERSION,
        "timestamp": now_ms,
        "requestContext": {
            "requestId": request_id,
            "functionName": function,
            "condition": condition,
            "approximateInvokeCount": attempts,
        },
        "requestPayload": request_payload,
        "responseContext": {"statusCode": status_code, "functionError": function_error},
        "responsePayload": response,
        "invocation": invocation,
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, msgpack.Timestamp):
        return value.to_unix_nano() // 1_000_000
    if isinstance(value, msgpack.ExtType):
        return {"extType": value.code, "data": base64.b64encode(value.data).decode("ascii")}
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def to_json(value: Any) -> bytes:
    """JSON for HTTP destinations and people: bytes base64-encoded, int keys as strings."""
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
