"""The handler's second argument. A module of its own, light to import: handler
processes (``executor = "process"``) build it without the worker's machinery."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from asyncinvoke.observability import get_logger


@dataclass(slots=True)
class Context:
    """What a handler knows about its invocation (its second argument)."""

    invocation_id: str
    function: str
    attempt: int  # 0 for the first attempt
    deadline: float  # time.time() by which the attempt must end
    meta: dict[str, str] = field(default_factory=dict)
    _logger: Any = None

    @property
    def request_id(self) -> str:
        return self.invocation_id

    @property
    def logger(self) -> Any:
        """A structlog logger bound to this invocation (made on first use: most
        handlers never log, and the hot path should not pay for it)."""
        if self._logger is None:
            self._logger = get_logger(invocation_id=self.invocation_id, function=self.function)
        return self._logger

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.time())
