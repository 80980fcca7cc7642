"""Values and handlers that encoders refuse: msgpack carries them, JSON or UTF-8 does not.

Shared by the tests of record_codec, of the worker's records and of the tools that
show records and tasks.
"""

from __future__ import annotations

from typing import Any

from asyncinvoke import Context


def nested(depth: int) -> Any:
    """A list nested ``depth`` deep (orjson stops at 254 levels, msgpack at 1024)."""
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


# Valid msgpack any producer may send, which JSON cannot carry.
PAYLOADS: dict[str, Any] = {"bytes_keys": {b"k": 1, "text": "v"}, "deep": nested(300)}


async def surrogate_error(event: Any, context: Context) -> None:
    """Fails with a text no UTF-8 encoder takes, as a lenient decoder's error can."""
    raise RuntimeError("bad text \udc80 from a decoder")


async def bytes_key_result(event: Any, context: Context) -> dict[Any, Any]:
    """Returns a map msgpack carries and JSON cannot."""
    return {b"k": 1, "text": "v"}


async def huge_int_result(event: Any, context: Context) -> int:
    """Returns an integer msgpack cannot carry (past 64 bits)."""
    return 2**70
