"""Source messages → CloudEvents 1.0 (JSON format), and batches of them. Pure.

One invocation carries one batch: its event is a JSON list of CloudEvents. A body that
parses as JSON is the event's ``data``; any other body (binary, broken JSON) is still
delivered, base64-encoded in ``data_base64`` as CloudEvents' JSON format says binary data
travels. The AMQP properties and the delivery's exchange, routing key and redelivered flag
are extension attributes (``amqp…``, lower-case letters and digits as CloudEvents asks);
``content_type`` is ``datacontenttype`` and ``timestamp`` is ``time``.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson

SPEC_VERSION = "1.0"
EVENT_TYPE = "amqp:Queue:SendMessage"
# Bytes an envelope adds around its payload (keys, id, times), with room to spare.
ENVELOPE_OVERHEAD = 512
_EXTENSIONS = {
    "message_id": "amqpmessageid",
    "correlation_id": "amqpcorrelationid",
    "reply_to": "amqpreplyto",
    "expiration": "amqpexpiration",
    "type": "amqptype",
    "app_id": "amqpappid",
    "user_id": "amqpuserid",
    "priority": "amqppriority",
    "delivery_mode": "amqpdeliverymode",
    "content_encoding": "amqpcontentencoding",
}


@dataclass(frozen=True, slots=True)
class SourceMessage:
    """What the consumer read, as plain values."""

    body: bytes
    properties: Mapping[str, Any] = field(default_factory=dict)
    exchange: str = ""
    routing_key: str = ""
    redelivered: bool = False


def cloud_event(message: SourceMessage, source: str) -> dict[str, Any]:
    props = message.properties
    message_id = props.get("message_id")
    event: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": str(message_id) if message_id else uuid.uuid4().hex,
        "source": source,
        "type": EVENT_TYPE,
    }
    try:
        event["data"] = orjson.loads(message.body)
        event["datacontenttype"] = "application/json"
    except orjson.JSONDecodeError:
        event["data_base64"] = base64.b64encode(message.body).decode()
        event["datacontenttype"] = props.get("content_type") or "application/octet-stream"
    timestamp = props.get("timestamp")
    if isinstance(timestamp, datetime):
        stamp = timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)
        event["time"] = stamp.astimezone(UTC).isoformat().replace("+00:00", "Z")
    for key, name in _EXTENSIONS.items():
        value = props.get(key)
        if value is not None and value != "":
            event[name] = value if isinstance(value, int | str) else str(value)
    headers = props.get("headers")
    if headers:
        # Extension values are scalars: the headers table travels as a JSON string.
        event["amqpheaders"] = orjson.dumps(headers, default=str).decode()
    event["amqpexchange"] = message.exchange
    event["amqproutingkey"] = message.routing_key
    event["amqpredelivered"] = message.redelivered
    return event


def encoded_events(messages: Iterable[SourceMessage], source: str) -> list[bytes]:
    return [orjson.dumps(cloud_event(message, source)) for message in messages]


def batches(events: list[bytes], max_payload_bytes: int) -> list[bytes]:
    """The events as JSON lists, one per invocation: all in one, unless that would pass the
    invocation size limit; then as few lists as fit (an event too big alone goes alone,
    to be refused as too large rather than lost)."""
    limit = max_payload_bytes - ENVELOPE_OVERHEAD
    lists: list[bytes] = []
    current: list[bytes] = []
    size = 2
    for event in events:
        if current and size + len(event) + 1 > limit:
            lists.append(b"[" + b",".join(current) + b"]")
            current, size = [], 2
        current.append(event)
        size += len(event) + 1
    if current:
        lists.append(b"[" + b",".join(current) + b"]")
    return lists


def source_name(vhost: str | None, queue: str) -> str:
    """The CloudEvents ``source``: the vhost and queue, each percent-encoded (the default
    vhost is ``%2F``, as in RabbitMQ's HTTP API), never the broker's URL (a secret)."""
    return f"/rabbitmq/{quote(vhost or '/', safe='')}/{quote(queue, safe='')}"


def batch_is_full(count: int, batch_size: int) -> bool:
    return count >= batch_size


def batch_deadline(first_at: float, window_s: float) -> float:
    """When a batch that began at ``first_at`` is sent, however few it holds."""
    return first_at + window_s
