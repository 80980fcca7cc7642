"""Benchmarks: asyncinvoke side by side with bare aio-pika on the same broker.

Run everything and print one table::

    .venv/bin/python -m tests.bench            # every part
    .venv/bin/python -m tests.bench e2e        # one part
    .venv/bin/python -m tests.bench producer --n 20000

Not collected by pytest: modules are named ``bench_*.py``. Each part declares its
own namespace and queues and deletes them afterwards, also on failure.
"""
