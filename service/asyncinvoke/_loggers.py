"""Where asyncinvoke's log lines go, configured or not.

The commands (worker, gateway, serve, the CLI) configure structlog at start
(``observability.configure_logging``), and every line goes where that says; so does an
application that configured structlog itself. A program that merely uses the library (a
``Client`` or ``SyncClient``) configured nothing, and structlog's defaults would print
every line, info and debug included, on that program's stdout. Until structlog is
configured, the lines go to the standard library's logger ``asyncinvoke`` instead: silent
(it has a ``NullHandler``, as the logging HOWTO advises for libraries) unless the program
configures logging, and then at the levels it chose, e.g.
``logging.basicConfig(level=logging.INFO)``.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import structlog

LIBRARY_LOGGER = "asyncinvoke"
logging.getLogger(LIBRARY_LOGGER).addHandler(logging.NullHandler())

# To the standard library: dropped before rendering below the logger's level, rendered as
# "event=... key=..." so that a plain handler shows the fields too.
_TO_STDLIB: list[structlog.typing.Processor] = [
    structlog.stdlib.filter_by_level,
    structlog.processors.format_exc_info,
    structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=True),
]


class _Logger:
    """structlog's logger while structlog is configured, the standard library's until then
    (asked at each call: a module's logger is made at import, before any configuration)."""

    __slots__ = ("_configured", "_library")

    def __init__(self, **bound: object):
        self._configured = structlog.get_logger(**bound)
        self._library = structlog.wrap_logger(
            logging.getLogger(LIBRARY_LOGGER),
            processors=_TO_STDLIB,
            wrapper_class=structlog.stdlib.BoundLogger,
        ).bind(**bound)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._configured if structlog.is_configured() else self._library, name)


def get_logger(**bound: object) -> structlog.typing.FilteringBoundLogger:
    # _Logger answers every call a bound logger does, by passing it on.
    return cast(structlog.typing.FilteringBoundLogger, _Logger(**bound))
