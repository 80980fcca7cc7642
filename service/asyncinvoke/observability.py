"""Logging configuration (structlog): JSON lines for machines, console for people.

Global state: structlog's configuration and the JSON line writer, both set once by
``configure_logging``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from typing import IO, Any

import orjson
import structlog

from asyncinvoke import tracing
from asyncinvoke._loggers import get_logger
from asyncinvoke.text import escape_surrogates

__all__ = ["configure_logging", "describe_exit", "get_logger", "hot_info", "json_line"]


class LoopFlushedLogger:
    """Writes JSON lines to a byte stream and flushes once per turn of the event loop.

    structlog's BytesLogger flushes after every line: a write system call per attempt
    on the hot path. Lines written in one loop turn go out together at its end;
    outside a running loop each line is flushed at once.
    """

    def __init__(self, stream: IO[bytes]):
        self._write = stream.write
        self._flush = stream.flush
        self._pending = False

    def msg(self, message: bytes) -> None:
        self._write(message + b"\n")
        if self._pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush()
            return
        self._pending = True
        loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._pending = False
        self._flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


_json_writer: LoopFlushedLogger | None = None  # set when the format is JSON
_hot = get_logger()
_stamp_second = -1
_stamp_prefix = ""


def _utc_stamp() -> str:
    """The time as structlog's ISO stamps have it, formatting the date once a second."""
    global _stamp_second, _stamp_prefix
    now = time.time()
    second = int(now)
    if second != _stamp_second:
        _stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamp_second = second
    return f"{_stamp_prefix}.{int((now - second) * 1_000_000):06d}Z"


def json_line(value: Any, **kwargs: Any) -> bytes:
    """orjson for a log line. A text orjson refuses (a lone surrogate, as in the message
    of an exception from a bad decoder) is escaped: a log call that raised would fail
    the attempt that logged, after its record was written."""
    kwargs.setdefault("default", str)
    try:
        return orjson.dumps(value, **kwargs)
    except TypeError:
        pass
    try:
        return orjson.dumps(escape_surrogates(value), **kwargs)
    except (TypeError, RecursionError) as exc:
        event = value.get("event") if isinstance(value, dict) else None
        return orjson.dumps({"event": str(event), "log_line_not_encodable": str(exc)})


def hot_info(event: str, fields: dict[str, object]) -> None:
    """An info line on the hot path (one per attempt). In JSON it is rendered straight
    to bytes, with the keys structlog would give it, skipping the processor chain;
    otherwise it goes through structlog like any line."""
    writer = _json_writer
    if writer is None:
        _hot.info(event, **fields)
        return
    if tracing.AVAILABLE:
        tracing.add_delivery_ids(fields)
    fields["event"] = event
    fields["level"] = "info"
    fields["timestamp"] = _utc_stamp()
    writer.msg(json_line(fields))


def configure_logging(log_format: str = "json", level: int = logging.INFO) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if tracing.AVAILABLE:
        # Log lines and traces join up: trace_id and span_id on every line in a trace.
        shared.append(tracing.add_log_ids)
    if log_format == "json":
        processors: list[structlog.types.Processor] = [
            *shared,
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(serializer=json_line),
        ]
        writer = LoopFlushedLogger(sys.stderr.buffer)

        def factory(*_: object) -> LoopFlushedLogger:
            return writer

    else:
        processors = [*shared, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
        factory = structlog.PrintLoggerFactory(sys.stderr)  # type: ignore[assignment]
        writer = None
    global _json_writer
    _json_writer = writer if log_format == "json" else None
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # aio-pika and aiormq log through the standard library; keep their warnings.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")


def describe_exit(returncode: int) -> str:
    """How a child ended, for people: a signal's name or the exit status."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"
