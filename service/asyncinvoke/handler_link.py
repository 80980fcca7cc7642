"""The worker's end of one handler process (``executor = "process"``): the socket to it,
the attempts it holds in order, and when each of them began.

The handler process takes requests in the order they were sent and answers each, in that
order (``_handler_process.py``). So the attempts a process holds are a FIFO queue: the
first runs, the ones behind it wait in the process's socket. The first began when it was
sent to an idle process, or when the answer before it arrived (the process starts the
next request the moment it has written an answer); that is when its timeout starts. If
the process ends, the first attempt is the one that ran (it failed: ``HandlerProcessDied``)
and every one behind it never began (``NotStarted``: it goes to another process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from asyncinvoke import contract
from asyncinvoke._handler_process import FD_ENV, FRAME, PARENT_ENV, SYS_PATH_ENV
from asyncinvoke.errors import HandlerProcessDied, NotStarted
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.observability import describe_exit, get_logger
from asyncinvoke.runners import RunStart, Watchdog

# How long a handler process may take to start and import its handler.
START_TIMEOUT_S = 60.0

log = get_logger(component="process_executor")


class Job:
    """One attempt sent to a handler process: its answer, and when it began."""

    __slots__ = ("answer", "seq", "skipped", "start", "task", "timeout_s", "watchdog")

    def __init__(self, task: asyncio.Task[Any], watchdog: Watchdog, timeout_s: float, seq: int):
        self.task = task
        self.watchdog = watchdog
        self.timeout_s = timeout_s
        self.seq = seq  # names it in a skip request
        self.answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.start = RunStart()
        self.skipped = False

    def begin(self, now: float) -> None:
        """Its process took it up: its timeout starts now."""
        self.start.at = now
        if not self.skipped:
            self.watchdog.watch(self.task, self.timeout_s, self.start)

    def running(self, process: HandlerProcess) -> bool:
        """Whether its handler runs now in ``process`` (begun, not answered)."""
        return bool(process.alive and process.jobs and process.jobs[0] is self)


class HandlerProcess(asyncio.Protocol):
    """One handler process, the socket to it and the attempts it holds.

    The socket is read by this protocol itself: an answer settles its attempt in the
    same callback that reads it, with no reader task and no stream in between (each
    would be a turn of the event loop per attempt, which at a CPU-bound handler's rate
    is one wake-up of the worker process each).
    """

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self.transport: asyncio.Transport | None = None
        self.jobs: deque[Job] = deque()
        self.alive = True
        self.on_change: Callable[[], None] | None = None  # a job left, or the process ended
        self._rest = b""  # the start of a frame not read whole yet
        self._hello: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._ending: asyncio.Task[None] | None = None  # finds out how it ended

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
        started = cls(process)
        try:
            await asyncio.get_running_loop().create_unix_connection(lambda: started, sock=ours)
            async with asyncio.timeout(START_TIMEOUT_S):
                hello = await started._hello
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

    # -- the protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.alive:
            return
        if self._rest:
            data, self._rest = self._rest + data, b""
        view, offset, end_of_data = memoryview(data), 0, len(data)
        while end_of_data - offset >= FRAME.size:
            end = offset + FRAME.size + FRAME.unpack_from(data, offset)[0]
            if end > end_of_data:
                break
            frame = contract.unpack(view[offset + FRAME.size : end])
            offset = end
            if not self._hello.done():
                self._hello.set_result(frame)
            elif not self._answered(frame):
                return
        if offset < end_of_data:
            self._rest = data[offset:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.alive:
            return  # killed: its attempts were told already
        # It closed its socket, so it ends (or ended): its attempts learn how once it has.
        self.alive = False
        self._ending = asyncio.get_running_loop().create_task(self._end())

    def _answered(self, answer: Any) -> bool:
        """An answer to the first attempt it holds; the one behind begins now. False if
        the process broke the protocol (an answer nothing asked for): it is killed."""
        if not self.jobs:
            log.error("handler_process_unasked_answer", pid=self.process.pid)
            self.kill()
            return False
        job = self.jobs.popleft()
        if not job.answer.done():
            job.answer.set_result(answer)
        elif "skipped" not in answer:
            log.warning("handler_ran_after_stop", seq=job.seq)
        if self.jobs:
            self.jobs[0].begin(time.perf_counter())
        if self.on_change is not None:
            self.on_change()
        return True

    async def _end(self) -> None:
        how = HandlerProcessDied(await self._how_it_ended())
        if not self._hello.done():
            self._hello.set_exception(how)
        self._ended(how)

    # -- the worker's side -----------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        if self.transport is not None:
            self.transport.write(FRAME.pack(len(frame)) + frame)

    def submit(self, job: Job, request: bytes) -> None:
        """Send an attempt; it begins now if the process is idle, else after the ones
        before it. A write the process can no longer take shows as its end."""
        self.jobs.append(job)
        if len(self.jobs) == 1:
            job.begin(time.perf_counter())
        self._write(request)

    def skip(self, job: Job) -> None:
        """An attempt stopped while it waited here: the process answers it unrun (or, if
        it took it up already, runs it and its result is dropped)."""
        job.skipped = True
        if self.alive:
            self._write(contract.pack({"skip": job.seq}))

    def _ended(self, exc: HandlerProcessDied) -> None:
        """The first attempt ran and failed with ``exc``; the ones behind never began."""
        self.alive = False
        jobs, self.jobs = self.jobs, deque()
        for index, job in enumerate(jobs):
            if job.answer.done():
                continue
            job.answer.set_exception(exc if index == 0 else NotStarted())
        if self.on_change is not None:
            self.on_change()

    async def _how_it_ended(self) -> str:
        try:
            returncode = await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            return "closed its socket (killed now)"
        return describe_exit(returncode)

    def kill(self) -> None:
        was_alive = self.alive
        self.alive = False
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        if self.transport is not None:
            self.transport.close()
        if not self._hello.done():
            self._hello.set_exception(HandlerProcessDied("was killed"))
            self._hello.exception()  # retrieved: start() reports its own reason
        if was_alive:
            self._ended(HandlerProcessDied("was killed"))
