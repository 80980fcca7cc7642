"""Text that every encoder on the way takes.

A handler's error text can hold what no UTF-8 encoder takes (a lone surrogate, as
``bytes.decode(errors="surrogateescape")`` leaves), and what PostgreSQL refuses in text
and JSONB (NUL). Such text is made encodable before it reaches a task store
(``encodable``, tasks/store.py), and escaped where it is shown (``escape_surrogates``:
JSON log lines, records): a write or a log line that raises would make an innocent
attempt look like a message that kills its worker.
"""

from __future__ import annotations

import re
from typing import Any

REPLACEMENT_CHARACTER = "\ufffd"
_UNENCODABLE = re.compile("[\x00\ud800-\udfff]")


def encodable(value: Any) -> Any:
    """``value`` with every string in it (dict keys included, at any depth) encodable:
    a NUL or a lone surrogate becomes U+FFFD, a surrogate pair the character it stands
    for. Anything else is returned as it is."""
    if isinstance(value, str):
        if _UNENCODABLE.search(value) is None:
            return value
        # UTF-16 joins the pairs and replaces the lone halves; NUL has to go by hand.
        joined = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return joined.replace("\x00", REPLACEMENT_CHARACTER)
    if isinstance(value, dict):
        return {encodable(key): encodable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(encodable(item) for item in value)
    return value


def escape_surrogates(value: Any) -> Any:
    """``value`` with lone surrogates in its texts (dict keys included, at any depth)
    escaped as ``\\udc80``: kept readable, where ``encodable`` replaces them."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {escape_surrogates(key): escape_surrogates(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [escape_surrogates(item) for item in value]
    return value


def text_or_none(value: Any) -> str | None:
    """A header or record field as text: bytes decoded (undecodable bytes replaced), a
    string as it is, anything else None."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None
