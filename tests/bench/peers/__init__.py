"""The peer libraries' apps for the side-by-side benchmarks (bench_peers, bench_delay).

One module per system: ``ours`` (asyncinvoke handlers), ``celery_app``, ``dramatiq_app``,
``taskiq_app``. Every task or handler calls ``probe.hit(sent_ns)``, so all of them are
timed the same way, inside the worker process that runs them. ``runner`` starts, measures
and stops the workers for the benchmark modules.

Each peer module reads its settings from the environment (``BENCH_QUEUE``: the queue, or
prefix, of one run; ``BENCH_AMQP_URL``; ``BENCH_PREFETCH``) and has a ``publish`` command
that hands over tasks with the peer's own producer API::

    python -m tests.bench.peers.celery_app publish --n 20000 [--rate 500] [--delay-s 600]
"""
