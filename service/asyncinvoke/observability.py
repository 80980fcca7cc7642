"""Logging configuration (structlog): JSON lines for machines, console for people.

Global state: structlog's configuration, set once by ``configure_logging``.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog


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
        factory: structlog.types.WrappedLogger = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        processors = [*shared, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
        factory = structlog.PrintLoggerFactory(sys.stderr)
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
