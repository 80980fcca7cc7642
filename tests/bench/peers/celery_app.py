"""Celery: one no-op task on RabbitMQ (py-amqp), late acks, persistent messages.

    celery -A tests.bench.peers.celery_app worker --pool=solo --concurrency=1 -Q $BENCH_QUEUE

The queue is Celery's default kind (a classic durable queue) with an exchange of the same
name. Remote control, gossip, mingle, heartbeats and events are off: they declare shared
queues and exchanges and are not part of running tasks. Prefetch = ``BENCH_PREFETCH``
(worker_prefetch_multiplier x concurrency 1).
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from celery import Celery
from kombu import Exchange, Queue

from tests.bench.peers import probe
from tests.bench.peers.publishing import (
    AMQP_URL,
    PREFETCH,
    QUEUE,
    TASK,
    argument,
    paced,
    parse,
    report,
)


def _kombu_url(url: str) -> str:
    """kombu spells the default vhost '/' as a second slash."""
    parts = urlsplit(url)
    return url + "/" if parts.path in ("", "/") and not url.endswith("//") else url


app = Celery("bench_celery", broker=_kombu_url(AMQP_URL))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=PREFETCH,
    task_ignore_result=True,
    task_default_delivery_mode="persistent",
    task_queues=[Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE)],
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    task_send_sent_event=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
)


@app.task(name="bench.noop")
def noop(sent_ns: int) -> None:
    probe.hit(sent_ns)


@app.task(name="bench.burn")
def burn(sent_ns: int) -> None:
    probe.hit(sent_ns)
    probe.burn()


def main(argv: list[str] | None = None) -> None:
    args = parse("python -m tests.bench.peers.celery_app", argv)
    started = time.perf_counter()
    options = {"countdown": args.delay_s} if args.delay_s else {}
    # A connection of its own, closed with the AMQP handshake at the end: a socket merely
    # dropped at exit (as a pooled connection is) can lose the last publishes.
    with app.connection_for_write() as connection:
        producer = connection.Producer()
        for _ in paced(args.n, args.rate):
            task = burn if TASK == "burn" else noop
            task.apply_async((argument(args),), producer=producer, **options)
    report(args.n, started)


if __name__ == "__main__":
    main()
