"""tracing: what the tracing seams cost one delivery, in µs, without a broker.

Runs what the pipeline and the journal call for one delivery of an envelope without a
``traceparent`` (start_process, started, end_process, finish_delivery, and the trace ids
of the attempt's JSON log line), many times over, in three processes:

- ``no api``: opentelemetry blocked from importing (the package without the extra);
- ``api, no SDK``: opentelemetry-api installed, no tracer provider (the default);
- ``api, no SDK, traceparent``: the same with a ``traceparent`` in meta (propagation only).

The e2e benchmark (``python -m tests.bench e2e`` with ASYNCINVOKE_BENCH_BASELINE) measures
the same against a whole worker; this one isolates the part tracing adds, which the e2e
drain rate on a loaded two-core machine cannot resolve to better than a few per cent.

    .venv/bin/python -m tests.bench.bench_tracing
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.bench.common import ROOT

N = 200_000
ROUNDS = 5

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(name)
sys.meta_path.insert(0, Block())
"""

LOOP = textwrap.dedent("""
    import time
    from asyncinvoke import tracing, topology
    from asyncinvoke.contract import Envelope

    names = topology.Names("bench")
    meta = {TRACED}
    envelope = Envelope(id="i1", fn="noop", payload=None, created_at=1, meta=meta)
    outcome = None
    best = float("inf")
    for _ in range({ROUNDS}):
        started = time.perf_counter()
        for _ in range({N}):
            tracing.start_process(envelope, names, 2, 79)
            tracing.started(envelope)
            fields = {{"invocation_id": "i1"}}
            if tracing.AVAILABLE:
                tracing.add_delivery_ids(fields)
            tracing.end_process("success", outcome)
            tracing.finish_delivery(True)
        best = min(best, (time.perf_counter() - started) / {N} * 1e6)
    print(f"{{best:.3f}}")
""")


def measure(block: bool, traced: bool) -> float:
    meta = '{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}'
    script = (BLOCK if block else "") + LOOP.format(
        TRACED=meta if traced else "None", N=N, ROUNDS=ROUNDS
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        cwd=str(ROOT), env={"PYTHONPATH": str(ROOT / "service")},
    )
    return float(result.stdout.strip())


def main() -> None:
    print("tracing seams per delivery (best of rounds), µs:")
    for label, block, traced in (
        ("no api", True, False),
        ("api, no SDK", False, False),
        ("api, no SDK, traceparent", False, True),
    ):
        print(f"  {label:28} {measure(block, traced):8.3f}")


if __name__ == "__main__":
    main()
