"""Environment and flags → one frozen ``Settings``, built once at start."""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from asyncinvoke.errors import ConfigError
from asyncinvoke.ladder import MAX_DELAY_S as LADDER_REACH_S

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_NAMESPACE = "asyncinvoke"
DEFAULT_CONFIG = "functions.toml"
DEFAULT_TASK_STORE = "sqlite:///./asyncinvoke-tasks.db"
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
DEFAULT_MAX_DELAY_S = 3600
DEFAULT_SHUTDOWN_GRACE_S = 30.0
DEFAULT_PUBLISH_TIMEOUT_S = 30.0
DEFAULT_TASK_RETENTION_S = 7 * 86400
DEFAULT_TASK_RESULT_MAX_BYTES = 64 * 1024
# RabbitMQ's own default consumer_timeout (3.10.8: 1,800,000 ms). The worker cannot read
# the broker's value, so it is told it, and refuses functions that could outlast it.
DEFAULT_BROKER_CONSUMER_TIMEOUT_S = 1800.0
# Rides out a database restart or a failover; a delivery waits that long for the task
# store before it goes back to its queue (as a new message, not as a suspect).
DEFAULT_TASK_STORE_RETRY_S = 30.0

DEFAULT_TRIGGER_CATCH_UP_S = 60.0

EVENT_LOOPS = ("asyncio", "uvloop")

NAMESPACE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Settings:
    amqp_url: str = DEFAULT_AMQP_URL  # one URL, or a comma-separated list (see nodes.py)
    namespace: str = DEFAULT_NAMESPACE
    config_path: str = DEFAULT_CONFIG
    task_store: str = DEFAULT_TASK_STORE
    log_format: str = "json"
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_delay_s: int = DEFAULT_MAX_DELAY_S
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    publish_timeout_s: float = DEFAULT_PUBLISH_TIMEOUT_S
    task_retention_s: float = DEFAULT_TASK_RETENTION_S
    task_result_max_bytes: int = DEFAULT_TASK_RESULT_MAX_BYTES
    task_store_retry_s: float = DEFAULT_TASK_STORE_RETRY_S
    event_loop: str = "asyncio"
    broker_consumer_timeout_s: float = DEFAULT_BROKER_CONSUMER_TIMEOUT_S
    processes: int = 1  # worker processes under one supervisor (supervisor.py)
    # Ticks a new scheduler still fires after a failover, if no older than this (s).
    trigger_catch_up_s: float = DEFAULT_TRIGGER_CATCH_UP_S
    # RabbitMQ's management HTTP API, where the console reads unacknowledged counts;
    # None: derived from amqp_url (console/management.py).
    management_url: str | None = None
    # A worker's deliveries read by frame_filter rather than aiormq's reader
    # (ASYNCINVOKE_FAST_CONSUME=0: aiormq's, the way back should the fast path misbehave).
    fast_consume: bool = True

    def with_overrides(self, **overrides: Any) -> Settings:
        """Flags override the environment: apply those that were given."""
        given = {key: value for key, value in overrides.items() if value is not None}
        return replace(self, **given) if given else self


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range {low}..{high}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}={raw!r} must be a finite number, not negative")
    return value


def from_env(env: Mapping[str, str] | None = None, *, tty: bool = False) -> Settings:
    """Read ``ASYNCINVOKE_*`` variables; anything absent keeps its default."""
    env = os.environ if env is None else env
    from asyncinvoke.nodes import parse_nodes

    amqp_url = env.get("ASYNCINVOKE_AMQP_URL") or DEFAULT_AMQP_URL
    parse_nodes(amqp_url)  # a bad list is refused at start, before anything connects

    namespace = env.get("ASYNCINVOKE_NAMESPACE") or DEFAULT_NAMESPACE
    if not NAMESPACE_RE.fullmatch(namespace):
        raise ConfigError(f"ASYNCINVOKE_NAMESPACE={namespace!r} must match {NAMESPACE_RE.pattern}")
    log_format = env.get("ASYNCINVOKE_LOG_FORMAT") or ("console" if tty else "json")
    if log_format not in ("json", "console"):
        raise ConfigError(f"ASYNCINVOKE_LOG_FORMAT={log_format!r}: use 'json' or 'console'")
    event_loop = env.get("ASYNCINVOKE_EVENT_LOOP") or "asyncio"
    if event_loop not in EVENT_LOOPS:
        raise ConfigError(f"ASYNCINVOKE_EVENT_LOOP={event_loop!r}: use 'asyncio' or 'uvloop'")
    consumer_timeout_s = _float(
        env, "ASYNCINVOKE_BROKER_CONSUMER_TIMEOUT", DEFAULT_BROKER_CONSUMER_TIMEOUT_S
    )
    if consumer_timeout_s == 0:
        raise ConfigError(
            "ASYNCINVOKE_BROKER_CONSUMER_TIMEOUT=0: give the broker's consumer_timeout in "
            "seconds (its consumer_timeout in rabbitmq.conf divided by 1000)"
        )
    return Settings(
        amqp_url=amqp_url,
        namespace=namespace,
        config_path=env.get("ASYNCINVOKE_CONFIG") or DEFAULT_CONFIG,
        task_store=env.get("ASYNCINVOKE_TASK_STORE") or DEFAULT_TASK_STORE,
        log_format=log_format,
        max_payload_bytes=_int(
            env, "ASYNCINVOKE_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES, 1, 64 * 1024 * 1024
        ),
        max_delay_s=_int(env, "ASYNCINVOKE_MAX_DELAY", DEFAULT_MAX_DELAY_S, 0, LADDER_REACH_S),
        shutdown_grace_s=_float(env, "ASYNCINVOKE_SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE_S),
        task_retention_s=_float(env, "ASYNCINVOKE_TASK_RETENTION", DEFAULT_TASK_RETENTION_S),
        task_result_max_bytes=_int(
            env, "ASYNCINVOKE_TASK_RESULT_MAX_BYTES", DEFAULT_TASK_RESULT_MAX_BYTES,
            0, 64 * 1024 * 1024,
        ),
        task_store_retry_s=_float(
            env, "ASYNCINVOKE_TASK_STORE_RETRY", DEFAULT_TASK_STORE_RETRY_S
        ),
        event_loop=event_loop,
        broker_consumer_timeout_s=consumer_timeout_s,
        processes=parse_processes(env.get("ASYNCINVOKE_PROCESSES") or "1"),
        trigger_catch_up_s=_float(
            env, "ASYNCINVOKE_TRIGGER_CATCH_UP", DEFAULT_TRIGGER_CATCH_UP_S
        ),
        management_url=_management_url(env),
        fast_consume=_switch(env, "ASYNCINVOKE_FAST_CONSUME", True),
    )


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: use 1 (on) or 0 (off)")


def _management_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("ASYNCINVOKE_MANAGEMENT_URL") or None
    if raw is not None and urlsplit(raw).scheme not in ("http", "https"):
        raise ConfigError(
            f"ASYNCINVOKE_MANAGEMENT_URL={redact_url(raw)!r}: give the management API's "
            "http(s) URL, such as http://user:password@rabbitmq:15672/"
        )
    return raw


MAX_PROCESSES = 256


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask), which is what ``auto`` uses."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_processes(raw: str, source: str = "ASYNCINVOKE_PROCESSES") -> int:
    """``N`` (1..256) or ``auto`` (the CPU count)."""
    if raw.strip().lower() == "auto":
        return cpu_count()
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{source}={raw!r}: give a number of processes or 'auto'") from None
    if not 1 <= value <= MAX_PROCESSES:
        raise ConfigError(f"{source}={value} is out of range 1..{MAX_PROCESSES}")
    return value


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to run on: None for asyncio's own, or uvloop's (an optional extra)."""
    if event_loop != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        raise ConfigError(
            "ASYNCINVOKE_EVENT_LOOP=uvloop, but uvloop is not installed: "
            "pip install 'asyncinvoke[uvloop]', or unset the variable"
        ) from None
    return uvloop.new_event_loop


def redact_url(url: str) -> str:
    """The URL with its password replaced, for logs and error messages. An HTTP URL's
    user alone (``https://TOKEN@host/``) is a credential too, and is replaced as well."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    user, colon, _password = userinfo.partition(":")
    if colon:
        shown = f"{user}:***"
    elif parts.scheme.lower() in ("http", "https"):
        shown = "***"
    else:
        return url
    return urlunsplit(parts._replace(netloc=f"{shown}@{host}"))
