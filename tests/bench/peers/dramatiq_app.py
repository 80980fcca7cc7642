"""Dramatiq: one no-op actor on RabbitmqBroker (pika), default middleware.

    dramatiq tests.bench.peers.dramatiq_app --processes 1 --threads T

Dramatiq declares ``Q``, ``Q.DQ`` (its delay queue) and ``Q.XQ`` (dead letters), classic
durable queues; messages are persistent and acknowledged after the actor ran. Delayed
messages are consumed from ``Q.DQ`` (prefetch threads x 1000) and held in the worker until
due. No retries for the no-op (max_retries=0), as it never fails anyway.
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from tests.bench.peers import probe
from tests.bench.peers.publishing import (
    AMQP_URL,
    QUEUE,
    TASK,
    argument,
    paced,
    parse,
    report,
)


class QuorumBroker(RabbitmqBroker):  # type: ignore[misc]
    """Dramatiq on quorum queues (``BENCH_QUORUM=1``), for the latency comparison of
    queue types (``bench_queue_types``); Dramatiq itself declares classic queues."""

    def _build_queue_arguments(self, queue_name: str) -> dict[str, object]:
        return {**super()._build_queue_arguments(queue_name), "x-queue-type": "quorum"}


broker = (QuorumBroker if os.environ.get("BENCH_QUORUM") == "1" else RabbitmqBroker)(url=AMQP_URL)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, actor_name="bench_noop")
def noop(sent_ns: int) -> None:
    probe.hit(sent_ns)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, actor_name="bench_burn")
def burn(sent_ns: int) -> None:
    probe.hit(sent_ns)
    probe.burn()


def main(argv: list[str] | None = None) -> None:
    args = parse("python -m tests.bench.peers.dramatiq_app", argv)
    started = time.perf_counter()
    delay_ms = round(args.delay_s * 1000) or None
    for _ in paced(args.n, args.rate):
        task = burn if TASK == "burn" else noop
        task.send_with_options(args=(argument(args),), delay=delay_ms)
    broker.close()
    report(args.n, started)


if __name__ == "__main__":
    main()
