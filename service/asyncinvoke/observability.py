"""Logging configuration (structlog): JSON lines for machines, console for people.

Global state: structlog's configuration, set once by ``configure_logging``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import IO

import orjson
import structlog


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


def configure_logging(log_format: str = "json", level: int = logging.INFO) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if log_format == "json":
        processors: list[structlog.types.Processor] = [
            *shared,
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        writer = LoopFlushedLogger(sys.stderr.buffer)

        def factory(*_: object) -> LoopFlushedLogger:
            return writer

    else:
        processors = [*shared, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
        factory = structlog.PrintLoggerFactory(sys.stderr)  # type: ignore[assignment]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # aio-pika and aiormq log through the standard library; keep their warnings.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")


def get_logger(**bound: object) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(**bound)  # type: ignore[no-any-return]
