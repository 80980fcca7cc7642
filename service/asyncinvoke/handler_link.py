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


class HandlerProcess:
    """One handler process, the socket to it and the attempts it holds."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ):
        self.process = process
        self.reader = reader
        self.writer = writer
        self.jobs: deque[Job] = deque()
        self.alive = True
        self.on_change: Callable[[], None] | None = None  # a job left, or the process ended
        self._reading: asyncio.Task[None] | None = None

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
        started._reading = asyncio.get_running_loop().create_task(started._read_answers())
        return started

    async def receive(self) -> Any:
        """The next frame; HandlerProcessDied when the process ended instead."""
        try:
            header = await self.reader.readexactly(FRAME.size)
            body = await self.reader.readexactly(FRAME.unpack(header)[0])
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise HandlerProcessDied(await self._how_it_ended()) from exc
        return contract.unpack(body)

    def submit(self, job: Job, request: bytes) -> None:
        """Send an attempt; it begins now if the process is idle, else after the ones
        before it. A write the process can no longer take shows as its end, in the reader."""
        self.jobs.append(job)
        if len(self.jobs) == 1:
            job.begin(time.perf_counter())
        self.writer.write(FRAME.pack(len(request)) + request)

    def skip(self, job: Job) -> None:
        """An attempt stopped while it waited here: the process answers it unrun (or, if
        it took it up already, runs it and its result is dropped)."""
        job.skipped = True
        if self.alive:
            skip = contract.pack({"skip": job.seq})
            self.writer.write(FRAME.pack(len(skip)) + skip)

    async def _read_answers(self) -> None:
        try:
            while True:
                answer = await self.receive()
                job = self.jobs.popleft()
                if not job.answer.done():
                    job.answer.set_result(answer)
                elif "skipped" not in answer:
                    log.warning("handler_ran_after_stop", seq=job.seq)
                if self.jobs:
                    self.jobs[0].begin(time.perf_counter())
                if self.on_change is not None:
                    self.on_change()
        except HandlerProcessDied as exc:
            self._ended(exc)

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
            self.kill()
            return "closed its socket (killed now)"
        return describe_exit(returncode)

    def kill(self) -> None:
        was_alive = self.alive
        self.alive = False
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.writer.close()
        if self._reading is not None and self._reading is not asyncio.current_task():
            self._reading.cancel()
        if was_alive:
            self._ended(HandlerProcessDied("was killed"))
