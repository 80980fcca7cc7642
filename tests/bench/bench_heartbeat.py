"""heartbeat: does a long CPU-bound sync handler cost the worker's connection its heartbeat?

    .venv/bin/python -m tests.bench.bench_heartbeat [--heartbeat 2] [--seconds 6]

The worker connects with a short AMQP heartbeat (``?heartbeat=H`` in its URL) and runs
one invocation of a handler that burns the CPU for S seconds, in each executor:

- ``spin``: a pure-Python loop. The interpreter hands the GIL over every 5 ms
  (``sys.getswitchinterval()``), so the worker's event loop still gets turns.
- ``gil``: one long C call (``sum(range(n))``) that never lets go of the GIL: in a
  thread, nothing else in the worker process runs until it returns.

Scaling: what matters is the handler's run time against the heartbeat timeout. The
default here, S = 3 x H, stands for a 60 s handler on a connection with a 20 s
heartbeat (RabbitMQ's default is 60 s: a 60 s stall is right at its edge).

Reported per case: whether the worker logged ``broker_connection_lost``, how many times
the invocation ran (a lost connection returns the delivery: it runs again), and the
longest stall of the worker's event loop that the worker's watchdog would see (the gap
between its WATCHDOG heartbeats to a fake systemd, sent every 0.1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aio_pika

from asyncinvoke import Client, contract
from tests.bench.common import AMQP_URL, QUORUM, ROOT, Namespace, say, stop_process, tail

CASES = [("thread", "spin"), ("thread", "gil"), ("process", "spin"), ("process", "gil")]


def gil_units_per_second() -> float:
    """How large ``n`` makes ``sum(range(n))`` take one second here."""
    n = 10_000_000
    started = time.perf_counter()
    sum(range(n))
    return n / (time.perf_counter() - started)


async def one_case(
    workdir: Path, executor: str, kind: str, heartbeat: int, seconds: float, gil_rate: float
) -> dict[str, object]:
    space = Namespace(f"hb-{executor}-{kind}")
    results = space.queue_name("results")
    handler = "burn_ms" if kind == "spin" else "hold_gil"
    event: object = seconds * 1000 if kind == "spin" else {"n": int(gil_rate * seconds)}
    config = workdir / f"{space.ns}.toml"
    config.write_text(
        f'[functions.cpu]\nhandler = "tests.support.handlers:{handler}"\n'
        f'executor = "{executor}"\ntimeout = {seconds * 10:g}\nconcurrency = 1\n'
        f'on_success = "queue:{results}"\n'
    )
    log_path = workdir / f"{space.ns}.log"
    notify_path = workdir / f"{space.ns}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.setblocking(False)
    beats: list[float] = []
    worker = None
    connection = await aio_pika.connect(AMQP_URL)
    try:
        async with connection.channel() as channel:
            await channel.declare_queue(results, durable=True, arguments=QUORUM)
        await connection.close()
        env = space.env(
            ASYNCINVOKE_AMQP_URL=f"{AMQP_URL}?heartbeat={heartbeat}",
            NOTIFY_SOCKET=str(notify_path),
            WATCHDOG_USEC="200000",
        )
        with log_path.open("wb") as log_file:
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "asyncinvoke", "worker", "--config", str(config),
                env=env, cwd=str(ROOT), stdout=log_file, stderr=log_file,
            )  # fmt: skip
        loop = asyncio.get_running_loop()

        async def listen() -> None:
            while True:
                data = await loop.sock_recv(sock, 4096)
                if b"WATCHDOG=1" in data:
                    beats.append(time.monotonic())

        listener = asyncio.create_task(listen())
        async with asyncio.timeout(60):
            while not beats:
                await asyncio.sleep(0.05)
        await asyncio.sleep(heartbeat)
        async with Client(settings=space.settings) as client:
            started = time.monotonic()
            await client.invoke("cpu", event)
            record = None
            async with asyncio.timeout(seconds * 6 + 60):
                while record is None:
                    # A result, or the failure record of an invocation that killed the
                    # connection every time it ran (DeliveryLimitExceeded).
                    record = await _take(results) or await _take(space.names.failed)
                    await asyncio.sleep(0.1)
            took = time.monotonic() - started
        await asyncio.sleep(heartbeat)  # a late close still counts
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        text = log_path.read_text(errors="replace")
        during = [b for b in beats if b >= started - 0.5]
        gaps = [later - earlier for earlier, later in itertools.pairwise(during)]
        return {
            "executor": executor,
            "handler": kind,
            "connection_lost": "broker_connection_lost" in text,
            "runs": record["requestContext"]["approximateInvokeCount"],
            "condition": record["requestContext"]["condition"],
            "attempt_lines": sum(1 for line in text.splitlines() if '"event":"attempt"' in line),
            "longest_loop_stall_s": round(max(gaps, default=0.0), 2),
            "seconds_to_result": round(took, 1),
        }
    except Exception as exc:
        say(f"{executor}/{kind}: {exc!r}\n{tail(log_path)}")
        return {"executor": executor, "handler": kind, "error": repr(exc)}
    finally:
        await stop_process(worker)
        sock.close()
        await space.cleanup()


async def _take(queue_name: str) -> dict[str, Any] | None:
    """One record from the queue, on a connection of its own (another engineer's test may
    drop every connection of the shared broker)."""
    try:
        connection = await aio_pika.connect(AMQP_URL)
    except Exception:
        return None
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name, ensure=False)
        message = await queue.get(no_ack=True, fail=False)
        return None if message is None else dict(contract.unpack(message.body))
    except Exception:
        return None
    finally:
        await connection.close()


async def run(args: argparse.Namespace) -> list[dict[str, object]]:
    gil_rate = gil_units_per_second()
    rows = []
    with tempfile.TemporaryDirectory(prefix="asyncinvoke-heartbeat-") as tmp:
        for executor, kind in CASES:
            if args.only and f"{executor}/{kind}" not in args.only.split(","):
                continue
            row = await one_case(Path(tmp), executor, kind, args.heartbeat, args.seconds, gil_rate)
            say(json.dumps(row))
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_heartbeat")
    parser.add_argument("--heartbeat", type=int, default=2, help="AMQP heartbeat, s")
    parser.add_argument("--seconds", type=float, default=6.0, help="handler CPU time, s")
    parser.add_argument("--only", default="", help="e.g. thread/gil,process/spin")
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args))
    print(f"heartbeat {args.heartbeat} s, handler {args.seconds:g} s of CPU")
    print(
        "| executor | handler | connection lost | runs | condition "
        "| longest loop stall (s) | s to result |"
    )
    print("|---|---|---|---:|---|---:|---:|")
    for row in rows:
        print(
            f"| {row['executor']} | {row['handler']} | {row.get('connection_lost', '-')} "
            f"| {row.get('runs', row.get('error'))} | {row.get('condition', '-')} "
            f"| {row.get('longest_loop_stall_s', '-')} "
            f"| {row.get('seconds_to_result', '-')} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
