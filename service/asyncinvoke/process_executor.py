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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from typing import Any

from asyncinvoke import contract
from asyncinvoke._handler_process import FD_ENV, FRAME, PARENT_ENV, SYS_PATH_ENV
from asyncinvoke.context import Context
from asyncinvoke.contract import Envelope, ErrorInfo, Outcome
from asyncinvoke.errors import ConfigError, HandlerProcessDied
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.observability import describe_exit, get_logger
from asyncinvoke.runners import RunStart, Watchdog, _timeout_outcome, throttled_outcome

# Handler processes of one function in one worker process at most, whatever its
# concurrency (each is a Python interpreter: tens of MB).
MAX_PROCESSES = 64
# How long a handler process may take to start and import its handler.
START_TIMEOUT_S = 60.0

log = get_logger(component="process_executor")


class HandlerProcess:
    """One handler process and the socket to it."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ):
        self.process = process
        self.reader = reader
        self.writer = writer

    @classmethod
    async def start(cls, spec: FunctionSpec) -> HandlerProcess:
        """Start one and wait until it has imported the handler (HandlerProcessDied if it
        cannot): that start-up is not the attempt's, and does not count in its timeout."""
        assert spec.handler is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {
            **os.environ,
            FD_ENV: str(theirs.fileno()),
            SYS_PATH_ENV: json.dumps(sys.path),
            PARENT_ENV: str(os.getpid()),
        }
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "asyncinvoke._handler_process", spec.name, spec.handler,
                env=env, stdin=asyncio.subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        started = cls(process, reader, writer)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                hello = await started.receive()
        except BaseException as exc:
            started.kill()
            if isinstance(exc, TimeoutError):
                raise HandlerProcessDied(
                    f"did not start within {START_TIMEOUT_S:g} s"
                ) from None
            raise
        if not hello.get("ready"):
            started.kill()
            raise HandlerProcessDied(f"could not start: {hello.get('error')}")
        return started

    async def receive(self) -> Any:
        """The next frame; HandlerProcessDied when the process ended instead."""
        try:
            header = await self.reader.readexactly(FRAME.size)
            body = await self.reader.readexactly(FRAME.unpack(header)[0])
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise HandlerProcessDied(await self._how_it_ended()) from exc
        return contract.unpack(body)

    async def call(self, request: bytes) -> Any:
        """Send one request, return its answer; HandlerProcessDied if the process ends."""
        self.writer.write(FRAME.pack(len(request)) + request)
        try:
            await self.writer.drain()
        except ConnectionError as exc:
            raise HandlerProcessDied(await self._how_it_ended()) from exc
        return await self.receive()

    async def _how_it_ended(self) -> str:
        try:
            returncode = await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            self.kill()
            return "closed its socket (killed now)"
        return describe_exit(returncode)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.writer.close()


def _retrieve(task: asyncio.Task[HandlerProcess]) -> None:
    """A spare nobody took: its failure was logged where it matters, or it is killed."""
    if task.cancelled():
        return
    if task.exception() is None:
        task.result().kill()


class ProcessPool:
    """Up to ``size`` busy handler processes of one function, idle ones kept for the
    next attempts, and one spare started ahead (at start and after each kill), so an
    attempt seldom waits for an interpreter to start."""

    def __init__(self, spec: FunctionSpec, size: int):
        self.spec = spec
        self._busy = asyncio.Semaphore(size)
        self._idle: list[HandlerProcess] = []
        self._spare: asyncio.Task[HandlerProcess] | None = None
        self._closed = False

    def start_spare(self) -> None:
        if self._closed or self._spare is not None or self._idle:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: the first attempt starts one
            self._spare = asyncio.get_running_loop().create_task(HandlerProcess.start(self.spec))

    async def acquire(self) -> HandlerProcess:
        await self._busy.acquire()
        try:
            while self._idle:
                process = self._idle.pop()
                if process.process.returncode is None:
                    return process
                process.kill()
            spare, self._spare = self._spare, None
            if spare is not None:
                return await spare
            return await HandlerProcess.start(self.spec)
        except BaseException:
            self._busy.release()
            raise

    def release(self, process: HandlerProcess) -> None:
        self._busy.release()
        if self._closed:
            process.kill()
        else:
            self._idle.append(process)

    def discard(self, process: HandlerProcess) -> None:
        """End a process whose attempt went wrong, and start its replacement now."""
        self._busy.release()
        process.kill()
        # Reap it in the background: the attempt does not wait for that.
        asyncio.get_running_loop().create_task(process.process.wait())
        self.start_spare()

    def close(self) -> None:
        """Kill every handler process (attempts still running were cut short already)."""
        self._closed = True
        if self._spare is not None:
            self._spare.cancel()
            self._spare.add_done_callback(_retrieve)
            self._spare = None
        for process in self._idle:
            process.kill()
        self._idle.clear()


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

    def close(self) -> None:
        self.pool.close()

    async def run(self, envelope: Envelope, context: Context, watchdog: Watchdog) -> Outcome:
        task = asyncio.current_task()
        assert task is not None
        began = time.perf_counter()
        try:
            process = await self.pool.acquire()
        except HandlerProcessDied as exc:
            log.error("handler_process_start_failed", function=self.spec.name, error=str(exc))
            return _crash_outcome(str(exc), began)
        start = RunStart()
        start.at = time.perf_counter()
        watchdog.watch(task, self.spec.timeout_s, start)
        try:
            request = contract.pack({
                "id": context.invocation_id,
                "fn": context.function,
                "attempt": context.attempt,
                "deadline": time.time() + self.spec.timeout_s,
                "meta": context.meta,
                "payload": envelope.payload,
            })  # fmt: skip
            answer = await process.call(request)
        except asyncio.CancelledError:
            # A timeout, a stop or shutdown: the attempt ends now, and so does its process.
            self.pool.discard(process)
            if watchdog.release(task):
                return _timeout_outcome(self.spec, start.began())
            raise
        except HandlerProcessDied as exc:
            self.pool.discard(process)
            if watchdog.release(task):
                return _timeout_outcome(self.spec, start.began())
            log.warning("handler_process_died", function=self.spec.name,
                        invocation_id=context.invocation_id, exit=str(exc))  # fmt: skip
            return _crash_outcome(str(exc), start.began())
        except BaseException:
            watchdog.release(task)
            self.pool.discard(process)
            raise
        self.pool.release(process)
        if watchdog.release(task):  # answered, but only after its deadline
            return _timeout_outcome(self.spec, start.began())
        return _answer_outcome(answer, start.began())
