"""Triggers: timer lateness, and RabbitMQ source trigger throughput against a bare
aio-pika consume-and-republish loop.

    .venv/bin/python -m tests.bench.bench_triggers [--timers 10] [--seconds 30]
                                                   [--messages 10000] [--rounds 2]

Timer lateness: one worker process with ``--timers`` triggers (``@every 1s`` and the cron
form ``* * * * * *``, alternately) for ``--seconds``. For each tick: *published* = the
envelope's ``created_at`` (the moment the scheduler handed it to the broker) minus its
scheduled time; *started* = when its handler began, minus the scheduled time.

Source throughput: ``--messages`` JSON messages wait in a plain queue; then one worker
process turns them into invocations at batchSize 1, 10 and 100 (batchWindow 0.05 s). The
worker serves another function only (``--function other``), so the invocations stay in
their queue and only the trigger's own work is timed: from the consumer's start to the
moment the source queue is empty and every invocation is in the function's queue. The
bare loop consumes the same queue with aio-pika (prefetch 200) and republishes each
message with a publisher confirm before acking it. Rounds alternate; medians are shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aio_pika

from asyncinvoke import contract, functions
from tests.bench.common import AMQP_URL, ROOT, Namespace, percentile, say, stop_process

BATCH_SIZES = (1, 10, 100)


async def start_worker(ns: Namespace, config: Path, *args: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncinvoke",
        "worker",
        "--config",
        str(config),
        *args,
        env=ns.env(),
        cwd=str(ROOT),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return process


async def wait_line(process: asyncio.subprocess.Process, marker: str, timeout: float) -> float:
    """Read the worker's log until ``marker``; the wall time it was seen. Keeps reading
    afterwards (in the background) so the pipe never fills."""
    assert process.stderr is not None
    stream = process.stderr
    async with asyncio.timeout(timeout):
        async for raw in stream:
            if marker in raw.decode(errors="replace"):
                seen = time.time()
                break
    asyncio.get_running_loop().create_task(_drain(stream))
    return seen


async def _drain(stream: asyncio.StreamReader) -> None:
    async for _ in stream:
        pass


# -- timer lateness ----------------------------------------------------------------------


async def timer_lateness(timers: int, seconds: float, tmp: Path) -> dict[str, list[float]]:
    ns = Namespace("timers")
    results = ns.queue_name("results")
    tables = "\n".join(
        f'[[functions.tick.triggers]]\nname = "t{i}"\ntype = "timer"\n'
        f'cron = "{"@every 1s" if i % 2 else "* * * * * *"}"\n'
        for i in range(timers)
    )
    config = tmp / "timers.toml"
    config.write_text(
        f'[functions.tick]\nhandler = "tests.support.handlers:started_at"\n'
        f'on_success = "queue:{results}"\n{tables}'
    )
    connection = await aio_pika.connect(AMQP_URL)
    published: list[float] = []
    started: list[float] = []
    process = None
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            results, durable=True, arguments={"x-queue-type": "quorum"}
        )

        async def on_record(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            record = contract.unpack(message.body)
            scheduled = int(record["requestContext"]["requestId"].rsplit("-", 1)[1])
            published.append(record["invocation"]["created_at"] - scheduled)
            started.append(record["responsePayload"] - scheduled)
            await message.ack()

        await queue.consume(on_record)
        ns.specs.append(functions.FunctionSpec("tick"))
        process = await start_worker(ns, config)
        await wait_line(process, "worker_started", 60)
        say(f"timers: {timers} triggers for {seconds:g} s")
        await asyncio.sleep(seconds)
    finally:
        await stop_process(process)
        await connection.close()
        await ns.cleanup()
    return {"published": published, "started": started}


# -- source throughput -------------------------------------------------------------------


async def fill(connection: aio_pika.abc.AbstractConnection, queue: str, count: int) -> None:
    async with connection.channel(publisher_confirms=True) as channel:
        await channel.declare_queue(queue, durable=True)
        window = 500
        for start in range(0, count, window):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(b'{"n": %d}' % n, delivery_mode=2), routing_key=queue
                    )
                    for n in range(start, min(count, start + window))
                )
            )


async def depth(connection: aio_pika.abc.AbstractConnection, queue: str) -> int:
    async with connection.channel() as channel:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count)


async def ours(batch_size: int, messages: int, tmp: Path) -> float:
    ns = Namespace(f"src{batch_size}")
    source = ns.queue_name("src")
    config = tmp / f"source{batch_size}.toml"
    config.write_text(
        '[functions.other]\nhandler = "tests.support.handlers:noop"\n'
        '[functions.sink]\nhandler = "tests.support.handlers:noop"\n'
        f'[[functions.sink.triggers]]\nname = "src"\ntype = "rabbitmq"\nqueue = "{source}"\n'
        f"batch_size = {batch_size}\nbatch_window = 0.05\n"
    )
    specs = functions.load(config).functions.values()
    await ns.declare(specs)
    connection = await aio_pika.connect(AMQP_URL)
    process = None
    try:
        await fill(connection, source, messages)
        invocations = -(-messages // batch_size)
        process = await start_worker(ns, config, "--function", "other")
        began = await wait_line(process, "trigger_source_consuming", 60)
        async with asyncio.timeout(300):
            while (
                await depth(connection, ns.names.function_queue("sink")) < invocations
                or await depth(connection, source) > 0
            ):
                await asyncio.sleep(0.01)
        return messages / (time.time() - began)
    finally:
        await stop_process(process)
        await connection.close()
        await ns.cleanup()


async def bare(messages: int) -> float:
    """Consume with aio-pika, republish each message (confirmed), then ack it."""
    ns = Namespace("srcbare")
    source, target = ns.queue_name("src"), ns.queue_name("target")
    connection = await aio_pika.connect(AMQP_URL)
    try:
        await fill(connection, source, messages)
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(target, durable=True, arguments={"x-queue-type": "quorum"})
        await channel.set_qos(prefetch_count=200)
        queue = await channel.get_queue(source)
        done = asyncio.Event()
        count = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal count
            await channel.default_exchange.publish(
                aio_pika.Message(message.body, delivery_mode=2), routing_key=target
            )
            await message.ack()
            count += 1
            if count >= messages:
                done.set()

        began = time.time()
        await queue.consume(on_message)
        await asyncio.wait_for(done.wait(), 300)
        return messages / (time.time() - began)
    finally:
        await connection.close()
        await ns.cleanup()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--part", choices=("all", "timers", "sources"), default="all")
    args = parser.parse_args()
    tmp = Path(f"/tmp/bench-triggers-{time.time_ns()}")
    tmp.mkdir()

    if args.part in ("all", "timers"):
        await report_lateness(args.timers, args.seconds, tmp)
    if args.part in ("all", "sources"):
        await report_throughput(args.messages, args.rounds, tmp)


async def report_lateness(timers: int, seconds: float, tmp: Path) -> None:
    lateness = await timer_lateness(timers, seconds, tmp)
    print(
        f"## Timer lateness: {timers} triggers, {seconds:g} s, {len(lateness['published'])} ticks"
    )
    print("| measured from the scheduled time | p50 ms | p99 ms | max ms | min ms |")
    print("|---|---|---|---|---|")
    for what, values in lateness.items():
        print(
            f"| {what} | {percentile(values, 50):.1f} | {percentile(values, 99):.1f} | "
            f"{max(values):.0f} | {min(values):.0f} |"
        )


async def report_throughput(messages: int, rounds: int, tmp: Path) -> None:
    rates: dict[str, list[float]] = {"bare aio-pika": []}
    rates.update({f"batchSize {size}": [] for size in BATCH_SIZES})
    for round_ in range(rounds):
        say(f"round {round_ + 1}: bare")
        rates["bare aio-pika"].append(await bare(messages))
        for size in BATCH_SIZES:
            say(f"round {round_ + 1}: batchSize {size}")
            rates[f"batchSize {size}"].append(await ours(size, messages, tmp))
    baseline = statistics.median(rates["bare aio-pika"])
    print(f"\n## Source trigger throughput: {messages} messages, {rounds} rounds")
    print("| consumer | msg/s (median) | every round | vs bare |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median:,.0f} | {', '.join(f'{v:,.0f}' for v in values)} | "
            f"{median / baseline:.2f} |"
        )
    print(json.dumps({"rates": rates}), file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
