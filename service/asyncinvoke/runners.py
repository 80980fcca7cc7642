"""Run one attempt of a function under its timeout → ``contract.Outcome``.

Python handlers: async ones run on the event loop and are cancelled at their
timeout; sync ones run in a thread pool of their function's own, as many threads
as its concurrency. A thread cannot be interrupted, so a sync handler that
overruns is reported as a timeout while its thread finishes in the background
(its result is discarded); until it does, it keeps one of its own function's
threads, never another function's. A sync attempt's timeout counts from the
moment a thread starts it, not from the moment it queued for one; it waits at most
that long again for a thread, and then fails as a timeout that says so.

HTTP functions get the event POSTed; 2xx is success, anything else a retryable
failure (a redirect too: it is never followed), except that 429 and 503, and a
function that cannot be connected to, are throttled (``Outcome.throttled``, with its
``Retry-After``): retried on the throttle budget, not on max_retries. A Python
handler is throttled by raising ``asyncinvoke.Throttled``.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import inspect
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import aiohttp
import orjson

from asyncinvoke import contract, record_codec, tracing
from asyncinvoke.clock import now_ms
from asyncinvoke.context import Context as Context  # re-exported: runners.Context
from asyncinvoke.contract import Envelope, ErrorInfo, Outcome
from asyncinvoke.errors import NonRetryableError, Throttled
from asyncinvoke.functions import FunctionSpec

# Threads for one function's sync handlers at most, whatever its concurrency: beyond
# this its attempts queue for a thread, and their timeouts start when they get one.
MAX_THREADS = 256
# What an HTTP function answers when it is busy rather than broken (RFC 6585, RFC 9110).
THROTTLE_STATUSES = frozenset({429, 503})


class Runner(Protocol):
    cancellable: bool  # whether cancelling run() stops the function (not a sync thread)
    # Attempts that may be in run() at once: the function's concurrency, or more where
    # the runner queues some itself without starting them (the process executor's pipeline).
    slots: int
    # Whether its attempts' acks may linger to share a frame (acks.py): where attempts
    # run at a few hundred a second in other processes (the process executor).
    ack_linger: bool

    async def run(self, envelope: Envelope, context: Context) -> Outcome: ...

    def close(self) -> None: ...


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
        error=ErrorInfo(
            "TimeoutError", f"attempt exceeded the function's timeout of {spec.timeout_s:g} s"
        ),
        function_error=contract.TIMEOUT,
        status_code=504,
        duration_ms=(time.perf_counter() - started) * 1000,
    )


def _error_outcome(exc: BaseException, started: float) -> Outcome:
    if isinstance(exc, Throttled):
        return throttled_outcome(
            ErrorInfo.of(exc),
            None if exc.retry_after is None else round(exc.retry_after * 1000),
            status_code=429,
            duration_ms=(time.perf_counter() - started) * 1000,
        )
    non_retryable = isinstance(exc, NonRetryableError)
    return Outcome(
        ok=False,
        error=ErrorInfo.of(exc),
        function_error=contract.HANDLED if non_retryable else contract.UNHANDLED,
        status_code=500,
        retryable=not non_retryable,
        duration_ms=(time.perf_counter() - started) * 1000,
    )


def throttled_outcome(
    error: ErrorInfo, retry_after_ms: int | None, *, status_code: int, duration_ms: float
) -> Outcome:
    """The function was busy: a failed attempt that spends the throttle budget."""
    return Outcome(
        ok=False,
        error=error,
        function_error=contract.HANDLED,
        status_code=status_code,
        duration_ms=duration_ms,
        throttled=True,
        retry_after_ms=retry_after_ms,
    )


def retry_after_ms(value: str | None, now_ms: int) -> int | None:
    """A ``Retry-After`` header (RFC 9110: delay-seconds or an HTTP-date) as ms from now;
    None when absent or unreadable (then the function's backoff applies). A date in the
    past is 0."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return int(text) * 1000
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read as such
        return None
    return max(0, round(when.timestamp() * 1000) - now_ms)


def _unsendable_outcome(exc: Exception, started: float) -> Outcome:
    """An event JSON cannot carry: it would fail the same way on every retry, and a
    lossy rendering would hand the function data that is not its event."""
    return Outcome(
        ok=False,
        error=ErrorInfo(
            "EventNotSerializable",
            f"the event cannot be sent to an HTTP function as JSON ({exc}); "
            "send bytes (POSTed as they are) or JSON-shaped data: string, number or "
            "boolean map keys, nesting under 250 levels",
        ),
        function_error=contract.UNHANDLED,
        status_code=400,
        retryable=False,
        duration_ms=(time.perf_counter() - started) * 1000,
    )


class RunStart:
    """When a thread began a sync attempt (``time.perf_counter()``), set by that thread.

    The thread writes it and the watchdog reads it on its next tick: no wake-up of the
    event loop per attempt for this.
    """

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at: float | None = None

    def began(self) -> float:
        """When the attempt began; now if it never did (its duration is then 0)."""
        return time.perf_counter() if self.at is None else self.at


class Watchdog:
    """Cancels attempts that overrun their timeout.

    One timer task for all attempts instead of ``asyncio.timeout`` around each (a
    timer handle, a heap entry and bookkeeping per attempt, on the hot path). The
    price is precision: an attempt is cancelled up to one tick after its deadline.
    """

    TICK_S = 0.02

    def __init__(self) -> None:
        self._deadlines: dict[asyncio.Task[Any], float] = {}  # perf_counter() values
        # Sync attempts waiting for a thread: their timeout starts when one takes them up.
        self._queued: dict[asyncio.Task[Any], tuple[RunStart, float]] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None

    def watch(self, task: asyncio.Task[Any], timeout_s: float, start: RunStart) -> None:
        """Cancel ``task`` ``timeout_s`` after ``start``. Until a thread sets ``start``,
        the attempt may wait ``timeout_s`` for one: the threads of a function whose
        handlers hang never free up, and its deliveries must not wait for them forever."""
        if start.at is None:
            self._queued[task] = (start, timeout_s)
            self._deadlines[task] = time.perf_counter() + timeout_s
        else:
            self._deadlines[task] = start.at + timeout_s
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def release(self, task: asyncio.Task[Any]) -> bool:
        """Stop watching; whether the attempt was cancelled for its timeout."""
        self._deadlines.pop(task, None)
        self._queued.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            task.uncancel()
            return True
        return False

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.TICK_S)
            if self._queued:
                self._start_clocks()
            now = time.perf_counter()
            overdue = [task for task, deadline in self._deadlines.items() if deadline <= now]
            for task in overdue:
                del self._deadlines[task]
                self._queued.pop(task, None)
                self._expired.add(task)
                task.cancel()

    def _start_clocks(self) -> None:
        """Give each queued sync attempt that a thread has begun the deadline of its run."""
        begun = [
            (task, start.at + timeout_s)
            for task, (start, timeout_s) in self._queued.items()
            if start.at is not None
        ]
        for task, deadline in begun:
            del self._queued[task]
            self._deadlines[task] = deadline

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None


class PythonRunner:
    def __init__(self, spec: FunctionSpec, handler: Callable[..., Any], watchdog: Watchdog):
        self.spec = spec
        self.handler = handler
        self.watchdog = watchdog
        self.is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
        )
        self.cancellable = self.is_async
        self.slots = spec.concurrency
        self.ack_linger = False
        self._processes = None
        if spec.executor == "process":
            from asyncinvoke.process_executor import ProcessExecutor  # it imports this module

            self._processes = ProcessExecutor(spec, self.is_async)
            self.cancellable = True  # cancelling an attempt ends its process
            self.slots = self._processes.slots
            self.ack_linger = True
        # A pool of its own: threads held by this function's overrunning handlers must
        # not leave another function's attempts queued until they time out unstarted.
        self._threads = None if self.is_async or self._processes else ThreadPoolExecutor(
            max_workers=min(spec.concurrency, MAX_THREADS),
            thread_name_prefix=f"handler-{spec.name}",
        )

    def close(self) -> None:
        """Drop queued sync attempts; threads still running end in the background."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.close()

    def _no_thread_outcome(self) -> Outcome:
        """The attempt waited its timeout for a thread and never started."""
        threads = min(self.spec.concurrency, MAX_THREADS)
        return Outcome(
            ok=False,
            error=ErrorInfo(
                "TimeoutError",
                f"not started: no thread of function {self.spec.name!r} was "
                f"free within its timeout of {self.spec.timeout_s:g} s; its {threads} "
                "thread(s) still run handlers that overran their timeout (hung?)",
            ),
            function_error=contract.TIMEOUT,
            status_code=504,
        )

    def _in_thread(self, payload: Any, context: Context, start: RunStart) -> Any:
        start.at = time.perf_counter()
        context.deadline = time.time() + self.spec.timeout_s
        return self.handler(payload, context)

    async def run(self, envelope: Envelope, context: Context) -> Outcome:
        if self._processes is not None:
            return await self._processes.run(envelope, context, self.watchdog)
        task = asyncio.current_task()
        assert task is not None
        start = RunStart()
        if self._threads is None:
            start.at = time.perf_counter()
        self.watchdog.watch(task, self.spec.timeout_s, start)
        try:
            if self._threads is None:
                result = await self.handler(envelope.payload, context)
            else:
                loop = asyncio.get_running_loop()
                # In the attempt's context (as asyncio.to_thread does): the handler's log
                # lines and its own spans belong to the attempt's trace.
                result = await loop.run_in_executor(
                    self._threads, contextvars.copy_context().run, self._in_thread,
                    envelope.payload, context, start,
                )
        except asyncio.CancelledError:
            if self.watchdog.release(task):
                if start.at is None:
                    return self._no_thread_outcome()
                return _timeout_outcome(self.spec, start.began())
            raise
        except Exception as exc:
            if self.watchdog.release(task):  # the handler turned our cancel into an error
                return _timeout_outcome(self.spec, start.began())
            return _error_outcome(exc, start.began())
        if self.watchdog.release(task):  # the handler swallowed our cancel
            return _timeout_outcome(self.spec, start.began())
        duration_ms = (time.perf_counter() - start.began()) * 1000
        return Outcome(ok=True, result=result, duration_ms=duration_ms)


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
        self.slots = spec.concurrency
        self.ack_linger = False

    def close(self) -> None:
        """Nothing of its own to release: the session is the worker's."""

    async def run(self, envelope: Envelope, context: Context) -> Outcome:
        started = time.perf_counter()
        payload = envelope.payload
        if isinstance(payload, bytes):
            body, content_type = payload, "application/octet-stream"
        else:
            try:
                body, content_type = contract.to_json(payload), "application/json"
            except record_codec.ENCODE_ERRORS as exc:
                return _unsendable_outcome(exc, started)
        headers = {
            "content-type": content_type,
            "x-fc-request-id": envelope.id,
            "x-asyncinvoke-attempt": str(envelope.attempt),
        }
        try:
            # Never follow a redirect: aiohttp would turn the POST into a GET without the
            # event (301/302/303), and its 2xx would count as a success that never saw it.
            with tracing.http_call(self.url, headers) as span:
                async with self.session.post(
                    self.url, data=body, headers=headers, timeout=self.timeout,
                    allow_redirects=False,
                ) as response:
                    response_body = await response.read()
                    status = response.status
                    response_type = response.content_type
                    location = response.headers.get("Location")
                    retry_after = response.headers.get("Retry-After")
                tracing.http_status(span, status)
        except TimeoutError:
            return _timeout_outcome(self.spec, started)
        except aiohttp.ClientConnectorError as exc:
            duration_ms = (time.perf_counter() - started) * 1000
            if isinstance(exc, aiohttp.ClientSSLError):
                return _error_outcome(exc, started)  # reached, and refused: not busy
            # Nothing listens (refused), or the host is unreachable now: it cannot take
            # the event, as a busy function cannot. No event was delivered.
            return throttled_outcome(
                ErrorInfo.of(exc), None, status_code=503, duration_ms=duration_ms
            )
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
        if status in THROTTLE_STATUSES:
            return throttled_outcome(
                ErrorInfo(f"HTTP{status}", response_body[:2000].decode("utf-8", "replace")),
                retry_after_ms(retry_after, now_ms()),
                status_code=status,
                duration_ms=duration_ms,
            )
        if 300 <= status < 400:
            message = (
                f"redirected to {location or '(no Location header)'}, not followed: the "
                "worker never follows redirects; set the function's url to the final address"
            )
        else:
            message = response_body[:2000].decode("utf-8", errors="replace")
        return Outcome(
            ok=False,
            error=ErrorInfo(f"HTTP{status}", message),
            function_error=contract.HANDLED,
            status_code=status,
            duration_ms=duration_ms,
        )
