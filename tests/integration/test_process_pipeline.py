"""The process executor's pipeline: each handler process holds the attempt it runs and
one queued behind it. A queued attempt has not begun: its timeout starts when it runs;
if its process is killed or dies first it runs elsewhere, as the same attempt; if it is
stopped while queued it never runs. Real handler processes, no broker (the executor is
driven as the worker drives it: one task per attempt, under the worker's watchdog)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from asyncinvoke.contract import Envelope, Outcome
from asyncinvoke.functions import FunctionSpec
from asyncinvoke.process_executor import ProcessExecutor
from asyncinvoke.runners import Watchdog, make_context

HANDLER = "tests.support.handlers:scripted"


@asynccontextmanager
async def executor(timeout_s: float, concurrency: int = 1) -> AsyncIterator[Any]:
    spec = FunctionSpec("piped", handler=HANDLER, executor="process", timeout_s=timeout_s,
                        concurrency=concurrency)  # fmt: skip
    processes, watchdog = ProcessExecutor(spec, handler_is_async=False), Watchdog()

    def attempt(name: str, attempt: int = 0, **event: Any) -> asyncio.Task[Outcome]:
        envelope = Envelope(id=name, fn="piped", payload={"name": name, **event},
                            created_at=0, attempt=attempt)  # fmt: skip
        return asyncio.create_task(processes.run(envelope, make_context(envelope, spec), watchdog))

    try:
        yield attempt
    finally:
        processes.close()
        watchdog.close()


def _started(log: Path) -> list[tuple[str, int]]:
    if not log.exists():
        return []
    return [
        (name, int(pid))
        for name, pid in (line.split() for line in log.read_text().split("\n") if line)
    ]


async def _wait_started(log: Path, name: str) -> None:
    async with asyncio.timeout(30):
        while name not in [started for started, _ in _started(log)]:
            await asyncio.sleep(0.01)


async def test_a_queued_attempt_times_its_run_not_its_wait(tmp_path: Path) -> None:
    """Timeout 1 s, one process: the second attempt waits 0.7 s behind the first, then
    runs 0.7 s. Counted from its sending it would be a timeout at 1 s."""
    log = tmp_path / "log"
    async with executor(timeout_s=1) as attempt:
        first = attempt("first", log=str(log), do="sleep", s=0.7)
        await _wait_started(log, "first")
        second = attempt("second", log=str(log), do="sleep", s=0.7)
        done = await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert [o.ok for o in done] == [True, True], done
    [(_, pid1), (_, pid2)] = _started(log)
    assert pid1 == pid2  # queued in the same process: the pipeline, not a second process
    # Its context's deadline counted from its start too.
    assert 0.9 <= done[1].result["given"] <= 1.0
    assert done[1].duration_ms < 1000


async def test_a_queued_attempt_behind_a_timeout_runs_in_the_next_process(
    tmp_path: Path,
) -> None:
    """The first attempt spins past its 1 s timeout: its process is killed. The attempt
    queued behind it never began, so it runs in the replacement as itself, untimed so
    far, and not as a failure."""
    log = tmp_path / "log"
    async with executor(timeout_s=1) as attempt:
        spinning = attempt("spin", log=str(log), do="spin")
        await _wait_started(log, "spin")
        queued = attempt("queued", log=str(log))
        timed_out = await asyncio.wait_for(spinning, 30)
        ran = await asyncio.wait_for(queued, 30)
    assert timed_out.error is not None and timed_out.error.error_type == "TimeoutError"
    assert 1000 <= timed_out.duration_ms <= 1500, timed_out.duration_ms
    assert ran.ok, ran
    started = _started(log)
    assert [name for name, _ in started] == ["spin", "queued"]  # once each
    assert started[0][1] != started[1][1]  # in the replacement


async def test_a_queued_attempt_behind_a_crash_runs_in_the_next_process(
    tmp_path: Path,
) -> None:
    """The running attempt ends its process: it is a failed attempt; the one queued
    behind it never began and runs elsewhere, once."""
    log = tmp_path / "log"
    async with executor(timeout_s=10) as attempt:
        crashing = attempt("crash", log=str(log), do="exit")
        await _wait_started(log, "crash")
        queued = attempt("queued", log=str(log))
        crashed, ran = await asyncio.wait_for(asyncio.gather(crashing, queued), 30)
    assert crashed.error is not None and crashed.error.error_type == "HandlerProcessDied"
    assert crashed.retryable
    assert ran.ok, ran
    assert [name for name, _ in _started(log)] == ["crash", "queued"]


async def test_an_attempt_stopped_while_queued_never_runs(tmp_path: Path) -> None:
    """Stopped (cancelled) while it waits behind another: its process skips it, and the
    attempt it waited behind goes on undisturbed in the same process."""
    log = tmp_path / "log"
    async with executor(timeout_s=10) as attempt:
        running = attempt("running", log=str(log), do="sleep", s=0.5)
        await _wait_started(log, "running")
        queued = attempt("queued", log=str(log))
        await asyncio.sleep(0.05)
        queued.cancel()
        try:
            await queued
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError("the stopped attempt returned")
        first = await asyncio.wait_for(running, 30)
        after = await asyncio.wait_for(attempt("after", log=str(log)), 30)
    assert first.ok and after.ok
    started = _started(log)
    assert [name for name, _ in started] == ["running", "after"]  # "queued" never ran
    assert started[0][1] == started[1][1]  # its process was not killed for it


async def test_concurrency_two_runs_two_and_queues_two(tmp_path: Path) -> None:
    """Concurrency 2: at most two handlers run at once, whatever is queued."""
    log = tmp_path / "log"
    async with executor(timeout_s=10, concurrency=2) as attempt:
        tasks = [attempt(f"a{i}", log=str(log), do="sleep", s=0.3) for i in range(4)]
        began = time.perf_counter()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        took = time.perf_counter() - began
    assert all(o.ok for o in outcomes)
    assert len({pid for _, pid in _started(log)}) == 2
    assert took >= 0.6  # two rounds of two, not four at once
