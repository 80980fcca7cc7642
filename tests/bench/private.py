"""Run a benchmark against a RabbitMQ node of its own (``tests/support/private_broker``).

    .venv/bin/python -m tests.bench.private [--pin] tests.bench.bench_processes [ARGS...]

The shared broker at 5672 carries every engineer's tests at once; a benchmark there
measures their load as much as ours. This starts a fresh node on free ports, runs the
benchmark module with ``ASYNCINVOKE_AMQP_URL`` pointing at it, and removes the node. The
CPU is still shared with whatever else runs on the machine.

``--pin`` puts the node (every thread of its beam process) on the first CPU and the
benchmark with everything it starts (workers, handler processes, the harness) on the
others (the last CPU on a 2-CPU machine): the broker and the workers then do not take
each other's CPU, so a worker's rate shows its own cost, and whether the broker's core
is the ceiling shows in its CPU time (1.0 core = saturated).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

from tests.support import private_broker


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so that the node is removed on the way out


def pin(broker: private_broker.PrivateBroker) -> str:
    """The node on CPU 0, this process (and so the benchmark's children) on the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "not pinned: fewer than 2 CPUs"
    beam = psutil.Process(int((broker.base / "node.pid").read_text().strip()))
    for thread in beam.threads():  # every scheduler thread, not only the main one
        os.sched_setaffinity(thread.id, {cpus[0]})
    os.sched_setaffinity(0, set(cpus[1:]))
    return f"broker (pid {beam.pid}) on CPU {cpus[0]}, benchmark on CPU {cpus[1:]}"


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = sys.argv[1:]
    pinned = bool(args) and args[0] == "--pin"
    if pinned:
        args = args[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    broker = private_broker.start()
    try:
        print(f"private broker {broker.node} on port {broker.port}", file=sys.stderr)
        env = {**os.environ, "ASYNCINVOKE_AMQP_URL": broker.url, "BENCH_PRIVATE_BROKER": "1"}
        if pinned:
            placement = pin(broker)
            print(placement, file=sys.stderr)
            env["BENCH_PINNED"] = placement
        return subprocess.run([sys.executable, "-m", *args], env=env).returncode
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
