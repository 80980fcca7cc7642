"""``executor = "process"``: a function's sync handler runs in processes of its own.

CPU-bound handlers get real parallelism (no shared GIL), and the worker's event loop,
with the broker connection and its heartbeats, never waits for a handler. A pool of
up to ``concurrency`` handler processes per function and worker process, started when
first needed and kept (``_handler_process.py`` is their side).

- An attempt past its timeout ends its process (SIGKILL), which is replaced, and the
  attempt is a ``TimeoutError`` as with the other executors: a timeout that bites.
- A handler that kills its process (a segfault, ``os._exit``) is an ordinary failed
  attempt (retryable); the worker process lives on.
- Only msgpack crosses between the processes: the event and the context's fields one
  way, the result or the error the other. Nothing is pickled; the handler is imported
  in its process by its configured name, never named by a message.

**A pipeline of two per process.** Each handler process may hold one attempt queued
behind the one it runs (``PIPELINE_DEPTH``): it starts the next the moment it has
written an answer, instead of idling while the worker's loop reads that answer, settles
the attempt and sends the next request (about half the time of a 2 ms handler on a
loaded 2-core machine). Still exactly ``concurrency`` handlers run at once. A queued
attempt has not begun: its timeout (and its context's deadline) starts when its process
takes it up, which the worker learns from the answer before it. If its process is killed
or dies before that, the attempt goes to another process as if never sent (no attempt
counted); if it is stopped while queued, the process is told to skip it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any

from asyncinvoke import contract
from asyncinvoke.context import Context
from asyncinvoke.contract import Envelope, ErrorInfo, Outcome
from asyncinvoke.errors import ConfigError, HandlerProcessDied, NotStarted
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.handler_link import HandlerProcess, Job
from asyncinvoke.observability import get_logger
from asyncinvoke.runners import Watchdog, _timeout_outcome, throttled_outcome

# Handler processes of one function in one worker process at most, whatever its
# concurrency (each is a Python interpreter: tens of MB).
MAX_PROCESSES = 64
# Attempts one handler process holds: the one it runs and the next (see above).
PIPELINE_DEPTH = 2

log = get_logger(component="process_executor")
_sequence = itertools.count()


def _retrieve(task: asyncio.Task[HandlerProcess]) -> None:
    """A spare nobody took: its failure was logged where it matters, or it is killed."""
    if task.cancelled():
        return
    if task.exception() is None:
        task.result().kill()


class ProcessPool:
    """Up to ``size`` handler processes of one function, each holding up to ``depth``
    attempts, and one spare started ahead (at start and after each kill), so an attempt
    seldom waits for an interpreter to start."""

    def __init__(self, spec: FunctionSpec, size: int, depth: int = PIPELINE_DEPTH):
        self.spec = spec
        self.size = size
        self.depth = depth
        self._live: list[HandlerProcess] = []
        self._starting = 0  # processes being started for an attempt (counted in size)
        self._spare: asyncio.Task[HandlerProcess] | None = None
        self._changed = asyncio.Event()
        self._waiting = 0  # attempts waiting for room in a queue
        self._closed = False

    def start_spare(self) -> None:
        if self._closed or self._spare is not None or len(self._live) >= self.size:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: the first attempt starts one
            self._spare = asyncio.get_running_loop().create_task(HandlerProcess.start(self.spec))

    def _notify(self) -> None:
        """A process took an answer off its queue, or died: waiting attempts look again."""
        if self._waiting:
            self._changed.set()
            self._changed = asyncio.Event()

    async def acquire(self) -> HandlerProcess:
        """A process for one attempt: an idle one, else a new one while fewer than
        ``size`` run, else the least busy with room in its queue. The caller submits its
        job before its next await, so that the queue lengths seen here stay true."""
        while True:
            if self._closed:
                raise HandlerProcessDied("was not started: the worker is stopping")
            self._live = [p for p in self._live if p.alive]
            least = min(self._live, key=lambda p: len(p.jobs), default=None)
            if least is not None and not least.jobs:
                return least
            if len(self._live) + self._starting < self.size:
                return await self._add()
            if least is not None and len(least.jobs) < self.depth:
                return least
            self._waiting += 1
            try:
                await self._changed.wait()
            finally:
                self._waiting -= 1

    async def _add(self) -> HandlerProcess:
        self._starting += 1
        try:
            spare, self._spare = self._spare, None
            process = await (spare if spare is not None else HandlerProcess.start(self.spec))
        finally:
            self._starting -= 1
        process.on_change = self._notify
        if self._closed:
            process.kill()
            raise HandlerProcessDied("was not started: the worker is stopping")
        self._live.append(process)
        return process

    def discard(self, process: HandlerProcess) -> None:
        """End a process whose running attempt went wrong; start its replacement now.
        Attempts queued behind it have not begun: they go to other processes."""
        process.kill()
        # Reap it in the background: the attempt does not wait for that.
        asyncio.get_running_loop().create_task(process.process.wait())
        self._notify()
        self.start_spare()

    def close(self) -> None:
        """Kill every handler process (attempts still running were cut short already)."""
        self._closed = True
        if self._spare is not None:
            self._spare.cancel()
            self._spare.add_done_callback(_retrieve)
            self._spare = None
        for process in self._live:
            process.kill()
        self._live.clear()
        self._notify()


def _crash_outcome(how: str, started: float) -> Outcome:
    return Outcome(
        ok=False,
        error=ErrorInfo("HandlerProcessDied", f"the handler's process {how} during the attempt"),
        function_error=contract.UNHANDLED,
        status_code=500,
        duration_ms=(time.perf_counter() - started) * 1000,
    )


def _answer_outcome(answer: Any, started: float) -> Outcome:
    duration_ms = (time.perf_counter() - started) * 1000
    if answer["ok"]:
        return Outcome(ok=True, result=answer["result"], duration_ms=duration_ms)
    if answer.get("throttled"):
        retry_after = answer.get("retry_after")
        return throttled_outcome(
            ErrorInfo.from_wire(answer["error"]) or ErrorInfo("Throttled", "throttled"),
            None if not isinstance(retry_after, int | float) else round(retry_after * 1000),
            status_code=429,
            duration_ms=duration_ms,
        )
    retryable = bool(answer["retryable"])
    return Outcome(
        ok=False,
        error=ErrorInfo.from_wire(answer["error"]),
        function_error=contract.UNHANDLED if retryable else contract.HANDLED,
        status_code=500,
        retryable=retryable,
        duration_ms=duration_ms,
    )


class ProcessExecutor:
    """Runs one function's attempts in its pool, under the worker's timeout watchdog."""

    def __init__(self, spec: FunctionSpec, handler_is_async: bool):
        if handler_is_async:
            raise ConfigError(
                "executor = \"process\" runs sync handlers; this one is async (it runs on "
                "the event loop): drop the key, or make the handler a plain function",
                function=spec.name,
                key="executor",
            )
        self.spec = spec
        self.pool = ProcessPool(spec, min(spec.concurrency, MAX_PROCESSES))
        self.pool.start_spare()

    @property
    def slots(self) -> int:
        """Attempts this executor takes at once: every process's running and queued one."""
        return self.pool.size * self.pool.depth

    def close(self) -> None:
        self.pool.close()

    async def run(self, envelope: Envelope, context: Context, watchdog: Watchdog) -> Outcome:
        task = asyncio.current_task()
        assert task is not None
        fields = {
            "id": context.invocation_id,
            "fn": context.function,
            "attempt": context.attempt,
            "timeout": self.spec.timeout_s,  # the deadline counts from its real start
            "meta": context.meta,
            "payload": envelope.payload,
        }
        while True:
            began = time.perf_counter()
            try:
                process = await self.pool.acquire()
            except HandlerProcessDied as exc:
                log.error("handler_process_start_failed", function=self.spec.name,
                          error=str(exc))  # fmt: skip
                return _crash_outcome(str(exc), began)
            job = Job(task, watchdog, self.spec.timeout_s, next(_sequence))
            process.submit(job, contract.pack({**fields, "seq": job.seq}))
            try:
                answer = await job.answer
            except NotStarted:
                continue  # its process ended before it began: another one takes it
            except asyncio.CancelledError:
                if self._ended_by_timeout(process, job):
                    return _timeout_outcome(self.spec, job.start.began())
                raise
            except HandlerProcessDied as exc:
                self.pool.discard(process)
                if watchdog.release(task):
                    return _timeout_outcome(self.spec, job.start.began())
                log.warning("handler_process_died", function=self.spec.name,
                            invocation_id=context.invocation_id, exit=str(exc))  # fmt: skip
                return _crash_outcome(str(exc), job.start.began())
            except BaseException:
                watchdog.release(task)
                self.pool.discard(process)
                raise
            if watchdog.release(task):  # answered, but only after its deadline
                return _timeout_outcome(self.spec, job.start.began())
            return _answer_outcome(answer, job.start.began())

    def _ended_by_timeout(self, process: HandlerProcess, job: Job) -> bool:
        """A timeout, a stop or shutdown: the attempt ends now. If its handler runs, so
        does its process; if it waits in the queue, the process is told to skip it; if it
        was answered (or its process ended) meanwhile, nothing more is needed. Whether it
        was the watchdog's doing."""
        if job.running(process):
            self.pool.discard(process)
        elif job.answer.cancelled():
            process.skip(job)
        else:
            job.answer.exception()  # answered or failed meanwhile: retrieved, not needed
        return job.watchdog.release(job.task)
