"""taskiq with taskiq-aio-pika: one async no-op task.

    taskiq worker tests.bench.peers.taskiq_app:broker --workers 1 --ack-type when_executed

taskiq-aio-pika declares a topic exchange ``Q``, a quorum queue ``Q`` and a dead-letter
queue ``Q.dead_letter``; messages are persistent, published with confirms. Prefetch (qos) =
``BENCH_PREFETCH``.
"""

from __future__ import annotations

import asyncio
import time

from taskiq_aio_pika import AioPikaBroker
from taskiq_aio_pika.exchange import Exchange
from taskiq_aio_pika.queue import Queue

from tests.bench.peers import probe
from tests.bench.peers.publishing import AMQP_URL, PREFETCH, QUEUE, parse, report

broker = AioPikaBroker(
    url=AMQP_URL,
    qos=PREFETCH,
    exchange=Exchange(name=QUEUE),
    task_queues=[Queue(name=QUEUE)],
    dead_letter_queue=Queue(name=f"{QUEUE}.dead_letter"),
)


@broker.task(task_name="bench.noop")
async def noop(sent_ns: int) -> None:
    probe.hit(sent_ns)


WINDOW = 500  # kicks in flight when publishing flat out


async def _publish(n: int, rate: float, warm: bool) -> None:
    await broker.startup()
    try:
        semaphore = asyncio.Semaphore(WINDOW)

        async def one(sent_ns: int) -> None:
            async with semaphore:
                await noop.kiq(sent_ns)

        sent: list[asyncio.Task[None]] = []
        started = time.perf_counter()
        for index in range(n):
            if rate > 0:
                wait = started + index / rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            argument = -1 if warm else (time.time_ns() if rate > 0 else 0)
            sent.append(asyncio.create_task(one(argument)))
        await asyncio.gather(*sent)
    finally:
        await broker.shutdown()


def main(argv: list[str] | None = None) -> None:
    args = parse("python -m tests.bench.peers.taskiq_app", argv)
    if args.delay_s:
        raise SystemExit("taskiq: delays are not part of this benchmark")
    started = time.perf_counter()
    asyncio.run(_publish(args.n, args.rate, args.warm))
    report(args.n, started)


if __name__ == "__main__":
    main()
