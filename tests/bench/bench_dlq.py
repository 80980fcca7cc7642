"""``python -m tests.bench.bench_dlq [--n N]``: export N failure records; rate and peak RSS.

Fills a throwaway namespace's ``{ns}.failed`` with N records shaped like the worker's
(about 1 KiB each, stack trace included), runs ``asyncinvoke dlq export FILE`` as a
subprocess, and reports records/s (from the export's own clock and from process start
to exit) and the exporting process's peak RSS. Checks that the file has every record
and that the queue still holds them, then deletes the namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
from pamqp import commands as spec

from asyncinvoke import contract, topology
from asyncinvoke.contract import Envelope

ROOT = Path(__file__).resolve().parents[2]
AMQP_URL = os.environ.get("ASYNCINVOKE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
DEFAULT_N = 100_000
FUNCTION = "resize"
WINDOW = 1000


def _error() -> contract.ErrorInfo:
    try:
        raise TimeoutError("the image service did not answer within 30 s")
    except TimeoutError as exc:
        return contract.ErrorInfo.of(exc)


def record(index: int, now_ms: int, error: contract.ErrorInfo) -> dict[str, Any]:
    envelope = Envelope(
        id=f"bench{index:08d}",
        fn=FUNCTION,
        payload={"bucket": "uploads", "key": f"user/{index}/photo.png", "sizes": [64, 256, 1024]},
        created_at=now_ms - 3_600_000,
        attempt=3,
        meta={"trace_id": uuid.UUID(int=index).hex},
    )
    return contract.Record(
        request_id=envelope.id,
        function=FUNCTION,
        condition=contract.RETRIES_EXHAUSTED,
        attempts=4,
        request_payload=envelope.payload,
        status_code=500,
        function_error=contract.TIMEOUT,
        response=error,
        invocation=envelope.for_replay(),
        timestamp=now_ms + index,
    ).to_wire()


async def fill(names: topology.Names, n: int) -> int:
    """Publish n records, confirmed; returns the size of one record in bytes."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await topology.declare(channel, names, [])
        underlay = await channel.get_underlay_channel()
        window = asyncio.Semaphore(WINDOW)
        now, error = int(time.time() * 1000), _error()
        headers = {"x-function": FUNCTION, "x-condition": contract.RETRIES_EXHAUSTED}

        async def one(index: int) -> None:
            async with window:
                await underlay.basic_publish(
                    contract.pack(record(index, now, error)),
                    exchange=names.failed,
                    routing_key=FUNCTION,
                    properties=spec.Basic.Properties(
                        message_id=f"bench{index:08d}", delivery_mode=2, headers=headers
                    ),
                    timeout=60,
                )

        for start in range(0, n, 10_000):
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + 10_000))))
        return len(contract.pack(record(0, now, error)))
    finally:
        await connection.close()


async def depth(queue: str) -> int:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        return await topology.queue_depth(connection, queue) or 0
    finally:
        await connection.close()


async def cleanup(names: topology.Names) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        await topology.delete(connection, topology.core_plan(names))
    finally:
        await connection.close()


async def export(names: topology.Names, path: Path) -> tuple[float, float, int]:
    """Run the export; (its own seconds, process seconds, peak RSS in KiB)."""
    env = {
        **os.environ,
        "ASYNCINVOKE_AMQP_URL": AMQP_URL,
        "ASYNCINVOKE_NAMESPACE": names.ns,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncinvoke",
        "dlq",
        "export",
        str(path),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 600)
    wall = time.monotonic() - started
    if process.returncode != 0:
        raise SystemExit(f"export failed ({process.returncode}): {stderr.decode().strip()}")
    match = re.search(r" in ([0-9.]+) s", stdout.decode())
    own = float(match.group(1)) if match else wall
    # The only child this process waits for: its peak is the exporter's (KiB on Linux).
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return own, wall, peak_kib


async def main(n: int) -> None:
    names = topology.Names(f"bench-dlq-{uuid.uuid4().hex[:8]}")
    try:
        started = time.monotonic()
        size = await fill(names, n)
        print(
            f"  · filled {n:,} records of {size} bytes in {time.monotonic() - started:.1f} s",
            file=sys.stderr,
        )
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "failed.jsonl"
            own, wall, peak_kib = await export(names, path)
            with path.open("rb") as stream:
                lines = sum(1 for _ in stream)
            file_mib = path.stat().st_size / 2**20
        left = await depth(names.failed)
        assert lines == n, f"the export has {lines} lines for {n} records"
        assert left == n, f"the queue holds {left} records after the export, not {n}"
        print(f"dlq export of {n:,} records ({file_mib:.0f} MiB of JSON lines; queue intact)")
        print(f"  export's own time : {own:6.1f} s  {n / own:9,.0f} records/s")
        print(f"  process start→exit: {wall:6.1f} s  {n / wall:9,.0f} records/s")
        print(f"  peak RSS          : {peak_kib / 1024:6.1f} MiB")
    finally:
        await cleanup(names)


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_dlq", description=__doc__)
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"records (default {DEFAULT_N:,})")
    asyncio.run(main(parser.parse_args(argv).n))


if __name__ == "__main__":
    run()
