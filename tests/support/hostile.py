"""Handlers that produce what encoders refuse (tests of record_codec and logging)."""

from __future__ import annotations

from typing import Any

from asyncinvoke import Context


async def surrogate_error(event: Any, context: Context) -> None:
    """Fails with a text no UTF-8 encoder takes, as a lenient decoder's error can."""
    raise RuntimeError("bad text \udc80 from a decoder")


async def bytes_key_result(event: Any, context: Context) -> dict[Any, Any]:
    """Returns a map msgpack carries and JSON cannot."""
    return {b"k": 1, "text": "v"}
