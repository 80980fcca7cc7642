"""Encode a record so that it always goes out, whole when it can be, degraded when not.

msgpack carries more than JSON: map keys that are bytes, nesting deeper than orjson's
limit of 254 levels. An invocation that msgpack accepted can therefore produce a record
that JSON (an HTTP destination, an export) cannot encode, and a handler's result can
make a record too big for the broker. Failing there would fail the delivery, and it
would run again and fail the same way, forever. So such a record is sent degraded:

- each part that cannot be encoded is replaced by a readable rendering (a bounded
  ``repr``), or only has its lone surrogates escaped when they were the trouble;
- while the record is too big, the parts go in turn: the result, the request payload
  (the invocation holds it too), the delivery error, and last the invocation;
- the original invocation, when it must go, travels as its msgpack bytes in base64
  under ``invocationBase64``, which ``asyncinvoke dlq replay`` reads;
- ``encodingError`` says what was replaced and why.

It works on a record's map (``contract.Record.to_wire()``): what it gives up is a
matter of encoded sizes, and the map keeps the order of its keys.

A record that cannot be encoded even then (a bug, not an input) is the caller's to
handle: the worker's last resort writes a minimal record (``records.last_resort``).
"""

from __future__ import annotations

import base64
import contextlib
import reprlib
import sys
from collections.abc import Callable
from typing import Any

from asyncinvoke import contract
from asyncinvoke.text import escape_surrogates

# What an encoder raises on a value it cannot carry: orjson (TypeError, its own
# JSONEncodeError for a key type or a nesting depth), msgpack (TypeError, ValueError for
# nesting, OverflowError for integers past 64 bits), str.encode (UnicodeEncodeError).
ENCODE_ERRORS = (TypeError, ValueError, OverflowError)

# The largest record sent to a queue or an HTTP endpoint: under RabbitMQ 4's default
# max_message_size of 16 MiB (128 MiB on 3.x), with room for the AMQP frame around it.
RECORD_MAX_BYTES = 8 * 1024 * 1024
# A rendering shows the start of a value, enough to recognise it, never all of it.
RENDERING_MAX_CHARS = 4096
# The parts of a record that carry values from users, in the order they are given up.
# The request payload goes before the invocation: the invocation holds it too.
_PARTS = (
    contract.RESPONSE_PAYLOAD,
    contract.REQUEST_PAYLOAD,
    contract.DELIVERY_ERROR,
    contract.INVOCATION,
)

_repr = reprlib.Repr()
_repr.maxlevel = 12
_repr.maxdict = _repr.maxlist = _repr.maxtuple = _repr.maxset = 64
_repr.maxstring = _repr.maxother = 400
_repr.maxlong = 100


def render(value: Any) -> str:
    """A readable, bounded text of any decoded value (never raises, ASCII-safe for
    lone surrogates: ``repr`` escapes them)."""
    text = _repr.repr(value)
    if len(text) > RENDERING_MAX_CHARS:
        return text[:RENDERING_MAX_CHARS] + f"... ({len(text)} characters shown in part)"
    return text


def _size(value: Any, encode: Callable[[Any], bytes]) -> int | None:
    """Encoded length, or None when ``encode`` cannot carry the value."""
    try:
        return len(encode(value))
    except ENCODE_ERRORS:
        return None


def _invocation_bytes(invocation: Any) -> bytes | None:
    if isinstance(invocation, bytes):  # an undecodable message, kept as it came
        return invocation
    try:
        return contract.pack(invocation)
    except ENCODE_ERRORS:
        return None


def degrade(
    record: dict[str, Any], encode: Callable[[Any], bytes], max_bytes: int, problem: str
) -> dict[str, Any]:
    """``record`` with the parts that ``encode`` cannot carry within ``max_bytes`` replaced."""
    degraded = dict(record)
    replaced: list[str] = []
    escaped_parts: list[str] = []
    notes: list[str] = []

    def replace(key: str) -> None:
        value = degraded[key]
        if key == contract.INVOCATION:
            degraded[key] = None
            packed = _invocation_bytes(value)
            if packed is None:
                notes.append("the original invocation could not be kept")
                return
            keep = max(0, (max_bytes // 2) * 3 // 4)  # base64 grows it by a third
            if len(packed) > keep:
                notes.append(f"invocationBase64 keeps the first {keep} of {len(packed)} bytes")
                degraded[contract.INVOCATION_BYTES] = len(packed)
                packed = packed[:keep]
            degraded[contract.INVOCATION_BASE64] = base64.b64encode(packed).decode("ascii")
        else:
            degraded[key] = render(value)
        replaced.append(key)

    for key in _PARTS:  # first whatever cannot be encoded at all
        if key not in degraded or _size(degraded[key], encode) is not None:
            continue
        try:  # enough when only a text was at fault
            escaped = escape_surrogates(degraded[key])
        except RecursionError:  # nested deeper than Python recurses: no text to save
            replace(key)
            continue
        if _size(escaped, encode) is None:
            replace(key)
        else:
            degraded[key] = escaped
            escaped_parts.append(key)
    for key in _PARTS:  # then, while too big, the rest in order
        size = _size(degraded, encode)
        if size is not None and size <= max_bytes:
            break
        if key in degraded and key not in replaced:
            replace(key)
    if replaced:
        notes.insert(0, f"replaced by a rendering: {', '.join(replaced)}")
    if escaped_parts:
        notes.append(f"lone surrogates escaped in: {', '.join(escaped_parts)}")
    if contract.INVOCATION_BASE64 in degraded:
        notes.append(f"the original invocation is in {contract.INVOCATION_BASE64} (msgpack)")
    degraded[contract.ENCODING_ERROR] = "; ".join([problem, *notes])
    return degraded


def encode_record(
    record: dict[str, Any], encode: Callable[[Any], bytes], max_bytes: int = RECORD_MAX_BYTES
) -> bytes:
    """``encode(record)``, or the encoding of its degraded form; raises only on a bug."""
    try:
        body = encode(record)
    except ENCODE_ERRORS as exc:
        problem = f"the record cannot be encoded: {exc}"
    else:
        if len(body) <= max_bytes:
            return body
        problem = f"the record is {len(body)} bytes, over the limit of {max_bytes}"
    return encode(degrade(record, encode, max_bytes, problem))


def pack_record(record: dict[str, Any], max_bytes: int = RECORD_MAX_BYTES) -> bytes:
    """A record as msgpack, for a queue."""
    return encode_record(record, contract.pack, max_bytes)


def record_json(record: dict[str, Any], max_bytes: int = RECORD_MAX_BYTES) -> bytes:
    """A record as JSON, for an HTTP destination or an export."""
    return encode_record(record, contract.to_json, max_bytes)


def json_or_rendering(value: Any) -> bytes:
    """JSON of any value for people (task views, ``dlq show``): a record that JSON cannot
    carry whole is shown degraded, any other such value as a JSON string holding a
    rendering. Never raises."""
    try:
        return contract.to_json(value)
    except ENCODE_ERRORS as exc:
        problem = f"not JSON: {exc}"
    if contract.is_record(value):
        degraded = degrade(value, contract.to_json, sys.maxsize, problem)
        with contextlib.suppress(*ENCODE_ERRORS):
            return contract.to_json(degraded)
    return contract.to_json(f"({problem}) {render(value)}")
