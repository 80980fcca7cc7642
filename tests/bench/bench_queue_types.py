"""queue types: publish → start latency of asyncinvoke and Dramatiq, each on a quorum
and on a classic queue (issue 18: is the gap between them the queue type?).

    .venv/bin/python -m tests.bench.bench_queue_types [--rate 500] [--seconds 5] [--rounds 2]

Each case starts its worker, warms it up, then publishes at a fixed rate, each task
carrying its send time (as ``bench_peers``' latency part does). asyncinvoke's classic
case runs ``tests.bench.peers.classic_worker`` (the function queue declared classic);
Dramatiq's quorum case declares its queues with ``x-queue-type: quorum``. Rounds
alternate the cases; the table gives the p50 / p99 of each round.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from asyncinvoke import topology
from tests.bench.bench_peers import OURS_CONCURRENCY, PEER_SETTINGS, latency
from tests.bench.common import percentile, say
from tests.bench.peers import classic_worker
from tests.bench.peers.runner import DRAMATIQ, OursRun, PeerRun, cancel_on_sigterm, spawn

CASES = ("ours quorum", "ours classic", "dramatiq classic", "dramatiq quorum")


class ClassicOurs(OursRun):
    async def declare(self) -> None:
        # The harness declares the queue before the worker starts: classic here too, for
        # this run only.
        saved = topology.function_queue_arguments
        classic_worker.use_classic_queues()
        try:
            await super().declare()
        finally:
            topology.function_queue_arguments = saved  # type: ignore[assignment]

    async def start_worker(self) -> None:
        env = self.space.env(**self.probe_env(), **self.extra_env)
        command = [sys.executable, "-m", "tests.bench.peers.classic_worker", "worker",
                   "--config", str(self.config)]  # fmt: skip
        self.worker = await spawn(command, env, self.log)


async def one(case: str, workdir: Path, rate: float, seconds: float) -> list[float]:
    n = round(rate * seconds)
    if case.startswith("ours"):
        kind = ClassicOurs if case.endswith("classic") else OursRun
        async with kind(workdir, n, label=case, concurrency=OURS_CONCURRENCY) as run:
            assert isinstance(run, OursRun)
            await run.declare()
            return await latency(run, rate, seconds)
    settings = dict(PEER_SETTINGS["dramatiq"])
    if case.endswith("quorum"):
        settings["env"] = {**settings.get("env", {}), "BENCH_QUORUM": "1"}
    async with PeerRun(DRAMATIQ, workdir, n, settings) as run:
        return await latency(run, rate, seconds)


async def run(args: argparse.Namespace) -> dict[str, list[list[float]]]:
    cancel_on_sigterm()
    found: dict[str, list[list[float]]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory(prefix="asyncinvoke-queue-types-") as tmp:
        for index in range(args.rounds):
            order = CASES if index % 2 == 0 else CASES[::-1]
            for case in order:
                try:
                    found[case].append(await one(case, Path(tmp), args.rate, args.seconds))
                except Exception as exc:
                    say(f"{case}: {exc!r}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_queue_types")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    found = asyncio.run(run(args))
    print(f"publish → start latency at {args.rate:g}/s for {args.seconds:g} s, ms")
    print("| system, queue type | p50 per round | p99 per round |")
    print("|---|---|---|")
    for case, rounds in found.items():
        p50 = " / ".join(f"{percentile(r, 50):.2f}" for r in rounds)
        p99 = " / ".join(f"{percentile(r, 99):.2f}" for r in rounds)
        print(f"| {case} | {p50 or '-'} | {p99 or '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
