"""Run a benchmark against a RabbitMQ node of its own (``tests/support/private_broker``).

    .venv/bin/python -m tests.bench.private tests.bench.bench_processes [ARGS...]

The shared broker at 5672 carries every engineer's tests at once; a benchmark there
measures their load as much as ours. This starts a fresh node on free ports, runs the
benchmark module with ``ASYNCINVOKE_AMQP_URL`` pointing at it, and removes the node. The
CPU is still shared with whatever else runs on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.support import private_broker


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so that the node is removed on the way out


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    broker = private_broker.start()
    try:
        print(f"private broker {broker.node} on port {broker.port}", file=sys.stderr)
        env = {**os.environ, "ASYNCINVOKE_AMQP_URL": broker.url}
        return subprocess.run([sys.executable, "-m", *sys.argv[1:]], env=env).returncode
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
