"""The wire contract (SPEC sections 4 and 5): envelopes, sync replies and records, and
the Outcome of an attempt that replies and records are made from.

This is the only module that knows the wire keys: the rest of the service builds and
reads typed values, which ``to_wire`` / ``from_wire`` turn into maps and back. Times
are integer milliseconds since the Unix epoch; AMQP float headers are 32-bit in common
clients, so a time never travels as a float.
"""

from __future__ import annotations

import base64
import re
import traceback
from collections.abc import Mapping
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
# The highest throttle count accepted: a budget of a day throttled every second, with room.
MAX_THROTTLES = 1_000_000
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
THROTTLE_EXHAUSTED = "ThrottleExhausted"  # throttled past the function's throttle_budget
CONDITIONS = (
    SUCCESS,
    RETRIES_EXHAUSTED,
    NON_RETRYABLE,
    EVENT_AGE_EXCEEDED,
    INVALID_MESSAGE,
    UNKNOWN_FUNCTION,
    DELIVERY_LIMIT_EXCEEDED,
    THROTTLE_EXHAUSTED,
)

# Keys a record carries beside those of SPEC section 5, when it cannot carry everything
# (record_codec.py, records.py): the original invocation's msgpack bytes in base64 when
# 'invocation' cannot hold it; what was replaced by a readable rendering, and why; the
# size of an original message of which the record keeps only the start.
INVOCATION_BASE64 = "invocationBase64"
CONFIG_VERSION = "configVersion"  # in requestContext: the live configuration's version
ENCODING_ERROR = "encodingError"
INVOCATION_BYTES = "invocationBytes"

# functionError values of a record's responseContext.
HANDLED = "HandledInvocationError"
UNHANDLED = "UnhandledInvocationError"
TIMEOUT = "TimeoutError"

# W3C trace context (SPEC section 12) travels in 'meta' under the names of its HTTP headers:
# any producer that can write a header can start or continue the trace (tracing.py).
META_TRACEPARENT = "traceparent"
META_TRACESTATE = "tracestate"

_PUBLIC_KEYS = frozenset(
    {"v", "id", "fn", "payload", "created_at", "delay", "attempt", "task", "meta"}
)
# Added by the service, never by a producer: a due time (ms), for a synchronous call
# the time (ms) after which its caller no longer waits for the reply, and the mark of a
# replay from the failure queue (a task that failed may run again; one that succeeded never).
_INTERNAL_KEYS = frozenset({"due_at", "reply_by", "replay"})
_KNOWN_KEYS = _PUBLIC_KEYS | _INTERNAL_KEYS
# The service's own throttle state travels in 'meta', under these keys, as decimal text:
# how many throttles the invocation has had, and when the first came (ms). Not as keys of
# their own: a worker of an earlier release refuses an envelope with a key it does not
# know, while it carries meta through its retries unread, so an envelope a newer worker
# throttled still runs on an older one. Handlers never see them in context.meta.
META_THROTTLES = "asyncinvoke-throttles"
META_THROTTLED_SINCE = "asyncinvoke-throttled-since"
_THROTTLE_META = (META_THROTTLES, META_THROTTLED_SINCE)


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
    throttles: int = 0  # internal (in meta): throttled attempts so far; they are no attempts
    throttled_since: int | None = None  # internal (in meta): the first throttle (ms)

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
        meta = self._wire_meta()
        if meta:
            wire["meta"] = meta
        if self.due_at is not None:
            wire["due_at"] = self.due_at
        if self.reply_by is not None:
            wire["reply_by"] = self.reply_by
        if self.replay:
            wire["replay"] = True
        return wire

    def _wire_meta(self) -> dict[str, str] | None:
        if not self.throttles:
            return self.meta
        meta = dict(self.meta or {})
        meta[META_THROTTLES] = str(self.throttles)
        if self.throttled_since is not None:
            meta[META_THROTTLED_SINCE] = str(self.throttled_since)
        return meta

    def for_replay(self) -> dict[str, Any]:
        """The envelope as a producer sent it: attempt count and internal keys dropped."""
        wire = self.to_wire()
        if self.meta:
            wire["meta"] = self.meta  # without the throttle state: a replay starts afresh
        else:
            wire.pop("meta", None)
        wire.pop("attempt", None)
        wire.pop("due_at", None)
        wire.pop("reply_by", None)
        wire.pop("replay", None)
        return wire


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]


def unpack(body: bytes | bytearray | memoryview) -> Any:
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
    meta, throttles, throttled_since = _throttle_state(meta, data)
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
        throttles=throttles,
        throttled_since=throttled_since,
    )


def _throttle_state(
    meta: dict[str, str] | None, data: dict[str, Any]
) -> tuple[dict[str, str] | None, int, int | None]:
    """The caller's meta without the service's throttle keys, and the throttle state."""
    if meta is None or not any(key in meta for key in _THROTTLE_META):
        return meta, 0, None
    values: list[int | None] = []
    for key, high in ((META_THROTTLES, MAX_THROTTLES), (META_THROTTLED_SINCE, 2**63 - 1)):
        text = meta.get(key)
        if text is not None and not (text.isascii() and text.isdigit() and int(text) <= high):
            raise InvalidMessage(
                f"meta key {key!r} is the service's own and must be a whole number up to "
                f"{high}, got {text[:40]!r}; a producer leaves keys starting "
                "'asyncinvoke-' out of meta",
                partial=data,
            )
        values.append(None if text is None else int(text))
    rest = {key: value for key, value in meta.items() if key not in _THROTTLE_META}
    return rest or None, values[0] or 0, values[1]


# -- what an attempt produced, and how a caller or a record is told ----------------------

RESULT_NOT_SERIALIZABLE = "ResultNotSerializable"


def _shown(value: Any) -> str:
    """A text part of a map another process wrote, as text ('' when absent)."""
    return "" if value is None else str(value)


def _text(value: Any) -> str:
    """A name or id another process wrote: text as it is, bytes decoded, else ''."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else ""


def _whole(value: Any) -> int | None:
    """A count or a time another process wrote (None when absent or not an integer)."""
    return value if type(value) is int else None


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error as records and sync replies carry it: errorType, errorMessage, stackTrace."""

    error_type: str
    message: str
    stack_trace: tuple[str, ...] = ()

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        return cls(type(exc).__name__, str(exc), tuple(traceback.format_exception(exc)))

    @classmethod
    def result_not_serializable(cls, message: str) -> ErrorInfo:
        """A result that cannot travel (msgpack, or JSON at the gateway): never retried."""
        return cls(RESULT_NOT_SERIALIZABLE, message)

    def summary(self) -> str:
        return f"{self.error_type}: {self.message}"

    def to_wire(self) -> dict[str, Any]:
        return {
            "errorType": self.error_type,
            "errorMessage": self.message,
            "stackTrace": list(self.stack_trace),
        }

    @classmethod
    def from_wire(cls, data: Any) -> ErrorInfo | None:
        """The error in a map another process wrote; None when it is no error map (one
        with neither errorType nor errorMessage). A part that is missing reads as ''."""
        if not isinstance(data, dict) or ("errorType" not in data and "errorMessage" not in data):
            return None
        trace = data.get("stackTrace")
        return cls(
            _shown(data.get("errorType")),
            _shown(data.get("errorMessage")),
            tuple(map(str, trace)) if isinstance(trace, list) else (),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt produced."""

    ok: bool
    result: Any = None
    error: ErrorInfo | None = None
    function_error: str = ""  # "" | HANDLED | UNHANDLED | TIMEOUT
    status_code: int = 200
    retryable: bool = True
    duration_ms: float = 0.0
    # The function was busy (HTTP 429/503, no connection, ``Throttled``): retried on the
    # throttle budget, not on max_retries; not before ``retry_after_ms`` when it said so.
    throttled: bool = False
    retry_after_ms: int | None = None


# -- synchronous replies -----------------------------------------------------------------
# A synchronous call is an envelope published with AMQP reply_to (direct reply-to) and a
# correlation_id; the worker that runs it answers with one reply map and no retries.


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a synchronous call."""

    ok: bool
    result: Any = None
    error: ErrorInfo | None = None
    function_error: str = ""
    status_code: int = 200

    @classmethod
    def of(cls, outcome: Outcome) -> Reply:
        return cls(
            ok=outcome.ok,
            result=outcome.result,
            error=outcome.error,
            function_error=outcome.function_error,
            status_code=outcome.status_code,
        )

    def to_wire(self) -> dict[str, Any]:
        error = None if self.ok or self.error is None else self.error.to_wire()
        return {
            "v": VERSION,
            "ok": self.ok,
            "result": self.result if self.ok else None,
            "error": error,
            "functionError": self.function_error,
            "statusCode": self.status_code,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Reply:
        """A reply as a worker sent it; a part that is missing reads as a failure's."""
        return cls(
            ok=bool(data.get("ok")),
            result=data.get("result"),
            error=ErrorInfo.from_wire(data.get("error")),
            function_error=str(data.get("functionError") or ""),
            status_code=int(data.get("statusCode") or 500),
        )


# -- records (SPEC section 5) ------------------------------------------------------------

# The parts of a record that carry values from users (record_codec.py gives them up).
REQUEST_PAYLOAD = "requestPayload"
RESPONSE_PAYLOAD = "responsePayload"
INVOCATION = "invocation"
DELIVERY_ERROR = "deliveryError"
REQUEST_CONTEXT = "requestContext"


@dataclass(frozen=True, slots=True)
class DeliveryError:
    """Why a record is in the failure queue and not at its destination."""

    destination: str
    error: str

    def to_wire(self) -> dict[str, Any]:
        return {"destination": self.destination, "error": self.error}

    @classmethod
    def from_wire(cls, data: Any) -> DeliveryError | None:
        if not isinstance(data, dict):
            return None
        return cls(_shown(data.get("destination")), _shown(data.get("error")))


@dataclass(frozen=True, slots=True)
class Record:
    """A destination record, shaped like FC / Lambda destination records.

    The service writes every part. A record read back may come from anyone who can
    publish to ``{ns}.failed``: there a name that is missing or not text reads as '',
    a count or a time as None.
    """

    request_id: str
    function: str
    condition: str
    attempts: int | None  # approximateInvokeCount
    request_payload: Any
    status_code: int | None
    function_error: str  # "" | HANDLED | UNHANDLED | TIMEOUT
    response: Any  # the result; for a failure its ErrorInfo (a text when degraded)
    invocation: Any  # the original envelope's map, for replay (bytes: undecodable)
    timestamp: int | None
    # When the record cannot carry everything (see INVOCATION_BASE64 and the others).
    invocation_base64: str | None = None
    invocation_bytes: int | None = None
    delivery_error: DeliveryError | None = None
    encoding_error: str | None = None
    # The live configuration's version the attempt ran under (0: the functions file alone);
    # None for a record no attempt made (invalid, unknown function, poison).
    config_version: int | None = None

    @property
    def error(self) -> ErrorInfo | None:
        return self.response if isinstance(self.response, ErrorInfo) else None

    @property
    def error_message(self) -> str:
        """Why it failed ('' for a record without an error)."""
        return self.response.message if isinstance(self.response, ErrorInfo) else ""

    def to_wire(self) -> dict[str, Any]:
        response = self.response
        wire: dict[str, Any] = {
            "v": VERSION,
            "timestamp": self.timestamp,
            REQUEST_CONTEXT: {
                "requestId": self.request_id,
                "functionName": self.function,
                "condition": self.condition,
                "approximateInvokeCount": self.attempts,
            },
            REQUEST_PAYLOAD: self.request_payload,
            "responseContext": {
                "statusCode": self.status_code,
                "functionError": self.function_error,
            },
            RESPONSE_PAYLOAD: response.to_wire() if isinstance(response, ErrorInfo) else response,
            INVOCATION: self.invocation,
        }
        if self.invocation_base64 is not None:
            wire[INVOCATION_BASE64] = self.invocation_base64
        if self.invocation_bytes is not None:
            wire[INVOCATION_BYTES] = self.invocation_bytes
        if self.delivery_error is not None:
            wire[DELIVERY_ERROR] = self.delivery_error.to_wire()
        if self.encoding_error is not None:
            wire[ENCODING_ERROR] = self.encoding_error
        if self.config_version is not None:
            wire[REQUEST_CONTEXT][CONFIG_VERSION] = self.config_version
        return wire

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Record:
        """Read a record's map, whoever wrote it (see the class doc): never raises."""
        context = data.get(REQUEST_CONTEXT)
        if not isinstance(context, dict):
            context = {}
        response_context = data.get("responseContext")
        if not isinstance(response_context, dict):
            response_context = {}
        condition = _text(context.get("condition"))
        response = data.get(RESPONSE_PAYLOAD)
        if condition != SUCCESS:
            response = ErrorInfo.from_wire(response) or response
        carried = data.get(INVOCATION_BASE64)
        kept = data.get(INVOCATION_BYTES)
        encoding_error = data.get(ENCODING_ERROR)
        return cls(
            request_id=_text(context.get("requestId")),
            function=_text(context.get("functionName")),
            condition=condition,
            attempts=_whole(context.get("approximateInvokeCount")),
            request_payload=data.get(REQUEST_PAYLOAD),
            status_code=_whole(response_context.get("statusCode")),
            function_error=_text(response_context.get("functionError")),
            response=response,
            invocation=data.get(INVOCATION),
            timestamp=_whole(data.get("timestamp")),
            invocation_base64=carried if isinstance(carried, str) else None,
            invocation_bytes=kept if isinstance(kept, int) else None,
            delivery_error=DeliveryError.from_wire(data.get(DELIVERY_ERROR)),
            encoding_error=encoding_error if isinstance(encoding_error, str) else None,
            config_version=_whole(context.get(CONFIG_VERSION)),
        )


def is_record(value: Any) -> bool:
    """Whether a decoded value has the shape of a record, to be read or shown as one."""
    return isinstance(value, dict) and REQUEST_CONTEXT in value


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
