"""Handlers the tests configure. Module state is per process: in-process tests read
``CALLS`` directly; subprocess tests observe through destinations instead."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import defaultdict
from typing import Any

from asyncinvoke import Context, NonRetryableError, Throttled
from tests.support.poison import POISON_EXIT_STATUS

CALLS: dict[str, list[tuple[str, int, float]]] = defaultdict(list)  # fn -> (id, attempt, t)


def _note(context: Context) -> None:
    CALLS[context.function].append((context.invocation_id, context.attempt, time.time()))


async def noop(event: Any, context: Context) -> None:
    return None


async def echo(event: Any, context: Context) -> Any:
    _note(context)
    return event


def sync_echo(event: Any, context: Context) -> Any:
    _note(context)
    return event


async def started_at(event: Any, context: Context) -> int:
    """Returns the start time in ms, so a test can measure delay lateness."""
    _note(context)
    return time.time_ns() // 1_000_000


async def meta(event: Any, context: Context) -> dict[str, str]:
    """Returns the invocation's meta (trace ids), so a test can see what arrived."""
    _note(context)
    return dict(context.meta)


async def fail_until(event: Any, context: Context) -> str:
    """Fails while attempt < event["fail_times"]."""
    _note(context)
    if context.attempt < int(event["fail_times"]):
        raise RuntimeError(f"planned failure on attempt {context.attempt}")
    return f"ok on attempt {context.attempt}"


async def always_fail(event: Any, context: Context) -> None:
    _note(context)
    raise ValueError("always fails")


async def refuse(event: Any, context: Context) -> None:
    _note(context)
    raise NonRetryableError("refused: will not get better")


async def sleep(event: Any, context: Context) -> str:
    _note(context)
    await asyncio.sleep(float(event["seconds"]))
    return "slept"


def sync_sleep(event: Any, context: Context) -> str:
    _note(context)
    time.sleep(float(event["seconds"]))
    return "slept"


# Set by a test to end every sync_hang handler: a thread cannot be cancelled.
HANG_RELEASE = threading.Event()


def sync_hang(event: Any, context: Context) -> str:
    """A sync handler stuck far past its timeout (a socket that never answers), until
    HANG_RELEASE is set or event["seconds"] pass."""
    _note(context)
    HANG_RELEASE.wait(float(event["seconds"]))
    return "released"


async def marked_sleep(event: Any, context: Context) -> str:
    """Appends "id attempt" to the file event["marks"] at its start, then sleeps: a test in
    another process sees when attempts started, and how many times each ran."""
    with open(event["marks"], "a") as marks:
        marks.write(f"{context.invocation_id} {context.attempt}\n")
    await asyncio.sleep(float(event["seconds"]))
    return "slept"


async def fail_with_lone_surrogate(event: Any, context: Context) -> str:
    """Fails its first attempt with an error text that no UTF-8 encoder takes (a lone
    surrogate, as a bytes.decode(errors="surrogateescape") leaves), then succeeds."""
    _note(context)
    if context.attempt == 0:
        raise RuntimeError("cannot read b'\\x80' as \udc80")
    return f"ok on attempt {context.attempt}"


async def refuse_first(event: Any, context: Context) -> str:
    """Fails for good (NonRetryableError) the first time an invocation id runs, then succeeds:
    a failure an operator fixes, then replays."""
    _note(context)
    runs = [call for call in CALLS[context.function] if call[0] == context.invocation_id]
    if len(runs) == 1:
        raise NonRetryableError("refused the first time")
    return f"ok on run {len(runs)}"


async def die_on_poison(event: Any, context: Context) -> str:
    """Kills the whole worker process (status POISON_EXIT_STATUS) for a poison event."""
    if isinstance(event, dict) and event.get("poison"):
        os._exit(POISON_EXIT_STATUS)
    return "fine"


async def whose(event: Any, context: Context) -> int:
    """The pid of the process that ran it."""
    return os.getpid()


def sync_whose(event: Any, context: Context) -> int:
    return os.getpid()


def spin_forever(event: Any, context: Context) -> None:
    """A sync handler that never ends on its own (pure-Python CPU, holding the GIL in
    turns), as a bug would."""
    while True:
        pass


def spin_once_then_pid(event: Any, context: Context) -> int:
    """Writes its pid to the file event["pidfile"] and spins forever on its first attempt;
    later attempts return their pid."""
    if context.attempt == 0:
        with open(event["pidfile"], "w") as pidfile:
            pidfile.write(str(os.getpid()))
        spin_forever(event, context)
    return os.getpid()


def hold_gil(event: Any, context: Context) -> int:
    """One long C call that never lets go of the GIL (about event["n"] / 10**8 s per
    second of this machine): nothing else in its process runs meanwhile."""
    return sum(range(int(event["n"])))


def exit_hard(event: Any, context: Context) -> int:
    """Ends its own process without cleanup (os._exit) on the first attempt, or with a
    segfault when the event says so; later attempts return their pid."""
    if context.attempt == 0:
        if event == "segfault":
            import ctypes

            ctypes.string_at(0)
        os._exit(3)
    return os.getpid()


def burn_ms(event: Any, context: Context) -> int:
    """Burns about ``event`` ms of pure-Python CPU."""
    end = time.perf_counter() + float(event) / 1000
    count = 0
    while time.perf_counter() < end:
        count += 1
    return count


def batch_numbers(event: Any, context: Context) -> list[Any]:
    """A RabbitMQ trigger's batch (JSON list of CloudEvents) → each event's ``data["n"]``,
    or its ``data_base64`` when the body was not JSON: a short record of what arrived."""
    import json

    return [
        e["data"]["n"] if isinstance(e.get("data"), dict) else e.get("data_base64")
        for e in json.loads(event)
    ]


async def throttled_once(event: Any, context: Context) -> str:
    """Busy (``Throttled``, retry after 1 s) the first time an invocation id comes, then done."""
    _note(context)
    if [call[0] for call in CALLS[context.function]].count(context.invocation_id) == 1:
        raise Throttled("the printer is busy", retry_after=1)
    return "printed"


def scripted(event: Any, context: Context) -> dict[str, Any]:
    """A sync handler for the process executor's pipeline: appends "name pid" to the file
    event["log"] when it starts, then does event["do"] on its first attempt ("spin":
    forever; "exit": ends its process; "sleep": event["s"] seconds, every attempt).
    Returns its pid and how long its context gave it (deadline - start, in seconds)."""
    started = time.time()
    with open(event["log"], "a") as log:
        log.write(f"{event['name']} {os.getpid()}\n")
    if event.get("do") == "sleep":
        time.sleep(float(event["s"]))
    elif context.attempt == 0 and event.get("do") == "spin":
        spin_forever(event, context)
    elif context.attempt == 0 and event.get("do") == "exit":
        os._exit(3)
    return {"pid": os.getpid(), "given": context.deadline - started}


def always_throttled(event: Any, context: Context) -> None:
    """A sync handler whose resource is always busy (retry after 1 s)."""
    raise Throttled("the quota is spent", retry_after=1)
