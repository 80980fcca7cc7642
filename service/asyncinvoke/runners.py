"""Run one attempt of a function under its timeout → ``policy.Outcome``.

Python handlers: async ones run on the event loop and are cancelled at their
timeout; sync ones run in a thread pool. A thread cannot be interrupted, so a
sync handler that overruns is reported as a timeout while its thread finishes
in the background (its result is discarded). HTTP functions get the event
POSTed; 2xx is success, anything else a retryable failure.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson

from asyncinvoke import contract
from asyncinvoke.contract import Envelope
from asyncinvoke.errors import NonRetryableError
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.observability import get_logger
from asyncinvoke.policy import Outcome


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


class Runner(Protocol):
    cancellable: bool  # whether cancelling run() stops the function (not a sync thread)

    async def run(self, envelope: Envelope, context: Context) -> Outcome: ...


def make_context(envelope: Envelope, spec: FunctionSpec) -> Context:
    return Context(
        invocation_id=envelope.id,
        function=envelope.fn,
        attempt=envelope.attempt,
        deadline=time.time() + spec.timeout_s,
        meta=envelope.meta or {},
    )


def _timeout_outcome(spec: FunctionSpec, started: float) -> Outcome:
    return Outcome(
        ok=False,
        error={
            "errorType": "TimeoutError",
            "errorMessage": f"attempt exceeded the function's timeout of {spec.timeout_s:g} s",
            "stackTrace": [],
        },
        function_error=contract.TIMEOUT,
        status_code=504,
        duration_ms=(time.perf_counter() - started) * 1000,
    )


def _error_outcome(exc: BaseException, started: float) -> Outcome:
    non_retryable = isinstance(exc, NonRetryableError)
    return Outcome(
        ok=False,
        error=contract.error_payload(exc),
        function_error=contract.HANDLED if non_retryable else contract.UNHANDLED,
        status_code=500,
        retryable=not non_retryable,
        duration_ms=(time.perf_counter() - started) * 1000,
    )


def _unsendable_outcome(exc: Exception, started: float) -> Outcome:
    """An event JSON cannot carry: it would fail the same way on every retry, and a
    lossy rendering would hand the function data that is not its event."""
    return Outcome(
        ok=False,
        error={
            "errorType": "EventNotSerializable",
            "errorMessage": f"the event cannot be sent to an HTTP function as JSON ({exc}); "
            "send bytes (POSTed as they are) or JSON-shaped data: string, number or "
            "boolean map keys, nesting under 250 levels",
            "stackTrace": [],
        },
        function_error=contract.UNHANDLED,
        status_code=400,
        retryable=False,
        duration_ms=(time.perf_counter() - started) * 1000,
    )


class Watchdog:
    """Cancels attempts that overrun their timeout.

    One timer task for all attempts instead of ``asyncio.timeout`` around each (a
    timer handle, a heap entry and bookkeeping per attempt, on the hot path). The
    price is precision: an attempt is cancelled up to one tick after its deadline.
    """

    TICK_S = 0.02

    def __init__(self) -> None:
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None

    def watch(self, task: asyncio.Task[Any], timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        self._deadlines[task] = loop.time() + timeout_s
        if self._ticker is None:
            self._ticker = loop.create_task(self._tick())

    def release(self, task: asyncio.Task[Any]) -> bool:
        """Stop watching; whether the attempt was cancelled for its timeout."""
        self._deadlines.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            task.uncancel()
            return True
        return False

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.TICK_S)
            now = loop.time()
            overdue = [task for task, deadline in self._deadlines.items() if deadline <= now]
            for task in overdue:
                del self._deadlines[task]
                self._expired.add(task)
                task.cancel()

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None


class PythonRunner:
    def __init__(
        self,
        spec: FunctionSpec,
        handler: Callable[..., Any],
        executor: Executor,
        watchdog: Watchdog,
    ):
        self.spec = spec
        self.handler = handler
        self.executor = executor
        self.watchdog = watchdog
        self.is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
        )
        self.cancellable = self.is_async

    async def run(self, envelope: Envelope, context: Context) -> Outcome:
        started = time.perf_counter()
        task = asyncio.current_task()
        assert task is not None
        self.watchdog.watch(task, self.spec.timeout_s)
        try:
            if self.is_async:
                result = await self.handler(envelope.payload, context)
            else:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(
                    self.executor, self.handler, envelope.payload, context
                )
        except asyncio.CancelledError:
            if self.watchdog.release(task):
                return _timeout_outcome(self.spec, started)
            raise
        except Exception as exc:
            if self.watchdog.release(task):  # the handler turned our cancel into an error
                return _timeout_outcome(self.spec, started)
            return _error_outcome(exc, started)
        if self.watchdog.release(task):  # the handler swallowed our cancel
            return _timeout_outcome(self.spec, started)
        return Outcome(ok=True, result=result, duration_ms=(time.perf_counter() - started) * 1000)


def _response_result(body: bytes, content_type: str) -> Any:
    if content_type == "application/json" and body:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
    if content_type.startswith("text/"):
        return body.decode("utf-8", errors="replace")
    return body


class HttpRunner:
    """An HTTP function: POST the event, 2xx is success and the body is the result."""

    def __init__(self, spec: FunctionSpec, session: aiohttp.ClientSession):
        assert spec.url is not None
        self.spec = spec
        self.url = spec.url
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
        self.cancellable = True

    async def run(self, envelope: Envelope, context: Context) -> Outcome:
        started = time.perf_counter()
        payload = envelope.payload
        if isinstance(payload, bytes):
            body, content_type = payload, "application/octet-stream"
        else:
            try:
                body, content_type = contract.to_json(payload), "application/json"
            except (TypeError, ValueError) as exc:
                return _unsendable_outcome(exc, started)
        headers = {
            "content-type": content_type,
            "x-fc-request-id": envelope.id,
            "x-asyncinvoke-attempt": str(envelope.attempt),
        }
        try:
            async with self.session.post(
                self.url, data=body, headers=headers, timeout=self.timeout
            ) as response:
                response_body = await response.read()
                status = response.status
                response_type = response.content_type
        except TimeoutError:
            return _timeout_outcome(self.spec, started)
        except aiohttp.ClientError as exc:
            return _error_outcome(exc, started)
        duration_ms = (time.perf_counter() - started) * 1000
        if 200 <= status < 300:
            return Outcome(
                ok=True,
                result=_response_result(response_body, response_type),
                status_code=status,
                duration_ms=duration_ms,
            )
        return Outcome(
            ok=False,
            error={
                "errorType": f"HTTP{status}",
                "errorMessage": response_body[:2000].decode("utf-8", errors="replace"),
                "stackTrace": [],
            },
            function_error=contract.HANDLED,
            status_code=status,
            duration_ms=duration_ms,
        )
