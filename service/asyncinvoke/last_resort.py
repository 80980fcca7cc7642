"""The last resort of the system queues' consumers ({ns}.dead, {ns}.unrouted).

Each of their messages becomes a record. If writing that record fails, the delivery
goes back to its queue and is tried again a second later (``Worker._settle_failed``).
A failure that repeats is no passing trouble: without an end, the message would
circle forever and, with a few dozen like it, hold the consumer's whole prefetch.
So after ``TRIES`` failed tries of one message, a minimal record that always encodes
(``records.last_resort``: ids, reason, the message in base64) stands in for the
record, and the message is acknowledged once it is confirmed.

Tries are counted here, in memory, by a digest of the message: the broker's
``x-delivery-count`` does not count a ``basic.nack`` from RabbitMQ 4.3, and the
message has no id of its own that a producer could not reuse. A worker restart
starts the count again, which bounds the number of tries all the same. The count of a
message that failed and then went through is left to age out (``REMEMBERED``): the
success path of these consumers pays nothing for this.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

from asyncinvoke import clock, contract, record_codec, records
from asyncinvoke.consumer import Message
from asyncinvoke.destinations import Destinations
from asyncinvoke.observability import get_logger

TRIES = 5
REMEMBERED = 10_000  # messages whose failed tries are counted; the oldest are forgotten
# The part of the message a last-resort record keeps: room for base64 and the rest.
KEPT_BODY_BYTES = record_codec.RECORD_MAX_BYTES // 2

log = get_logger(component="worker")


def _key(message: Message) -> bytes:
    digest = hashlib.blake2b(message.body, digest_size=16)
    digest.update((message.message_id or "").encode("utf-8", "backslashreplace"))
    return digest.digest()


def _ids(body: bytes) -> tuple[Any, Any]:
    """The invocation id and function the body names, if it can be read at all."""
    try:
        data = contract.unpack(body)
    except Exception:
        return None, None
    return (data.get("id"), data.get("fn")) if isinstance(data, dict) else (None, None)


class LastResort:
    def __init__(self, destinations: Destinations, tries: int = TRIES):
        self.destinations = destinations
        self.tries = tries
        self._failed: OrderedDict[bytes, int] = OrderedDict()

    def failed(self, message: Message) -> bool:
        """Note a failed try; whether it was the last one allowed."""
        key = _key(message)
        count = self._failed.pop(key, 0) + 1
        self._failed[key] = count
        if len(self._failed) > REMEMBERED:
            self._failed.popitem(last=False)
        return count >= self.tries

    async def write(self, message: Message, condition: str, error: BaseException) -> None:
        """Send the minimal record of ``message`` to the failure queue, confirmed."""
        request_id, function = _ids(message.body)
        record = records.last_resort(
            message.body,
            condition=condition,
            reason=f"{type(error).__name__}: {error} (after {self.tries} tries)",
            request_id=request_id if request_id is not None else message.message_id,
            function=function if function is not None else message.routing_key,
            now_ms=clock.now_ms(),
            max_body_bytes=KEPT_BODY_BYTES,
        )
        await self.destinations.to_failed(record)
        self._failed.pop(_key(message), None)
        log.error(
            "last_resort_record",
            invocation_id=record["requestContext"]["requestId"],
            function=record["requestContext"]["functionName"],
            condition=condition,
            error=str(error)[:500],  # the log line escapes what JSON cannot take
        )
