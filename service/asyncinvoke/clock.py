"""The one clock and the one id maker.

Times on the wire, in records and in the task store are wall-clock milliseconds since
the epoch (``now_ms``); invocation ids are ``i`` and 32 hex digits (``new_id``).
"""

from __future__ import annotations

import time
from uuid import uuid4


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_id() -> str:
    return "i" + uuid4().hex
