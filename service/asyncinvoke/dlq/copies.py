"""Duplicate failure records: which records are copies of one failure (pure).

Delivery is at least once, and a failure record is a follow-up publish like any other:
when the connection drops between the record's publish and the original delivery's
ack, the delivery comes back and its failure is recorded again. The queue then holds
two records of one failure, made moments apart. The tool shows, counts and replays
each failure once (docs/dlq.md, "Duplicate records").

Two records are copies of one failure when their ``requestContext`` has the same

- ``requestId`` (the invocation),
- ``functionName``,
- ``condition`` (how it ended),
- ``approximateInvokeCount`` (after how many attempts).

The record's ``timestamp``, error text and stack trace are left out: a copy is made
again, at another moment, and may say it differently. A record without a
``requestId`` (not a record at all, say) is never a copy of anything.

The key is kept as a 128-bit digest, so that remembering every failure of a large
queue costs about 100 bytes each; a collision, which would take a record for a copy
of another, is out of reach (2**-64 for billions of records).
"""

from __future__ import annotations

import hashlib
from typing import Any

from asyncinvoke import contract

FailureKey = bytes  # the digest of (requestId, functionName, condition, attempts)
DIGEST_BYTES = 16


def failure_key(record: Any) -> FailureKey | None:
    """The failure this record is about, or None when it has no ``requestId``."""
    context = record.get("requestContext") if isinstance(record, dict) else None
    if not isinstance(context, dict):
        return None
    request_id = context.get("requestId")
    if not isinstance(request_id, str) or not request_id:
        return None
    # Only values of the record's own types enter the key (anything else counts as
    # absent): msgpack then gives one encoding for one key.
    parts = [
        request_id,
        _text(context.get("functionName")),
        _text(context.get("condition")),
        _count(context.get("approximateInvokeCount")),
    ]
    return hashlib.blake2b(contract.pack(parts), digest_size=DIGEST_BYTES).digest()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: Any) -> int | None:
    return value if type(value) is int else None


class Copies:
    """The failures seen so far in one command, to tell first copies from the rest."""

    def __init__(self) -> None:
        self._seen: set[FailureKey] = set()
        self.duplicates = 0  # records that were a copy of a failure seen before

    def first(self, key: FailureKey | None) -> bool:
        """Whether a record with this key is the first of its failure (and note it)."""
        if key is None:
            return True
        if key in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(key)
        return True

    def __contains__(self, key: FailureKey | None) -> bool:
        return key is not None and key in self._seen
