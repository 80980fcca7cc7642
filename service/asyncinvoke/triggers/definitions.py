"""Trigger definitions: frozen values, read from FC's JSON and the functions file, written
back as FC's JSON (with the source URL redacted) and as stored records (with it). Pure.

Two kinds, as FC names them:

- ``timer``: ``triggerConfig`` ``{"cronExpression", "payload", "enable"}``.
- ``rabbitmq``: the source queue, optionally another broker (``url``, a secret) or vhost,
  ``batchSize`` (1-1000) and ``batchWindow`` (0-15 s). Read from a flat
  ``{"queueName", "url", "virtualHostName", "batchSize", "batchWindow", "enable"}`` or
  from FC's EventBridge shape (``eventSourceConfig.eventSourceParameters.
  sourceRabbitMQParameters`` and ``runOptions.batchWindow``), which is also the shape
  written back.

Every error is an ``InvalidTrigger`` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import orjson

from asyncinvoke.errors import InvalidTrigger
from asyncinvoke.settings import redact_url
from asyncinvoke.triggers import cron

TIMER, RABBITMQ = "timer", "rabbitmq"
KINDS = (TIMER, RABBITMQ)
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,127}$")
QUEUE_RE = re.compile(r"^.{1,255}$", re.DOTALL)
MAX_BATCH_SIZE = 1000
MAX_BATCH_WINDOW_S = 15.0
MAX_PAYLOAD_CHARS = 4096


@dataclass(frozen=True, slots=True)
class TimerConfig:
    cron_expression: str
    payload: str = ""
    enable: bool = True

    @property
    def schedule(self) -> cron.Every | cron.Cron:
        return cron.schedule_of(self.cron_expression)

    def to_fc(self) -> dict[str, Any]:
        return {
            "cronExpression": self.cron_expression,
            "payload": self.payload,
            "enable": self.enable,
        }


@dataclass(frozen=True, slots=True)
class SourceConfig:
    queue: str
    # A secret: another broker (None: the worker's own). Kept out of repr, so no log line
    # or error that shows the config can show it.
    url: str | None = field(default=None, repr=False)
    vhost: str | None = None
    batch_size: int = 1
    batch_window_s: float = 0.0
    enable: bool = True

    def source_url(self, default_url: str) -> str:
        """The broker to consume from: ``url`` or the worker's, on ``vhost`` if given."""
        url = (self.url or default_url).split(",")[0].strip()
        if self.vhost is None:
            return url
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path="/" + quote(self.vhost, safe="")))

    def to_fc(self) -> dict[str, Any]:
        source: dict[str, Any] = {"QueueName": self.queue}
        if self.vhost is not None:
            source["VirtualHostName"] = self.vhost
        if self.url is not None:
            source["Url"] = redact_url(self.url)
        return {
            "triggerEnable": self.enable,
            "eventSourceConfig": {
                "eventSourceType": "RabbitMQ",
                "eventSourceParameters": {"sourceRabbitMQParameters": source},
            },
            "runOptions": {
                "batchWindow": {
                    "CountBasedWindow": self.batch_size,
                    "TimeBasedWindow": self.batch_window_s,
                }
            },
        }


@dataclass(frozen=True, slots=True)
class Trigger:
    function: str
    name: str
    kind: str  # TIMER | RABBITMQ
    config: TimerConfig | SourceConfig
    description: str = ""
    created_ms: int = 0
    modified_ms: int = 0
    origin: str = "api"  # "api" (stored) or the functions file's path

    @property
    def key(self) -> tuple[str, str]:
        return (self.function, self.name)

    @property
    def enabled(self) -> bool:
        return self.config.enable

    def to_fc(self, *, status: str = "Ready", reason: str = "") -> dict[str, Any]:
        """FC's Trigger (``triggerConfig`` is a JSON string there), the URL redacted."""
        shown: dict[str, Any] = {
            "triggerName": self.name,
            "triggerType": self.kind,
            "triggerConfig": orjson.dumps(self.config.to_fc()).decode(),
            "triggerId": f"{self.function}/{self.name}",
            "description": self.description,
            "qualifier": "LATEST",
            "createdTime": _iso(self.created_ms),
            "lastModifiedTime": _iso(self.modified_ms),
            "status": status,
        }
        if reason:
            shown["statusReason"] = reason
        return shown

    def to_record(self) -> dict[str, Any]:
        """What the store keeps: everything, the URL included."""
        config = self.config.to_fc()
        if isinstance(self.config, SourceConfig) and self.config.url is not None:
            params = config["eventSourceConfig"]["eventSourceParameters"]
            params["sourceRabbitMQParameters"]["Url"] = self.config.url
        return {
            "function": self.function,
            "name": self.name,
            "type": self.kind,
            "config": config,
            "description": self.description,
            "created_ms": self.created_ms,
            "modified_ms": self.modified_ms,
        }


def from_record(record: Mapping[str, Any]) -> Trigger:
    kind = str(record["type"])
    return Trigger(
        function=str(record["function"]),
        name=str(record["name"]),
        kind=kind,
        config=parse_config(kind, record["config"], str(record["name"])),
        description=str(record.get("description", "")),
        created_ms=int(record.get("created_ms", 0)),
        modified_ms=int(record.get("modified_ms", 0)),
    )


def create(function: str, body: Mapping[str, Any], now_ms: int) -> Trigger:
    """A trigger from FC's CreateTriggerInput."""
    name = body.get("triggerName")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidTrigger(f"must match {NAME_RE.pattern}, got {name!r}", field="triggerName")
    kind = body.get("triggerType")
    if kind not in KINDS:
        raise InvalidTrigger(
            f"must be one of {', '.join(KINDS)}, got {kind!r}", field="triggerType", trigger=name
        )
    config = parse_config(str(kind), _config_object(body.get("triggerConfig"), name), name)
    return Trigger(function, name, str(kind), config, _description(body, name), now_ms, now_ms)


def update(existing: Trigger, body: Mapping[str, Any], now_ms: int) -> Trigger:
    """``existing`` changed by FC's UpdateTriggerInput; what is absent stays. A source URL
    sent back redacted (as GetTrigger shows it) keeps the stored one."""
    changed = existing
    if body.get("triggerConfig") is not None:
        raw = _config_object(body["triggerConfig"], existing.name)
        config = parse_config(existing.kind, raw, existing.name)
        if (
            isinstance(config, SourceConfig)
            and isinstance(existing.config, SourceConfig)
            and existing.config.url is not None
            and config.url == redact_url(existing.config.url)
        ):
            config = replace(config, url=existing.config.url)
        changed = replace(changed, config=config)
    if "description" in body and body["description"] is not None:
        changed = replace(changed, description=_description(body, existing.name))
    return replace(changed, modified_ms=now_ms)


def parse_config(kind: str, raw: Any, name: str) -> TimerConfig | SourceConfig:
    if not isinstance(raw, Mapping):
        raise InvalidTrigger("must be a JSON object", field="triggerConfig", trigger=name)
    return _timer(raw, name) if kind == TIMER else _source(raw, name)


def _timer(raw: Mapping[str, Any], name: str) -> TimerConfig:
    expression = raw.get("cronExpression")
    cron.parse(expression, trigger=name)
    payload = raw.get("payload", "")
    if payload is None:
        payload = ""
    if not isinstance(payload, str) or len(payload) > MAX_PAYLOAD_CHARS:
        raise InvalidTrigger(
            f"must be a string of at most {MAX_PAYLOAD_CHARS} characters",
            field="payload",
            trigger=name,
        )
    return TimerConfig(str(expression), payload, _flag(raw, "enable", name))


def _source(raw: Mapping[str, Any], name: str) -> SourceConfig:
    flat = dict(raw)
    if "eventSourceConfig" in raw or "runOptions" in raw:
        flat = _flatten_event_bridge(raw, name)
    queue = flat.get("queueName")
    if not isinstance(queue, str) or not QUEUE_RE.fullmatch(queue):
        raise InvalidTrigger(
            f"must name the source queue, got {queue!r}", field="queueName", trigger=name
        )
    url = flat.get("url")
    if url is not None and (
        not isinstance(url, str) or not url.startswith(("amqp://", "amqps://"))
    ):
        raise InvalidTrigger("must be an amqp:// or amqps:// URL", field="url", trigger=name)
    vhost = flat.get("virtualHostName")
    if vhost is not None and (not isinstance(vhost, str) or not vhost):
        raise InvalidTrigger(
            f"must be a vhost name, got {vhost!r}", field="virtualHostName", trigger=name
        )
    size = flat.get("batchSize", 1)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_BATCH_SIZE:
        raise InvalidTrigger(
            f"must be an integer from 1 to {MAX_BATCH_SIZE}, got {size!r}",
            field="batchSize",
            trigger=name,
        )
    window = flat.get("batchWindow", 0)
    if (
        isinstance(window, bool)
        or not isinstance(window, int | float)
        or not 0 <= window <= MAX_BATCH_WINDOW_S
    ):
        raise InvalidTrigger(
            f"must be seconds from 0 to {MAX_BATCH_WINDOW_S:g}, got {window!r}",
            field="batchWindow",
            trigger=name,
        )
    enable = _flag(flat, "enable", name)
    return SourceConfig(queue, url, vhost, size, float(window), enable)


def _flatten_event_bridge(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    """FC's EventBridge trigger config → the flat keys."""
    source = raw.get("eventSourceConfig") or {}
    params = (source.get("eventSourceParameters") or {}) if isinstance(source, Mapping) else {}
    rabbit = params.get("sourceRabbitMQParameters") if isinstance(params, Mapping) else None
    if not isinstance(rabbit, Mapping):
        raise InvalidTrigger(
            "needs eventSourceParameters.sourceRabbitMQParameters",
            field="eventSourceConfig",
            trigger=name,
        )
    run = raw.get("runOptions") or {}
    window = (run.get("batchWindow") or {}) if isinstance(run, Mapping) else {}
    flat: dict[str, Any] = {
        "queueName": rabbit.get("QueueName"),
        "enable": raw.get("triggerEnable", True),
    }
    for key, value in (
        ("url", rabbit.get("Url")),
        ("virtualHostName", rabbit.get("VirtualHostName")),
        ("batchSize", window.get("CountBasedWindow")),
        ("batchWindow", window.get("TimeBasedWindow")),
    ):
        if value is not None:
            flat[key] = value
    return flat


def _config_object(raw: Any, name: str) -> Any:
    """``triggerConfig`` is a JSON string in FC's API; an object is taken as well."""
    if isinstance(raw, str):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidTrigger(
                f"is not valid JSON ({exc})", field="triggerConfig", trigger=name
            ) from None
    return raw


def _flag(raw: Mapping[str, Any], key: str, name: str) -> bool:
    value = raw.get(key, True)
    if not isinstance(value, bool):
        raise InvalidTrigger(f"must be true or false, got {value!r}", field=key, trigger=name)
    return value


def _description(body: Mapping[str, Any], name: str) -> str:
    value = body.get("description") or ""
    if not isinstance(value, str) or len(value) > 256:
        raise InvalidTrigger(
            "must be a string of at most 256 characters", field="description", trigger=name
        )
    return value


def _iso(ms: int) -> str:
    return cron.utc_iso(ms)


# -- the functions file: [[functions.NAME.triggers]] ------------------------------------------

_FILE_KEYS = {
    TIMER: {"name", "type", "cron", "payload", "enable", "description"},
    RABBITMQ: {
        "name",
        "type",
        "queue",
        "url",
        "vhost",
        "batch_size",
        "batch_window",
        "enable",
        "description",
    },
}
_FILE_TO_FC = {
    "cron": "cronExpression",
    "queue": "queueName",
    "vhost": "virtualHostName",
    "batch_size": "batchSize",
    "batch_window": "batchWindow",
}


def from_table(function: str, table: Mapping[str, Any], origin: str) -> Trigger:
    """One ``[[functions.NAME.triggers]]`` table; errors name the file's key."""
    name = table.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidTrigger(f"must match {NAME_RE.pattern}, got {name!r}", field="name")
    kind = table.get("type")
    if kind not in KINDS:
        raise InvalidTrigger(
            f"must be one of {', '.join(KINDS)}, got {kind!r}", field="type", trigger=name
        )
    unknown = set(table) - _FILE_KEYS[str(kind)]
    if unknown:
        raise InvalidTrigger(
            f"unknown; known keys: {', '.join(sorted(_FILE_KEYS[str(kind)]))}",
            field=sorted(unknown)[0],
            trigger=name,
        )
    raw = {
        _FILE_TO_FC.get(key, key): value
        for key, value in table.items()
        if key not in ("name", "type", "description")
    }
    try:
        config = parse_config(str(kind), raw, name)
    except InvalidTrigger as exc:
        back = {fc: key for key, fc in _FILE_TO_FC.items()}
        field = back.get(exc.field, exc.field)
        raise InvalidTrigger(exc.reason, field=field, trigger=name) from None
    return Trigger(function, name, str(kind), config, _description(table, name), origin=origin)
