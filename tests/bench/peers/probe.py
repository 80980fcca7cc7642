"""The one measurement every system's task makes: ``hit(sent_ns)`` at the start of a task.

Cheap and the same for all: an in-process counter under a lock (Dramatiq runs tasks on
threads). ``sent_ns`` is what the producer put in the task's argument:

- ``-1``: a warm-up task; the first one creates ``$BENCH_OUT.warm`` (the worker consumes).
- ``0``: a throughput task; only counted.
- ``> 0``: the producer's ``time.time_ns()`` just before it published; the delay to this
  task's start is kept, in ms.

With ``BENCH_MULTI=1`` (``bench_processes``: systems that run tasks in several
processes) each process instead keeps its own count, the times of its first and latest
task, and its CPU time at both, in a small memory-mapped file ``$BENCH_OUT.pid.PID``
that the harness reads and sums (``read_multi``). Nothing else is written then.

Every PROGRESS_EVERY tasks ``$BENCH_OUT.progress`` says how many ran so far (for the
harness's error messages). When ``$BENCH_N`` tasks were counted, ``$BENCH_OUT`` is written
(atomically) as JSON: ``{"count", "first_ns", "last_ns", "latencies_ms"}``, times from
``time.time_ns()`` at the start of the first and of the N-th task.
"""

from __future__ import annotations

import contextlib
import glob
import json
import mmap
import os
import struct
import threading
import time
from pathlib import Path

_lock = threading.Lock()
_count = 0
_first_ns = 0
_latencies_ms: list[float] = []
_warm = False
PROGRESS_EVERY = 500  # tasks between two writes of $BENCH_OUT.progress (diagnostics)
MULTI = os.environ.get("BENCH_MULTI") == "1"
SLOT = struct.Struct("<qqqdd")  # count, first_ns, last_ns, cpu_first_s, cpu_last_s
_slot: mmap.mmap | None = None
_slot_pid = 0
_cpu_first = 0.0


def _multi_hit(now: int) -> None:
    """Count one task in this process's slot file (see the module's docstring)."""
    global _slot, _slot_pid, _count, _first_ns, _cpu_first
    cpu = time.process_time()
    with _lock:
        pid = os.getpid()
        if _slot is None or _slot_pid != pid:  # first task, or a fork of a process that had one
            _, out = _target()
            path = f"{out}.pid.{pid}"
            with open(path, "wb") as handle:
                handle.write(b"\0" * SLOT.size)
            with open(path, "r+b") as handle:
                _slot = mmap.mmap(handle.fileno(), SLOT.size)
            _slot_pid, _count = pid, 0
        _count += 1
        if _count == 1:
            _first_ns, _cpu_first = now, cpu
        SLOT.pack_into(_slot, 0, _count, _first_ns, now, _cpu_first, cpu)


def read_multi(out: str) -> list[tuple[int, int, int, float, float]]:
    """Every process's slot: (count, first_ns, last_ns, cpu_first_s, cpu_last_s)."""
    slots = []
    for path in glob.glob(f"{glob.escape(out)}.pid.*"):
        with contextlib.suppress(OSError, struct.error), open(path, "rb") as handle:
            slots.append(SLOT.unpack(handle.read(SLOT.size)))
    return slots


def _target() -> tuple[int, str]:
    return int(os.environ.get("BENCH_N", "0")), os.environ.get("BENCH_OUT", "")


def _write(path: str, data: dict[str, object], target: str | None = None) -> None:
    """Write ``path``, then rename it to ``target`` (default: write ``path`` atomically)."""
    tmp = Path(path if target else path + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(target or path)


def hit(sent_ns: int | None) -> None:
    global _count, _first_ns, _warm
    now = time.time_ns()
    sent = int(sent_ns or 0)
    n, out = _target()
    if sent < 0:
        if not _warm and out:
            _warm = True
            _write(out + ".warm", {"at_ns": now})
        return
    if MULTI:
        _multi_hit(now)
        return
    with _lock:
        _count += 1
        if _count == 1:
            _first_ns = now
        if sent > 0:
            _latencies_ms.append((now - sent) / 1e6)
        done = _count == n
        count = _count
    if out and count % PROGRESS_EVERY == 0 and not done:
        with contextlib.suppress(OSError):  # diagnostics only: never fail a task for it
            _write(out + f".progress.{count}", {"count": count, "at_ns": now}, out + ".progress")
    if done and out:
        _write(
            out,
            {
                "count": n,
                "first_ns": _first_ns,
                "last_ns": now,
                "latencies_ms": _latencies_ms,
            },
        )


BURN_MS = float(os.environ.get("BENCH_BURN_MS", "2"))


def burn() -> int:
    """Burn BENCH_BURN_MS (default 2) ms of pure-Python CPU: the CPU-bound task. CPU time
    of this thread, not wall time: on a busy machine a task does the same work."""
    end = time.thread_time() + BURN_MS / 1000
    count = 0
    while time.thread_time() < end:
        count += 1
    return count
